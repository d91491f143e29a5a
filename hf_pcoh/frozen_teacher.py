"""Run the frozen teacher for the features a run reads, and no more.

:func:`run_teacher` is the teacher's forward of every training step (and of the teacher-feature cache):

* **depth**: when every layer the run reads is an index into ``hidden_states`` below the last one
  (``teacher_layers: [2, 4]`` of a 6-layer teacher), the teacher runs through a *view* of itself that
  stops after the deepest of them: the same modules and parameters, with its list of blocks cut (found
  from the model's ``_no_split_modules``: ``encoder.layer`` of BERT, ``layers`` of ViT and Llama-style
  decoders, ``decoder.layers`` of OPT, ``h`` of GPT-2; ``encoder.stages`` of ResNet). The features are the
  full forward's at those layers (``tests/test_frozen_teacher.py``); the blocks after them never run.
  Other layouts, a teacher with a head (its logits need every block), and ``last`` / ``pooler`` run whole.
* **hidden states**: models that record them by hooks (transformers' ``capture_outputs``) are asked only
  for the indices the extractors read; the others are not kept.
* **inference mode**: the forward runs under ``torch.inference_mode()``; the features are pooled outside
  it (without gradients), and any that still are inference tensors (a view such as ``cls``) are cloned,
  so a loss can save them for its backward.

**sharded teachers**: under FSDP2 the trainer shards the cut view itself (:func:`cut_for_layers`, decided when
the teacher is prepared from every layer the run reads: the training pairs and the evaluation's embedding), so the
blocks after the deepest of them are never wrapped, moved to a device or run; the view is recorded, and
:func:`run_teacher` (and :func:`as_read_from_whole`, for the evaluation's embedding) read the whole teacher's layers
from it under ``torch.no_grad()`` (``tests/test_sharded_teacher.py``). A teacher sharded otherwise (FSDP1, DeepSpeed
ZeRO-3), a compiled or otherwise wrapped one runs whole under ``torch.no_grad()``, as it always did.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

try:
    from transformers.utils.output_capturing import maybe_install_capturing_hooks
except ImportError:  # another transformers: its hook-recording models run whole
    maybe_install_capturing_hooks = None

from .features import FeatureExtractor, Features
from .sharding import is_sharded

# Where a model keeps the blocks whose outputs are hidden_states[1:], for models that do not name their blocks in
# ``_no_split_modules`` (ResNet's stages): BERT-like encoders, ResNet, models that hold their blocks themselves.
BLOCK_LISTS = ("encoder.layer", "encoder.stages", "layers")


@dataclass
class TeacherPlan:
    """How :func:`run_teacher` runs one teacher for one set of extractor layers."""

    model: nn.Module  # the teacher, or a view of it cut after the deepest layer read
    layers: list[int | str]  # the extractors' layers, indices made non-negative when known
    hidden_states: bool | list[int]  # output_hidden_states: all, none, or the indices kept
    inference_mode: bool
    depth: int | None = None  # blocks the view runs; None: the whole teacher


@dataclass(frozen=True)
class TeacherCut:
    """What a view made by :func:`cut_for_layers` was cut from: its layers are read as the whole teacher's."""

    whole: nn.Module  # the teacher the view shares its modules with
    hidden_state_count: int  # the whole teacher's: the embeddings, then one per block
    depth: int  # the blocks the view runs


