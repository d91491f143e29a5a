"""The process-group pieces of data parallelism: the feature gathers' own group, the world size, token padding
to a common length, and decisions every process takes alike.

The gathers themselves, and how a batch-level loss is computed once across processes, are in
:mod:`hf_pcoh.global_batch`. ``accelerate.utils.gather`` returns tensors cut from the graph; batch-level losses
must backpropagate into every process's own rows, so they use the differentiable collective
``torch.distributed.nn.functional.all_gather`` (its backward sums the incoming gradients across processes and
returns each process its slice) rather than one of our own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F


_FEATURE_GROUP: dict[str, Any] = {}


def feature_group() -> dist.ProcessGroup:
    """A process group of its own for feature gathers.

    The gather's backward is a collective issued *during* backward, while DDP issues its gradient
    all-reduces on the default group from autograd hooks; collectives of one group must be issued in
    the same order on every process, so sharing the default group can deadlock. Created lazily, by
    every process at its first gather (they all reach it in the same forward).
    """
    if "group" not in _FEATURE_GROUP:
        _FEATURE_GROUP["group"] = dist.new_group(ranks=list(range(dist.get_world_size())))
    return _FEATURE_GROUP["group"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def pad_tokens(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``[b, T, ...]`` -> ``[b, length, ...]``, zeros appended along the token dimension (gradients kept)."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    trailing = [0, 0] * (tensor.dim() - 2)  # F.pad lists the last dimension first
    return F.pad(tensor, [*trailing, 0, missing])


def longest_across_processes(length: int, device: torch.device) -> int:
    longest = torch.tensor(length, device=device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=feature_group())
    return int(longest)


def end_process_group() -> None:
    """After a finished multi-process run: wait for every process, then take the process group down, so no
    process exits while another still talks to it (gloo aborts a process that exits with its threads mid-way)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def any_process(flags: list[bool], device: torch.device | str | None = None) -> list[bool]:
    """Each flag OR-ed over all processes, so every process takes the same decision (one tiny all-reduce).

    ``device`` must be one the process group can reduce on (the process's GPU under NCCL).
    """
    if world_size() == 1:
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]
