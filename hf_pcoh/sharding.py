"""Models split across processes: the frozen teacher sharded like the student, and the student made whole again.

Under FSDP or DeepSpeed ZeRO-3 the accelerator shards the trainable :class:`DistillationModel`; the
frozen teacher is not part of it, so it is prepared here the way TRL prepares its reference and teacher
models (``trl.models.utils.prepare_fsdp`` / ``prepare_deepspeed``): FSDP units of its own blocks, or a
DeepSpeed inference engine; under FSDP2 only the part of the teacher the run reads is sharded (a view cut
after the deepest layer read). A sharded model runs only when every process calls it together, and its
parameters are pieces; :func:`whole_model` gathers a plain copy of the student for the steps that run on one
process (saving, the probe head, the evaluation). The teacher is never gathered: it is what did not fit one
device, and its evaluation embeddings are computed sharded (:mod:`hf_pcoh.sharded_embedding`).

DeepSpeed is imported only when a run uses it (it is not a dependency); its paths are untested on CPU.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel


def shard_frozen_model(model: nn.Module, accelerator: Any, running_part: nn.Module | None = None) -> nn.Module:
    """``model`` (frozen, eval mode) in FSDP units of its own blocks, with the run's FSDP plugin settings.

    ``running_part``: the part of ``model`` the run runs, a view of it cut after the deepest layer read
    (:func:`hf_pcoh.frozen_teacher.cut_for_layers`); under FSDP2 that view is what is sharded and returned, so the
    blocks after it are never wrapped, moved to the device or run. FSDP1 (untested here: it does not run on CPU)
    shards ``model`` whole, as before.

    The plugin's auto-wrap policy is resolved against the first model it sees and then kept; the
    student must find its own block classes, so the teacher is wrapped with its ``_no_split_modules``
    and the plugin left as it was.
    """
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 2 and running_part is not None:
        model = running_part
    saved_policy = plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap
    plugin.transformer_cls_names_to_wrap = None  # the teacher's blocks, not the classes named for the student
    try:
        if plugin.fsdp_version == 2:
            from accelerate.utils import fsdp2_prepare_model

            plugin.transformer_cls_names_to_wrap = blocks_without_input_embeddings(model)
            model = fsdp2_prepare_model(accelerator, model)
            keep_recording_outputs(model)
            # Its root and last units stay gathered after forward until backward reshards them; a teacher
            # has no backward, so every unit reshards after its forward.
            model.set_reshard_after_forward(True)
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel

            plugin.set_auto_wrap_policy(model)
            model = FullyShardedDataParallel(
                model,
                sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
                cpu_offload=plugin.cpu_offload,
                auto_wrap_policy=plugin.auto_wrap_policy,
                mixed_precision=plugin.mixed_precision_policy,
                sync_module_states=plugin.sync_module_states,
                backward_prefetch=plugin.backward_prefetch,
                forward_prefetch=plugin.forward_prefetch,
                use_orig_params=plugin.use_orig_params,
                param_init_fn=plugin.param_init_fn,
                ignored_modules=plugin.ignored_modules,
                limit_all_gathers=plugin.limit_all_gathers,
                device_id=accelerator.device,
            )
    finally:
        plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = saved_policy
    return model.eval()


def keep_recording_outputs(model: nn.Module) -> None:
    """Let the models inside ``model`` whose class FSDP2 swapped (``FSDP<Class>``) still record hidden states.

    A model that records them by hooks (transformers' ``capture_outputs``) looks up what it records by the name of
    its class; the swapped class has nothing registered, so ``output_hidden_states=True`` would give no hidden states.
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # another transformers: nothing looked up by class
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule) and isinstance(module, PreTrainedModel):
            recorded = dict.get(_CAN_RECORD_REGISTRY, str(plain_class(module)))
            if recorded:
                _CAN_RECORD_REGISTRY[module] = recorded


def blocks_without_input_embeddings(model: nn.Module) -> list[str]:
    """The model's block classes (``_no_split_modules``) except those that hold its input embeddings.

    accelerate's FSDP2 preparation makes the input embeddings a unit of their own; a block that contains
    them (``BertEmbeddings``) would shard them a second time, which ``fully_shard`` refuses.
    """
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    holders = {type(module).__name__ for module in model.modules()
               if embeddings is not None and module is not embeddings and any(sub is embeddings for sub in module.modules())}
    return [name for name in (getattr(model, "_no_split_modules", None) or []) if name not in holders]


