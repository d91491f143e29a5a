"""Gather features across data-parallel processes, keeping gradients, for batch-level losses.

``accelerate.utils.gather`` returns tensors cut from the graph; batch-level losses (perception
coherence, Procrustes, CKA...) must backpropagate into every process's own rows. PyTorch provides the
differentiable collective (``torch.distributed.nn.functional.all_gather``: its backward sums the
incoming gradients across processes and returns each process its slice), so we use it rather than
writing our own. With ``L`` computed identically on every process from the gathered batch, each
process gets ``W * dL/dx_local``, and DDP's averaging over ``W`` processes yields exactly the
single-process gradient of ``L`` on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
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
