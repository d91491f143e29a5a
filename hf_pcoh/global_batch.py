"""A batch-level loss term on the global batch under data parallelism, computed once across processes.

Batch-level losses compare the points of a batch with one another, so under data parallelism they must see the
**global** batch: each process gathers every process's features (:mod:`hf_pcoh.distributed`, gradients kept).
Scoring that gathered batch on every process would make each of ``W`` processes pay the whole cost, which for
perception coherence is ``O(B^3)`` in the global batch ``B``. A loss that is a mean over reference rows
(:meth:`~hf_pcoh.losses.DistillationLoss.scores_row_shares`) is instead split: each process scores only its own
rows (its slice of the gathered batch) against the whole batch, ``O(B^3 / W)``.

The value each process returns, ``v_r``, is set so that training is exactly the one-process training on the
global batch, whichever way the term was computed:

* **replicated** (every other loss): ``v_r = L``, the loss of the gathered batch;
* **shared rows**: ``v_r = W * (n_r / B) * L_r``, where ``L_r`` is the mean over this process's ``n_r`` rows, so
  that ``L = sum_r (n_r / B) L_r``.

In both cases ``mean_r v_r = L`` (the logged value, averaged over processes as the Trainer does) and backward
gives each process ``W * dL/dx_r`` on its own features: the gather's backward sums every process's gradient into
the rows' owner. DDP's average over ``W`` processes then yields exactly ``dL/dtheta``. Processes may hold
different numbers of rows (an uneven last batch): the gather pads and cuts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as differentiable_all_gather

from .distributed import feature_group, longest_across_processes, pad_tokens, world_size
from .losses import DistillationLoss


@dataclass
class GatheredBatch:
    """One layer pair's global batch, and where this process's own rows sit in it."""

    student: torch.Tensor  # [B, ...], gradients flow back to each process's rows
    teacher: torch.Tensor  # [B, ...]
    mask: torch.Tensor | None  # [B, T] for token features, else None
    own_rows: torch.Tensor  # [n_r] indices of this process's rows in the global batch

    @property
    def size(self) -> int:
        return self.student.shape[0]


def rows_per_process(rows: int, device: torch.device) -> list[int]:
    """Every process's number of rows (one small all-gather)."""
    count = torch.tensor([rows], device=device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count, group=feature_group())
    return [int(value) for value in counts]


def gather_rows(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every process's ``tensor`` (``[n_r, ...]``, ``n_r`` = ``counts[r]``) along dim 0.

    Gradients flow back to each process's own rows (``torch.distributed.nn.functional.all_gather``, whose
    backward sums the incoming gradients across processes). Unequal counts are padded to the largest, then cut.
    """
    longest = max(counts)
    padded = tensor
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding], dim=0)
    padded = padded.contiguous()
    if padded.requires_grad:
        pieces = differentiable_all_gather(padded, group=feature_group())
    else:
        pieces = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(pieces, padded, group=feature_group())
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts)], dim=0)


def gather_global_batch(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> GatheredBatch:
    """The global batch of one layer pair: pooled ``[b, d]`` or token ``[b, T, d]`` features of every process.

    Token features are padded to the longest ``T`` of all processes first, their mask with zeros, so padding
    never counts; without a mask every process must have the same ``T``.
    """
    local_rows = student.shape[0]
    if world_size() == 1:
        return GatheredBatch(student, teacher, mask, torch.arange(local_rows, device=student.device))
    if student.dim() == 3:
        length = longest_across_processes(student.shape[1], student.device)
        if mask is None and length != student.shape[1]:
            raise ValueError(
                f"token features without a mask have {student.shape[1]} tokens here but {length} on another process; "
                "they can only be gathered with an attention mask"
            )
        if mask is not None:
            student, teacher, mask = pad_tokens(student, length), pad_tokens(teacher, length), pad_tokens(mask, length)
    counts = rows_per_process(local_rows, student.device)
    start = sum(counts[: dist.get_rank()])
    own_rows = torch.arange(start, start + local_rows, device=student.device)
    return GatheredBatch(gather_rows(student, counts), gather_rows(teacher, counts),
                         None if mask is None else gather_rows(mask, counts), own_rows)


def loss_on_global_batch(
    loss: DistillationLoss, batch: GatheredBatch, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """This process's value ``v_r`` of ``loss`` on a gathered global batch (see the module docstring): ``mean_r v_r``
    is the one-process loss of the global batch, and backward gives the one-process gradients after DDP's average.
    ``labels`` are the global batch's (gathered like the features) or None."""
    if world_size() > 1 and batch.student.dim() == 2 and loss.scores_row_shares():
        share = loss(batch.student, batch.teacher, mask=batch.mask, labels=labels, rows=batch.own_rows)
        return share * (world_size() * len(batch.own_rows) / batch.size)
    return loss(batch.student, batch.teacher, mask=batch.mask, labels=labels)


def gather_labels(labels: torch.Tensor | None) -> torch.Tensor | None:
    """Every process's labels, in the order of the gathered features (no gradients)."""
    if labels is None or world_size() == 1:
        return labels
    return gather_rows(labels, rows_per_process(labels.shape[0], labels.device))


def global_batch_loss(
    loss: DistillationLoss,
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`loss_on_global_batch` of one layer pair's local features (gathered here); with one process, simply
    ``loss(student, teacher, mask, labels)``."""
    return loss_on_global_batch(loss, gather_global_batch(student, teacher, mask), gather_labels(labels))


def token_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A mean over the tokens of the global batch, from this process's ``total`` (a sum over its ``count`` tokens).

    Token-weighted, not a mean of the processes' means (which would weigh a token of a short batch more): with
    ``N = sum_r count_r`` (one all-reduce), this process returns ``v_r = W * total_r / N``, so that ``mean_r v_r =
    sum_r total_r / N`` (the logged value) and DDP's average of the gradients is the one-process gradient of the
    global batch. With one process, ``total / count`` (0 when there are no tokens)."""
    if world_size() == 1:
        return total / count.clamp_min(1.0)
    tokens = count.detach().clone()
    dist.all_reduce(tokens, group=feature_group())
    return total * world_size() / tokens.clamp_min(1.0)