# One plan per (teacher, extractor layers); a teacher that is freed takes its plans with it.
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], TeacherPlan]] = weakref.WeakKeyDictionary()
# The views cut_for_layers made (and the trainer then sharded), with what they were cut from.
_CUTS: weakref.WeakKeyDictionary[nn.Module, TeacherCut] = weakref.WeakKeyDictionary()


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, blocks)``: the model's list of blocks, whose outputs are ``hidden_states[1:]``, else None.

    Found from the model itself: the ``nn.ModuleList`` whose modules are all of a class the model names in
    ``_no_split_modules`` (its transformer blocks: BERT's ``encoder.layer``, ViT's ``layers``, OPT's
    ``decoder.layers``, GPT-2's ``h``, Llama-style ``layers``, ...), with ``config.num_hidden_layers`` of them
    where the config says; a model that names no blocks falls back to the paths of :data:`BLOCK_LISTS`.
    """
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if block_classes:
        for path, module in model.named_modules():
            if (isinstance(module, nn.ModuleList) and len(module) > 0
                    and all(type(block).__name__ in block_classes for block in module)
                    and (expected is None or len(module) == expected)):
                return path, module
    for path in BLOCK_LISTS:
        module: Any = model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, module
    return None


def records_hidden_states_by_hooks(model: nn.Module) -> bool:
    """Whether ``output_hidden_states`` may be a list of indices (transformers' ``capture_outputs`` models)."""
    return "hidden_states" in (getattr(model, "_can_record_outputs", None) or {})


def is_plain_module(module: nn.Module) -> bool:
    """A module whose ``forward`` is its class's: no instance-level override (accelerate's offload hooks)."""
    return "forward" not in module.__dict__


def install_capturing_hooks_once(model: PreTrainedModel, container_path: list[str]) -> None:
    """Install the hooks that record hidden states on the shared blocks once, before a view copies their owners.

    The hooks belong to the module whose ``forward`` records them: the model itself (BERT, ViT) or a container on
    the way to the blocks (OPT's ``decoder``). They are installed on the innermost module of the path that records
    hidden states, which covers the blocks, and every outer one is marked as hooked too; the view copies those marks,
    so neither the view nor a later full forward installs a second set (hidden states recorded twice).
    """
    modules = [model]
    for name in container_path:
        modules.append(getattr(modules[-1], name))
    recording = [module for module in modules if records_hidden_states_by_hooks(module)]
    if not recording:
        return
    hooked = [module for module in recording if getattr(module, "_output_capturing_hooks_installed", False)]
    if not hooked:
        maybe_install_capturing_hooks(recording[-1])
    for module in recording:  # transformers' own mark of a hooked model (output_capturing.maybe_install_capturing_hooks)
        module._output_capturing_hooks_installed = True


def cut_view(model: PreTrainedModel, path: str, depth: int) -> nn.Module:
    """A view of ``model`` that runs only the first ``depth`` blocks of ``path``; it shares every module and
    parameter with ``model``, which is left untouched."""
    *container_path, list_name = path.split(".")
    install_capturing_hooks_once(model, container_path)
    config = copy.copy(model.config)
    # hidden_states[depth] is then the view's last: keep it as the block's output, as the full forward has it,
    # rather than replaced by the view's last_hidden_state (which follows a final norm in some models).
    config.tie_last_hidden_states = False
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = depth
    view = copy.copy(model)
    view._modules = dict(model._modules)  # its own registry of children: replacing one leaves the model's
    view.config = config
    parent = view
    for name in container_path:
        child = copy.copy(getattr(parent, name))
        child._modules = dict(child._modules)
        if getattr(child, "config", None) is model.config:  # a container that reads the config itself (OPT's decoder)
            child.config = config
        setattr(parent, name, child)
        parent = child
    setattr(parent, list_name, nn.ModuleList(list(getattr(parent, list_name))[:depth]))
    return view


def resolve_index(layer: int | str, count: int) -> int | str | None:
    """An index ``layer`` as a non-negative index into ``count`` hidden states (None when out of range); a
    named layer (``last``, ``pooler``) as it is."""
    if isinstance(layer, str):
        try:
            layer = int(layer)
        except ValueError:
            return layer
    return layer % count if -count <= layer < count else None


def plan_teacher_run(teacher: nn.Module, extractors: list[FeatureExtractor]) -> TeacherPlan:
    """The cheapest way to run ``teacher`` that gives exactly what ``extractors`` read (kept per teacher)."""
    key = tuple(str(extractor.layer) for extractor in extractors)
    try:
        plans = _PLANS.setdefault(teacher, {})
    except TypeError:  # not weakly referenceable: planned at each call
        plans = {}
    if key not in plans:
        plans[key] = make_plan(teacher, [extractor.layer for extractor in extractors])
    return plans[key]


def make_plan(teacher: nn.Module, layers: list[int | str]) -> TeacherPlan:
    """See :func:`plan_teacher_run`."""
    cut = cut_of(teacher)
    if cut is not None:  # a view cut_for_layers made: it runs as it is (sharded), read as the whole teacher
        resolved = [resolve_cut_index(cut, layer) for layer in layers]
        return TeacherPlan(teacher, resolved, True, inference_mode=not is_sharded(teacher), depth=cut.depth)
    if not isinstance(teacher, PreTrainedModel) or not is_plain_module(teacher) or is_sharded(teacher):
        return TeacherPlan(teacher, list(layers), True, inference_mode=False)
    found = block_list(teacher)
    bare = getattr(teacher, "base_model", teacher) is teacher  # with a head, outputs have logits, not last_hidden_state
    if found is None or not bare:
        return TeacherPlan(teacher, list(layers), True, inference_mode=True)
    path, blocks = found
    resolved = [resolve_index(layer, len(blocks) + 1) for layer in layers]  # the embeddings, then one per block
    if None in resolved:  # out of range: the full forward lets the extractor say so
        return TeacherPlan(teacher, list(layers), True, inference_mode=True)
    indices = sorted({index for index in resolved if isinstance(index, int)})
    hidden_states: bool | list[int] = (indices or False) if records_hidden_states_by_hooks(teacher) else bool(indices)
    named = any(isinstance(index, str) for index in resolved)  # 'last' / 'pooler': the whole model's outputs
    depth = max(max(indices, default=0), 1)  # a view needs one block to record the embeddings' output
    container = teacher.get_submodule(path.rpartition(".")[0])
    cuttable = maybe_install_capturing_hooks is not None or not records_hidden_states_by_hooks(teacher)
    if named or depth >= len(blocks) or not is_plain_module(container) or not cuttable:
        return TeacherPlan(teacher, resolved, hidden_states, inference_mode=True)
    return TeacherPlan(cut_view(teacher, path, depth), resolved, hidden_states, inference_mode=True, depth=depth)


def cut_for_layers(teacher: nn.Module, extractors: Sequence[FeatureExtractor]) -> nn.Module:
    """The part of ``teacher`` that gives every layer ``extractors`` read: the view :func:`run_teacher` would run,
    cut after the deepest of them, or ``teacher`` itself when it is not cut (see the module docstring).

    For a teacher about to be sharded: shard the view, and the blocks after it are never wrapped, moved or run. The
    view is recorded, so that :func:`run_teacher` and :func:`as_read_from_whole` read the whole teacher's layers
    from it (a negative index counts from the whole teacher's last layer) and refuse one deeper than its cut.
    """
    plan = make_plan(teacher, [extractor.layer for extractor in extractors])
    if plan.depth is None:
        return teacher
    _, blocks = block_list(teacher)
    _CUTS[plan.model] = TeacherCut(teacher, len(blocks) + 1, plan.depth)
    return plan.model


def cut_of(model: nn.Module) -> TeacherCut | None:
    """What ``model`` was cut from, when it is a view :func:`cut_for_layers` made (or a wrapper of one)."""
    for candidate in (model, getattr(model, "module", None)):
        try:
            cut = _CUTS.get(candidate) if candidate is not None else None
        except TypeError:  # not weakly referenceable
            cut = None
        if cut is not None:
            return cut
    return None


def uncut_teacher(model: nn.Module) -> nn.Module:
    """The whole teacher ``model`` was cut from (its size, its config), or ``model`` itself."""
    cut = cut_of(model)
    return model if cut is None else cut.whole


def resolve_cut_index(cut: TeacherCut, layer: int | str) -> int:
    """``layer`` of the whole teacher as an index into the cut view's hidden states; an error when the view does
    not reach it (the run reads a layer the teacher was not prepared for)."""
    index = resolve_index(layer, cut.hidden_state_count)
    if not isinstance(index, int) or index > cut.depth:
        raise ValueError(f"teacher layer {layer!r}: the teacher was cut after block {cut.depth} of "
                         f"{cut.hidden_state_count - 1}, the deepest layer the run was prepared to read; pass "
                         "every layer read to cut_for_layers")
    return index


def as_read_from_whole(model: nn.Module, extractor: FeatureExtractor) -> FeatureExtractor:
    """``extractor`` as it reads ``model``'s own outputs: on a view cut by :func:`cut_for_layers`, its layer as an
    index into the view's hidden states (the whole teacher's layer it names); else ``extractor`` itself."""
    cut = cut_of(model)
    return extractor if cut is None else replace(extractor, layer=resolve_cut_index(cut, extractor.layer))


def as_normal_tensor(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor``, cloned when it is an inference tensor (autograd could not save it for backward)."""
    if tensor is not None and tensor.is_inference():
        return tensor.clone()
    return tensor


def run_teacher(
    teacher: nn.Module, teacher_inputs: dict[str, torch.Tensor], extractors: list[FeatureExtractor]
) -> tuple[list[Features], torch.Tensor | None]:
    """The teacher's features at each extractor's layer (and its logits, if it has a head), without gradients."""
    plan = plan_teacher_run(teacher, extractors)
    with torch.inference_mode() if plan.inference_mode else torch.no_grad():
        outputs = plan.model(**teacher_inputs, output_hidden_states=plan.hidden_states)
    mask = teacher_inputs.get("attention_mask")
    features = []
    with torch.no_grad():  # outside inference mode: pooled features are ordinary tensors
        for extractor, layer in zip(extractors, plan.layers):
            feature = (extractor if extractor.layer == layer else replace(extractor, layer=layer))(outputs, mask)
            features.append(Features(as_normal_tensor(feature.values), feature.mask))
    return features, as_normal_tensor(getattr(outputs, "logits", None))
