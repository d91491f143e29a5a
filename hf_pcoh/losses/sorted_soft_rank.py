"""Soft ranks by sorting: ``O(m B log B)`` work and ``O(m B)`` memory instead of ``O(m B^2)`` work.

The pairwise soft rank of ``soft_rank.py`` compares every pair of a reference's row through a sigmoid:

    R_i(j) = 1/(B-2) * sum_{k != i, j} sigmoid(x_ij - x_ik),          x_ij = d(i, j) / tau,

``O(B^2)`` comparisons per reference, ``O(B^3)`` per batch with every point a reference. Here the
sigmoid is replaced by its tangent at 0, clipped to ``[0, 1]`` (a *ramp*; the construction is ours):

    g(x) = clamp(1/2 + x / (2 h), 0, 1),          h = RAMP_HALF_WIDTH = 2   (slope 1/4 = sigmoid'(0)),

so ``tau`` keeps its meaning: comparisons more than ``2 tau`` apart count fully (1 or 0), closer ones
linearly. For that kernel the sum over ``k`` needs no pairwise table. With the row sorted and its prefix
sums ``P``, for ``a = x_ij``:

    sum_k g(a - x_ik) = #{k : x_ik <= a - h} + n_W (a / (2h) + 1/2) - S_W / (2h),

where ``W = {k : a - h < x_ik < a + h}`` holds ``n_W`` values summing to ``S_W``; both come from two
``searchsorted`` lookups in the sorted row and ``P``. The terms ``k = j`` (``g(0) = 1/2``) and ``k = i``
(``g(x_ij - x_ii)``) are then taken out, and ``R_i(i) = 0``, as in the pairwise rank. The result is the
*exact* ramp soft rank, not an approximation of it; it differs from the sigmoid rank only through the
kernel (``|g - sigmoid| < 0.12``, largest at ``|x| = 2``), and both tend to the hard rank as ``tau -> 0``.

The gradient has the same structure. With ``G = dL/dR`` (``G_ii = 0``) and ``W(l)`` the window of ``x_il``,

    (2h (B-2)) dL/dx_il = G_il (n_W(l) - 1 - [|x_il - x_ii| < h]) - (sum_{j in W(l)} G_ij - G_il),

the first term from ``x_il`` as the compared point (the ``k = l`` and ``k = i`` members of its window do
not count), the second from ``x_il`` as the point compared against; ``dL/dx_ii = 0``. The sum of ``G`` over
a window is again a difference of prefix sums, in the sorted order. This holds everywhere except at the
kinks ``|x_ij - x_ik| = h`` (a set of measure zero). Sums run in float64, so that ``n_W a - S_W`` does not
lose the ranks' precision to cancellation when the scaled dissimilarities are large (``tau`` small).

:func:`sorted_soft_ranks` is the plain autograd version (it keeps several ``[m, B]`` float64 tensors for
backward); :class:`SortedRankDisagreement`, the loss's path, works on blocks of references and computes the
row gradients in forward from the formula above (``dL/dR`` is known as soon as the ranks are), so only the
``[m, B]`` gradients outlive a block: ``O(m B)`` memory whatever the batch, ``O(m B log B)`` time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

# Half-width of the ramp kernel, in units of tau: g rises from 0 at x = -h to 1 at x = h.
RAMP_HALF_WIDTH = 2.0


def ramp(values: torch.Tensor) -> torch.Tensor:
    """The kernel ``g(x) = clamp(1/2 + x / (2 h), 0, 1)``: the sigmoid's tangent at 0, clipped."""
    return (values / (2.0 * RAMP_HALF_WIDTH) + 0.5).clamp(0.0, 1.0)


