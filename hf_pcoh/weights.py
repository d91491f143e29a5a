"""Whether a student's weights are usable: all finite, and none beyond a magnitude that only divergence reaches.

A run that diverged can end with NaN/inf weights, or with finite ones so large (``|w|`` in the millions)
that every embedding is noise. Neither is saved as a result or checkpoint (:class:`hf_pcoh.trainer.DistillationTrainer`)
nor published (:func:`hf_pcoh.hub.publish`). The bound, ``max_abs_weight`` (default ``1e4``), is far above
what trained transformers hold (layer norms and embeddings stay within a few hundred) and is a config option
for the rare model that needs more; ``inf`` turns the bound off, NaN/inf weights are refused whatever it is.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import torch
from safetensors import safe_open

DEFAULT_MAX_ABS_WEIGHT = 1e4


def local_values(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter (its shard under FSDP2), without gradients."""
    tensor = tensor.detach()
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def weight_problem(named_tensors: Iterable[tuple[str, torch.Tensor]], max_abs_weight: float) -> str | None:
    """What makes these weights unusable ("encoder.layer.0...weight holds NaN/inf values", "max |w| = ..."), or None."""
    largest, largest_name = 0.0, ""
    for name, tensor in named_tensors:
        values = local_values(tensor)
        if values.numel() == 0:  # a parameter held by another process (DeepSpeed ZeRO-3)
            continue
        magnitude = float(values.float().abs().max())  # NaN when any value is NaN; inf when any is inf
        if not math.isfinite(magnitude):
            return f"{name} holds NaN/inf values"
        if magnitude > largest:
            largest, largest_name = magnitude, name
    if largest > max_abs_weight:
        return (f"max |w| = {largest:.3g} in {largest_name} exceeds max_abs_weight={max_abs_weight:g} "
                "(training diverged)")
    return None


def weight_files(folder: str | os.PathLike) -> list[str]:
    """The student's safetensors files in ``folder``: ``model.safetensors`` or the shards its index names."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.isfile(index):
        return []
    with open(index, encoding="utf-8") as stream:
        shards = sorted(set(json.load(stream).get("weight_map", {}).values()))
    return [os.path.join(folder, shard) for shard in shards]


def saved_weight_problem(folder: str | os.PathLike, max_abs_weight: float = DEFAULT_MAX_ABS_WEIGHT) -> str | None:
    """:func:`weight_problem` of the student saved in ``folder``, read tensor by tensor from its safetensors."""
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as weights:
            problem = weight_problem(((name, weights.get_tensor(name)) for name in weights.keys()), max_abs_weight)
        if problem is not None:
            return f"{os.path.basename(path)}: {problem}"
    return None
