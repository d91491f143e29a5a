"""A batch-level loss term on the global batch under data parallelism, computed once across processes.

Batch-level losses compare the points of a batch with one another, so under data parallelism they must see the
**global** batch: each process gathers every process's features (:mod:`hf_pcoh.distributed`, gradients kept).
Scoring that gathered batch on every process would make each of ``W`` processes pay the whole cost, which for
perception coherence is ``O(B^3)`` in the global batch ``B``. A loss that is a mean over reference rows
(:meth:`~hf_pcoh.losses.DistillationLoss.scores_row_shares`) is instead split: each process scores only its own
rows (its slice of the gathered batch) against the whole batch, ``O(B^3 / W)``.

Token features of a set-geometry loss (Procrustes, Gram, CKA: :class:`~hf_pcoh.losses.set_geometry.SetGeometryLoss`,
which compares at most ``max_tokens`` valid tokens) are sub-sampled **before** the gather rather than gathered whole
(``[W b, T, d]`` for both models) and cut afterwards. One all-gather tells every process every process's number of
valid tokens and one seed (rank 0's); the chosen rows are :func:`shared_token_rows` of those counts, the same on
every process; each process flattens its own chosen tokens to ``[m_r, d]`` and only those are gathered, so no
process receives more than ``max_tokens`` rows. The loss then takes the gathered ``[M, d]`` rows as pooled points
(mask None), which for these losses is the loss on the token features restricted to those rows (they centre and
normalise over their rows either way). Losses of one layer pair with the same ``max_tokens`` share the chosen rows of
a forward. Losses that are means over tokens (projected MSE, token KD) are not batch-level and gather nothing.

The value each process returns, ``v_r``, is set so that training is exactly the one-process training on the
global batch (on the chosen rows, for sub-sampled tokens), whichever way the term was computed:

* **replicated** (every other loss): ``v_r = L``, the loss of the gathered batch;
* **shared rows**: ``v_r = W * (n_r / B) * L_r``, where ``L_r`` is the mean over this process's ``n_r`` rows, so
  that ``L = sum_r (n_r / B) L_r``.

In both cases ``mean_r v_r = L`` (the logged value, averaged over processes as the Trainer does) and backward
gives each process ``W * dL/dx_r`` on its own features: the gather's backward sums every process's gradient into
the rows' owner. DDP's average over ``W`` processes then yields exactly ``dL/dtheta``. Processes may hold
different numbers of rows (an uneven last batch): the gather pads and cuts. The processes' row counts (and the
labels) are gathered once per forward (:class:`GlobalBatches`), whatever the number of layer pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as differentiable_all_gather

from .distributed import feature_group, longest_across_processes, pad_tokens, world_size
from .losses import DistillationLoss
from .losses.set_geometry import SetGeometryLoss


@dataclass
class GatheredBatch:
    """One layer pair's global batch, and where this process's own rows sit in it."""

    student: torch.Tensor  # [B, ...], gradients flow back to each process's rows
    teacher: torch.Tensor  # [B, ...]
    mask: torch.Tensor | None  # [B, T] for token features, else None
    own_rows: torch.Tensor  # [n_r] indices of this process's rows in the global batch
    token_seed: int | None = None  # the seed of shared_token_rows when the rows are chosen tokens, else None

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
    if longest == 0:  # every process knows the counts, so all of them skip the collective alike
        return tensor[:0]
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


def gather_global_batch(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, counts: list[int] | None = None
) -> GatheredBatch:
    """The global batch of one layer pair: pooled ``[b, d]`` or token ``[b, T, d]`` features of every process, whole.

    Token features are padded to the longest ``T`` of all processes first, their mask with zeros, so padding
    never counts; without a mask every process must have the same ``T``. ``counts``: every process's number of
    rows when already known (:func:`rows_per_process`), else gathered here.
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
    counts = rows_per_process(local_rows, student.device) if counts is None else counts
    start = sum(counts[: dist.get_rank()])
    own_rows = torch.arange(start, start + local_rows, device=student.device)
    return GatheredBatch(gather_rows(student, counts), gather_rows(teacher, counts),
                         None if mask is None else gather_rows(mask, counts), own_rows)


def shared_token_rows(counts: list[int], max_tokens: int, seed: int) -> torch.Tensor:
    """The rows a set-geometry loss compares among the valid tokens of the global batch, as the same choice on
    every process.

    The ``N = sum(counts)`` valid tokens are numbered in rank order: process 0's first, each process's in the order
    ``features.flatten(0, 1)[mask.bool().flatten()]`` lists them. The rule: all ``N`` when ``N <= max_tokens``, else
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:max_tokens]`` (uniform, without
    replacement). Returns the chosen global indices sorted, a CPU ``int64`` tensor ``[min(N, max_tokens)]``.
    """
    total = sum(counts)
    if total <= max_tokens:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:max_tokens].sort().values


def token_counts_and_seed(tokens: int, device: torch.device) -> tuple[list[int], int]:
    """Every process's number of valid tokens and one seed shared by all (rank 0's): one all-gather.

    Every process draws a seed from torch's CPU random state, so all of them advance it alike; rank 0's is used.
    """
    seed = int(torch.randint(0, 2**62, ()))
    mine = torch.tensor([tokens, seed], dtype=torch.int64, device=device)
    pieces = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(pieces, mine, group=feature_group())
    table = torch.stack(pieces).tolist()  # [W, 2]
    return [count for count, _ in table], table[0][1]


