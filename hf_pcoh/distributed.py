"""Gather features across data-parallel processes, keeping gradients, for batch-level losses.

``accelerate.utils.gather`` returns tensors cut from the graph; batch-level losses (perception
coherence, Procrustes, CKA...) must backpropagate into every process's own rows. PyTorch provides the
differentiable collective (``torch.distributed.nn.functional.all_gather``: its backward sums the
incoming gradients across processes and returns each process its slice), so we use it rather than
writing our own. With ``L`` computed identically on every process from the gathered batch, each
process gets ``W * dL/dx_local``, and DDP's averaging over ``W`` processes yields exactly the
single-process gradient of ``L`` on the global batch.

Token features ``[b, T, d]`` (pooling ``none``) have a ``T`` of each process's own padding: they are
padded to the longest ``T`` of all processes, masked there, then gathered with their masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.distributed.nn.functional import all_gather as differentiable_all_gather


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


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (``[b, ...]``, same ``b`` on every process) from all processes along dim 0.

    Gradients flow back to each process's own rows. With one process it returns ``tensor`` itself.
    """
    if world_size() == 1:
        return tensor
    group = feature_group()
    if not tensor.requires_grad:
        gathered = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(gathered, tensor.contiguous(), group=group)
        return torch.cat(gathered, dim=0)
    return torch.cat(differentiable_all_gather(tensor.contiguous(), group=group), dim=0)


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


def gather_batch_with_grad(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One layer pair's global batch: student (with gradients) and teacher features of every process, and the mask.

    Pooled ``[b, d]`` features are concatenated as they are (mask None). Token features ``[b, T, d]`` are
    first padded to the longest ``T`` across processes, their ``mask`` ``[b, T]`` with zeros, so the
    padding never counts; without a mask (e.g. vision patches) every process must have the same ``T``.
    """
    if world_size() == 1:
        return student, teacher, mask
    if student.dim() == 2:
        return gather_with_grad(student), gather_with_grad(teacher), None
    length = longest_across_processes(student.shape[1], student.device)
    if mask is None:
        if length != student.shape[1]:
            raise ValueError(
                f"token features without a mask have {student.shape[1]} tokens here but {length} on another process; "
                "they can only be gathered with an attention mask"
            )
        return gather_with_grad(student), gather_with_grad(teacher), None
    student, teacher, mask = pad_tokens(student, length), pad_tokens(teacher, length), pad_tokens(mask, length)
    return gather_with_grad(student), gather_with_grad(teacher), gather_with_grad(mask)


def any_process(flags: list[bool], device: torch.device | str | None = None) -> list[bool]:
    """Each flag OR-ed over all processes, so every process takes the same decision (one tiny all-reduce).

    ``device`` must be one the process group can reduce on (the process's GPU under NCCL).
    """
    if world_size() == 1:
        return list(flags)
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]
