"""Teacher and student whose weights only the first process reads: FSDP2 with ``cpu_ram_efficient_loading``.

What transformers and accelerate really do (transformers 5.25, accelerate 1.16): transformers reads a checkpoint
whole on every process, FSDP or not; under FSDP with ``cpu_ram_efficient_loading`` its ``is_fsdp_enabled()`` only
leaves the weights a checkpoint *lacks* on the meta device on the processes other than the first. So every process
read both models (a safetensors checkpoint memory-mapped, resident as its pages are touched, or at once when converted
to ``teacher_dtype``) until FSDP sharded them (``benchmarks/host_memory.py`` measures it). accelerate's FSDP2 preparation with
that option (``fsdp2_prepare_model``) then moves the model of every process but the first to the meta device and
fills the shards from the first process's full state dict (``fsdp2_load_full_state_dict``, a broadcast per tensor),
for the student (the trainable ``DistillationModel``) and for the teacher (``hf_pcoh.sharding.shard_frozen_model``).
The other processes therefore need the structure of each model, never its weights.

So, in such a run (:func:`weights_on_first_process_only`), the first process loads or builds each model as usual and
the others build it on the meta device from its config (:func:`hf_pcoh.models.build_on_meta`), reading no weight.
The first then sends the layout of its tensors (name, shape, dtype: ``teacher_dtype``, a checkpoint's own, modules
kept in float32) and its non-persistent buffers (position ids, rotary frequencies: outside the state dict FSDP
fills), which the others take on (:func:`share_layout`): the structures match tensor for tensor, and a mismatch is
an error here rather than a hang in a broadcast. Before sharding, the trainer's probe runs a student left on the
meta device with zeros (only the widths of its features matter there), the teacher cache is computed by the
processes that hold the whole teacher, and ``student_init_from_teacher`` copies on the first process only.
``teacher_layers: auto`` scores every teacher layer on every process before sharding, so it keeps whole loading.

DeepSpeed ZeRO-3 is not covered: transformers reads on the first process only under ``zero.Init``
(``zero3_init_flag: true``), which hf_pcoh's launch file leaves off for the steps that run the teacher before
training (see scripts/accelerate/deepspeed_zero3.yaml); without it every process loads whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import DistillationConfig

logger = logging.getLogger(__name__)

TRUE = ("1", "true", "yes", "on")


def fsdp2_loads_from_first_process(config: DistillationConfig) -> bool:
    """Whether the run is FSDP2 with ``cpu_ram_efficient_loading``, as the Trainer will build accelerate's plugin:
    from ``--fsdp`` / ``--fsdp_config`` when given, else from what ``accelerate launch`` put in the environment
    (``scripts/accelerate/fsdp.yaml``)."""
    if config.fsdp:
        options = config.fsdp_config or {}
        version, loading = options.get("version", 2), options.get("cpu_ram_efficient_loading", False)
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in TRUE:
        version = os.environ.get("FSDP_VERSION", "1")
        loading = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    else:
        return False
    return str(version) == "2" and str(loading).lower() in TRUE


def weights_on_first_process_only(config: DistillationConfig) -> bool:
    """Whether this run's models are read on the first process only (the module's docstring says when)."""
    if not fsdp2_loads_from_first_process(config) or config.world_size <= 1:
        return False
    if config.teacher_layers_auto:
        logger.info("teacher_layers: auto scores the teacher's layers on every process before FSDP shards it: every "
                    "process loads the models whole")
        return False
    return dist.is_available() and dist.is_initialized()


def first_process_or_meta(config: DistillationConfig, build: Callable[[bool], nn.Module]) -> nn.Module:
    """``build(weights)``: the model with its weights (``True``) or its structure on the meta device (``False``).
    Every process calls this in the same order; in a run read on the first process only, the others get the
    structure, laid out as the first's (:func:`share_layout`); otherwise every process builds the model whole."""
    if not weights_on_first_process_only(config):
        return build(True)
    first = dist.get_rank() == 0
    model = build(first)
    share_layout(model, first)
    return model


def tensor_layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of the parameters and buffers (tied ones once, under their first name)."""
    return {name: (tuple(tensor.shape), tensor.dtype)
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]}


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state dict leaves out (position ids, rotary frequencies), by name."""
    found = {}
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name in module._non_persistent_buffers_set:
                found[f"{module_name}.{name}".lstrip(".")] = buffer
    return found


def share_layout(model: nn.Module, first: bool) -> None:
    """The first process sends the layout of ``model``'s tensors and its non-persistent buffers; every other process
    gives its meta-device ``model`` the same dtypes and those buffers, and checks that names and shapes agree."""
    payload: list[Any] = [None]
    if first:
        buffers = {name: buffer.detach().cpu() for name, buffer in non_persistent_buffers(model).items()}
        payload = [(tensor_layout(model), buffers)]
    dist.broadcast_object_list(payload, src=0)
    if first:
        return
    layout, buffers = payload[0]
    own = tensor_layout(model)
    different = sorted(set(own) ^ set(layout))
    different += [name for name in own if name in layout and own[name][0] != layout[name][0]]
    if different:
        raise RuntimeError(f"{type(model).__name__} built on the meta device does not match the first process's model "
                           f"at {different[:5]}: this model cannot be read on the first process only; turn "
                           "cpu_ram_efficient_loading off")
    for name, (_, dtype) in layout.items():
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        if name in buffers:
            module._buffers[attribute] = buffers[name]
        elif attribute in module._parameters and module._parameters[attribute].dtype != dtype:
            # .data keeps the Parameter object: weights tied to it stay tied
            module._parameters[attribute].data = module._parameters[attribute].data.to(dtype)
        elif attribute in module._buffers and module._buffers[attribute].dtype != dtype:
            module._buffers[attribute] = module._buffers[attribute].to(dtype)