def valid_tokens(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[b, T, d]`` -> ``[n, d]``: the unmasked tokens in row-major order (all of them without a mask)."""
    flat = features.flatten(0, 1)
    return flat if mask is None else flat[mask.bool().flatten()]


def gather_token_rows(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, max_tokens: int
) -> GatheredBatch:
    """Token features ``[b, T, d]`` of one layer pair, sub-sampled before the gather: the global batch's chosen
    valid tokens (:func:`shared_token_rows`) as pooled-like rows ``[M, d]``, ``M <= max_tokens``, mask None.

    Each process sends only its own chosen tokens; gradients flow back to them. Sequence lengths may differ
    between processes, with or without a mask (tokens are flattened before the gather).
    """
    if teacher.shape[:-1] != student.shape[:-1]:
        raise ValueError(f"token features [b, T, d] of student and teacher need the same b and T, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    student_tokens, teacher_tokens = valid_tokens(student, mask), valid_tokens(teacher, mask)  # [n_r, d]
    counts, seed = token_counts_and_seed(student_tokens.shape[0], student.device)
    chosen = shared_token_rows(counts, max_tokens, seed)  # [M], sorted global indices
    offsets = torch.tensor([0, *counts]).cumsum(0)  # [W + 1]: where each process's tokens start
    bounds = torch.searchsorted(chosen, offsets).tolist()  # [W + 1]: where each process's chosen rows start
    chosen_counts = [end - begin for begin, end in zip(bounds[:-1], bounds[1:])]
    rank = dist.get_rank()
    own = (chosen[bounds[rank]:bounds[rank + 1]] - offsets[rank]).to(student.device)  # [m_r] local token indices
    own_rows = torch.arange(bounds[rank], bounds[rank + 1], device=student.device)
    return GatheredBatch(gather_rows(student_tokens[own], chosen_counts), gather_rows(teacher_tokens[own], chosen_counts),
                         None, own_rows, token_seed=seed)


def token_row_limit(loss: DistillationLoss, student: torch.Tensor) -> int | None:
    """``max_tokens`` when ``loss`` compares a sub-sample of the tokens of ``student`` (a set-geometry loss on token
    features), so the rows are chosen before the gather; else None.

    Only :class:`SetGeometryLoss` is known to give the same value on its chosen rows as pooled points."""
    if isinstance(loss, SetGeometryLoss) and student.dim() == 3:
        return loss.max_tokens
    return None


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


def gather_labels(labels: torch.Tensor | None, counts: list[int] | None = None) -> torch.Tensor | None:
    """Every process's labels, in the order of the gathered features (no gradients); ``counts`` as in
    :func:`gather_global_batch`."""
    if labels is None or world_size() == 1:
        return labels
    return gather_rows(labels, rows_per_process(labels.shape[0], labels.device) if counts is None else counts)


class GlobalBatches:
    """The gathers of one forward under data parallelism, each done once and in the same order on every process:
    the processes' row counts, the labels, and per layer pair the global batch of each row rule (whole, or the
    token rows chosen for one ``max_tokens``), whatever the number of losses that read it."""

    def __init__(self, labels: torch.Tensor | None = None) -> None:
        self.local_labels = labels  # [b] class labels of this process, or None
        self.counts: list[int] | None = None
        self.batches: dict[tuple[int, int | None], GatheredBatch] = {}
        self.labels: torch.Tensor | None = None  # the global batch's, once gathered
        self.labels_gathered = False

    def row_counts(self, rows: int, device: torch.device) -> list[int]:
        if self.counts is None:
            self.counts = rows_per_process(rows, device)
        return self.counts

    def batch(
        self, pair_index: int, loss: DistillationLoss, student: torch.Tensor, teacher: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> GatheredBatch:
        """The global batch ``loss`` compares for the layer pair ``pair_index`` (local ``student``, ``teacher``)."""
        max_tokens = token_row_limit(loss, student)
        key = (pair_index, max_tokens)
        if key not in self.batches:
            self.batches[key] = (
                gather_global_batch(student, teacher, mask, self.row_counts(student.shape[0], student.device))
                if max_tokens is None else gather_token_rows(student, teacher, mask, max_tokens)
            )
        return self.batches[key]

    def loss_value(
        self, pair_index: int, loss: DistillationLoss, student: torch.Tensor, teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This process's value of ``loss`` on the global batch (:func:`loss_on_global_batch`); with one process,
        simply ``loss(student, teacher, mask, labels)``."""
        if world_size() == 1:
            return loss(student, teacher, mask=mask, labels=self.local_labels)
        batch = self.batch(pair_index, loss, student, teacher, mask)
        if batch.token_seed is not None:  # token rows: per-example labels do not apply to them
            return loss_on_global_batch(loss, batch)
        if not self.labels_gathered:
            counts = None if self.local_labels is None else self.row_counts(self.local_labels.shape[0], student.device)
            self.labels, self.labels_gathered = gather_labels(self.local_labels, counts), True
        return loss_on_global_batch(loss, batch, self.labels)


def global_batch_loss(
    loss: DistillationLoss,
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`loss_on_global_batch` of one layer pair's local features (gathered here); with one process, simply
    ``loss(student, teacher, mask, labels)``."""
    return GlobalBatches(labels).loss_value(0, loss, student, teacher, mask)


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