def deepspeed_inference_engine(model: PreTrainedModel, accelerator: Any) -> nn.Module:
    """``model`` as a DeepSpeed engine without optimizer: ZeRO-3 partitions it across processes like the
    student; under ZeRO-1/2 it runs whole on every process (stage 0). As TRL's ``prepare_deepspeed``."""
    import deepspeed  # only where the run uses DeepSpeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for training_only in ("optimizer", "scheduler"):
        config.pop(training_only, None)  # an inference engine has neither (and their "auto" values stay unset)
    stage = config["zero_optimization"]["stage"]
    hidden_size = getattr(model.config, "hidden_size", None)
    if getattr(model.config, "hidden_sizes", None):
        hidden_size = max(model.config.hidden_sizes)
    if stage == 3 and hidden_size is not None:
        # The bucket sizes the Trainer fills in for the student ("auto") only when training starts.
        config["zero_optimization"].update(
            reduce_bucket_size=hidden_size * hidden_size,
            stage3_param_persistence_threshold=10 * hidden_size,
            stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
        )
    if stage != 3:
        config["zero_optimization"]["stage"] = 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, unlike nn.Module.eval()
    return engine


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are pieces spread over processes (FSDP, DeepSpeed ZeRO-3)."""
    from torch.distributed.tensor import DTensor

    return any(
        isinstance(parameter, DTensor) or hasattr(parameter, "ds_id") or type(parameter).__name__ == "FlatParameter"
        for parameter in model.parameters()
    )


@contextlib.contextmanager
def whole_parameters_under_zero3(model: nn.Module) -> Iterator[None]:
    """Within the block, a model loaded under ZeRO-3 (its parameters partitioned) has its whole parameters."""
    if not any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def materialize_meta_tensors(model: nn.Module, device: torch.device | str = "cpu") -> None:
    """Give the parameters and buffers left on the meta device real storage (zeros).

    Under FSDP's ``cpu_ram_efficient_loading``, transformers leaves the weights a checkpoint lacks (a new
    head) on the meta device on every process but the first; FSDP overwrites them with the first process's
    when it shards the model, but the probe that sizes the losses runs the student before that.
    """
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_meta:
                zeros = torch.zeros_like(parameter, device=device)
                setattr(module, name, nn.Parameter(zeros, requires_grad=parameter.requires_grad))
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_meta:
                module.register_buffer(name, torch.zeros_like(buffer, device=device),
                                       persistent=name not in module._non_persistent_buffers_set)


def plain_class(model: nn.Module) -> type[nn.Module]:
    """The model's own class, without the ``FSDP<Class>`` subclass that FSDP2's ``fully_shard`` swaps in."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def is_sharded_run(accelerator: Any) -> bool:
    """Whether the run shards student and teacher across processes: FSDP, or DeepSpeed ZeRO-3."""
    deepspeed_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return getattr(accelerator.state, "fsdp_plugin", None) is not None or (
        deepspeed_plugin is not None and deepspeed_plugin.zero_stage == 3
    )


def whole_model(
    accelerator: Any, prepared: nn.Module, part: PreTrainedModel, prefix: str = ""
) -> tuple[PreTrainedModel | None, dict[str, torch.Tensor] | None]:
    """A plain, unsharded copy of ``part`` (a ``transformers`` model inside the prepared ``prepared``) and the
    full state dict of ``prepared``, on the main process; ``(None, None)`` on the others. Every process must
    call it: the state dict is gathered from all of them.

    ``prefix`` is ``part``'s key prefix in that state dict (``"student."`` for a DistillationModel).
    """
    if zero3_without_16bit_gather(accelerator):
        state_dict = zero3_state_dict_by_parameter(accelerator, prepared)
    else:
        state_dict = accelerator.get_state_dict(prepared)  # full on the main process only
    if not accelerator.is_main_process:
        return None, None
    own_state = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    # Built on the meta device and given the gathered tensors: no second copy, no random initialisation, and
    # not through from_pretrained, which would partition it again under ZeRO-3.
    with torch.device("meta"):
        whole = plain_class(part)(copy.deepcopy(part.config))
    whole.load_state_dict(own_state, strict=False, assign=True)
    for name, buffer in part.named_buffers():  # buffers outside the state dict (position ids) are whole everywhere
        if name not in own_state:
            module_name, _, buffer_name = name.rpartition(".")
            whole.get_submodule(module_name)._buffers[buffer_name] = buffer.detach().clone()
    if hasattr(whole, "tie_weights"):
        whole.tie_weights()
    missing = [name for name, tensor in [*whole.named_parameters(), *whole.named_buffers()] if tensor.is_meta]
    if missing:
        raise RuntimeError(f"the gathered state dict of {type(whole).__name__} lacks {missing}")
    return whole.to(accelerator.device).eval(), state_dict


def zero3_without_16bit_gather(accelerator: Any) -> bool:
    """ZeRO-3 whose config leaves ``stage3_gather_16bit_weights_on_model_save`` off (accelerate's
    ``get_state_dict`` then refuses to gather, although the student is small enough to be saved whole)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        return False
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    return str(zero.get("stage3_gather_16bit_weights_on_model_save", False)).lower() != "true"


def zero3_state_dict_by_parameter(accelerator: Any, prepared: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full state dict of a ZeRO-3 model, gathered one parameter at a time (DeepSpeed's
    ``GatheredParameters``), kept on the main process (None elsewhere): at most one whole parameter beyond its
    partition on any process at once. Every process must call it."""
    import deepspeed  # only where the run uses DeepSpeed

    module = accelerator.unwrap_model(prepared)
    keep = accelerator.is_main_process
    state: dict[str, torch.Tensor] = {}
    for name, parameter in module.named_parameters():
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
            if keep:
                state[name] = parameter.detach().to("cpu", copy=True)
    if not keep:
        return None
    buffers = {name: buffer for name, buffer in module.named_buffers()}
    for name in module.state_dict().keys():
        if name not in state and name in buffers:  # persistent buffers: whole on every process
            state[name] = buffers[name].detach().to("cpu", copy=True)
    return state