def ramp_soft_ranks_pairwise(
    reference_rows: torch.Tensor, reference_index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The ramp soft rank by its direct ``[m, B, B]`` formula (``O(m B^2)`` memory): for checking
    :func:`sorted_soft_ranks`, which gives the same value and gradient."""
    from .soft_rank import comparison_mask

    batch_size = reference_rows.shape[1]
    differences = (reference_rows[:, :, None] - reference_rows[:, None, :]) / temperature
    mask = comparison_mask(reference_index, batch_size)
    return (ramp(differences) * mask).sum(dim=2) / (batch_size - 2)


def sorted_soft_ranks(
    reference_rows: torch.Tensor, reference_index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Ramp soft ranks ``R_i(j)`` ``[m, B]`` of ``[m, B]`` reference rows, by sorting (module docstring).

    Differentiable in ``reference_rows`` (autograd through :func:`block_ranks`, all references in one block);
    ``O(m B log B)`` time, entry ``j = i`` is 0. The loss's path is :class:`SortedRankDisagreement`.
    """
    return block_ranks(reference_rows.double() / temperature, reference_index)[0].to(reference_rows.dtype)


def sorted_hard_ranks(reference_rows: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
    """``#{k != i, j : x_ik < x_ij} / (B-2)`` with ties counted 1/2 (as ``soft_rank.hard_ranks``), by sorting:
    ``[m, B]``, no gradient, ``O(m B log B)``."""
    with torch.no_grad():
        num_references, batch_size = reference_rows.shape
        rows = reference_rows.contiguous()
        keys = torch.sort(rows, dim=1).values
        smaller = torch.searchsorted(keys, rows, right=False).to(rows.dtype)
        not_larger = torch.searchsorted(keys, rows, right=True).to(rows.dtype)
        counts = smaller + 0.5 * (not_larger - smaller)  # ties (j itself included) count 1/2
        to_reference = rows - rows.gather(1, reference_index[:, None])
        reference_term = (to_reference > 0).to(rows.dtype) + 0.5 * (to_reference == 0).to(rows.dtype)
        ranks = (counts - 0.5 - reference_term) / (batch_size - 2)
        return ranks.scatter_(1, reference_index[:, None], 0.0)


def nearer_counts(reference_rows: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
    """``#{k != i, j : x_ik < x_ij}``: how many points are strictly nearer to reference ``i`` than ``j`` (0 for
    the nearest; points tied share the smaller count), by sorting: ``[m, B]`` integers, no gradient."""
    with torch.no_grad():
        rows = reference_rows.contiguous()
        keys = torch.sort(rows, dim=1).values
        smaller = torch.searchsorted(keys, rows, right=False)  # k = j is never strictly smaller than itself
        reference_nearer = rows.gather(1, reference_index[:, None]) < rows  # the k = i term
        return smaller - reference_nearer.to(smaller.dtype)


def top_k_selection(
    teacher_rows: torch.Tensor, student_rows: torch.Tensor, reference_index: torch.Tensor, top_k: int
) -> torch.Tensor:
    """``s_ij = 1`` when ``j`` is among the ``top_k`` nearest points of reference ``i`` in the teacher **or** in the
    student (hard ranks of each side's ``[m, B]`` dissimilarity rows; points tied at the ``k``-th place are all in),
    else 0; ``s_ii = 0``. ``[m, B]`` in the teacher rows' dtype, no gradient: ``PerceptionCoherenceLoss``'s
    ``top_k``."""
    with torch.no_grad():
        selected = (nearer_counts(teacher_rows, reference_index) < top_k) | (
            nearer_counts(student_rows, reference_index) < top_k)
        return selected.to(teacher_rows.dtype).scatter_(1, reference_index[:, None], 0.0)


# Values per block of references in SortedRankDisagreement: each block holds about ten [c, B] tensors of
# 8 bytes, so 2^20 values keep a block near 80 MiB, whatever the batch.
SORTED_BLOCK_ELEMENTS = 2**20


def sorted_windows(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For float64 rows ``[c, B]``: the sort order, and for each entry the window ``(x - h, x + h)`` of its row
    as positions in the sorted row, ``below`` (count of values ``<= x - h``) and ``before_end`` (count of
    values ``< x + h``), and the sorted values' prefix sums ``[c, B + 1]``."""
    sorted_values, order = torch.sort(scaled, dim=1)
    below = torch.searchsorted(sorted_values, scaled - RAMP_HALF_WIDTH, right=True)
    before_end = torch.searchsorted(sorted_values, scaled + RAMP_HALF_WIDTH, right=False)
    prefix = torch.nn.functional.pad(torch.cumsum(sorted_values, dim=1), (1, 0))
    return order, below, before_end, prefix


def block_ranks(scaled: torch.Tensor, reference_index: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Ramp soft ranks of float64 scaled rows ``[c, B]``, and the windows for :func:`block_row_gradients`.

    Differentiable in ``scaled`` through the sorted values, their prefix sums and ``scaled`` itself (the
    window positions are integers), which is how :func:`sorted_soft_ranks` gets its autograd gradient.
    """
    batch_size = scaled.shape[1]
    order, below, before_end, prefix = sorted_windows(scaled)
    in_window = (before_end - below).to(scaled.dtype)
    window_sum = prefix.gather(1, before_end) - prefix.gather(1, below)
    ramp_sums = below.to(scaled.dtype) + in_window * (scaled / (2.0 * RAMP_HALF_WIDTH) + 0.5) - window_sum / (
        2.0 * RAMP_HALF_WIDTH)
    to_reference = scaled - scaled.gather(1, reference_index[:, None])
    ranks = (ramp_sums - 0.5 - ramp(to_reference)).div_(batch_size - 2)
    ranks.scatter_(1, reference_index[:, None], 0.0)
    return ranks, (order, below, before_end, in_window, to_reference)


def block_row_gradients(
    rank_grads: torch.Tensor, reference_index: torch.Tensor, windows: tuple[torch.Tensor, ...], temperature: float
) -> torch.Tensor:
    """``dL/d(rows)`` ``[c, B]`` of one block from ``G = dL/dR`` (formula in the module docstring)."""
    order, below, before_end, in_window, to_reference = windows
    batch_size = rank_grads.shape[1]
    grads = rank_grads.scatter(1, reference_index[:, None], 0.0)  # G_ii = 0: R_ii is the constant 0
    prefix = torch.nn.functional.pad(torch.cumsum(grads.gather(1, order), dim=1), (1, 0))
    window_grads = prefix.gather(1, before_end) - prefix.gather(1, below)  # sum of G over each window
    own_term = in_window - 1.0 - (to_reference.abs() < RAMP_HALF_WIDTH).to(grads.dtype)
    row_grads = (grads * own_term - (window_grads - grads)) / (2.0 * RAMP_HALF_WIDTH * (batch_size - 2) * temperature)
    return row_grads.scatter_(1, reference_index[:, None], 0.0)


def reference_blocks(num_references: int, batch_size: int) -> list[slice]:
    """Blocks of references of at most ``SORTED_BLOCK_ELEMENTS`` values each (at least one reference)."""
    per_block = max(1, SORTED_BLOCK_ELEMENTS // batch_size)
    return [slice(start, min(start + per_block, num_references)) for start in range(0, num_references, per_block)]


def fixed_sorted_soft_ranks(reference_rows: torch.Tensor, reference_index: torch.Tensor, temperature: float) -> torch.Tensor:
    """The values of :func:`sorted_soft_ranks` without a gradient (the teacher's), block by block: ``[m, B]``."""
    with torch.no_grad():
        ranks = torch.empty(reference_rows.shape, dtype=torch.float64, device=reference_rows.device)
        for block in reference_blocks(*reference_rows.shape):
            ranks[block] = block_ranks(reference_rows[block].double() / temperature, reference_index[block])[0]
        return ranks.to(reference_rows.dtype)


class SortedRankDisagreement(torch.autograd.Function):
    """``rank_disagreement(sorted_soft_ranks(rows), teacher_ranks, index, weights)`` in ``O(m B)`` memory.

    Same value and gradient as the autograd composition (tested), computed block by block of references;
    ``dL/dR = 2 (R^S - R^T) / (m (B - 1))`` (with constant ``weights``: ``2 w (R^S - R^T) / sum w``; with
    ``normaliser``, that divisor instead, as in ``soft_rank.rank_disagreement``) is known once a block's ranks are,
    so its row gradients are made in forward and backward only scales them.
    """

    @staticmethod
    def forward(
        ctx: Any,
        reference_rows: torch.Tensor,
        teacher_ranks: torch.Tensor,
        reference_index: torch.Tensor,
        temperature: float,
        weights: torch.Tensor | None = None,
        normaliser: float | None = None,
    ) -> torch.Tensor:
        num_references, batch_size = reference_rows.shape
        needs_grad = ctx.needs_input_grad[0]
        teacher_ranks = teacher_ranks.double()
        weights = None if weights is None else weights.double()
        if normaliser is None:
            normaliser = float(num_references * (batch_size - 1)) if weights is None else float(weights.sum())
        total = torch.zeros((), dtype=torch.float64, device=reference_rows.device)
        row_gradients = torch.empty_like(reference_rows) if needs_grad else None
        for block in reference_blocks(num_references, batch_size):
            index = reference_index[block]
            ranks, windows = block_ranks(reference_rows[block].double() / temperature, index)
            errors = ranks.sub_(teacher_ranks[block])
            weighted = errors if weights is None else errors * weights[block]
            total += (weighted * errors).sum()
            if needs_grad:
                rank_grads = weighted.mul_(2.0 / normaliser)
                row_gradients[block] = block_row_gradients(rank_grads, index, windows, temperature).to(reference_rows.dtype)
        ctx.row_gradients = row_gradients
        return (total / normaliser).to(reference_rows.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        return ctx.row_gradients * grad_loss, None, None, None, None, None
