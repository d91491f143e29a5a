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

Gradients are autograd's through ``sort`` (a gather), ``cumsum`` and ``gather``: ``dR_i(j)/dx_ij =
n_W / (2h (B-2))`` less the ``k = j, i`` terms, and ``-1 / (2h (B-2))`` for each ``x_ik`` in ``j``'s window,
which is the derivative of the ramp sum everywhere except at the kinks ``|x_ij - x_ik| = h`` (a set of
measure zero). Sums run in float64, so that ``n_W a - S_W`` does not lose the ranks' precision to
cancellation when the scaled dissimilarities are large (``tau`` small).
"""

from __future__ import annotations

import torch

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

    Differentiable in ``reference_rows``; ``O(m B log B)`` time, ``O(m B)`` memory, entry ``j = i`` is 0.
    """
    num_references, batch_size = reference_rows.shape
    half_width = RAMP_HALF_WIDTH
    scaled = reference_rows.double() / temperature  # [m, B]
    sorted_values = torch.sort(scaled, dim=1).values
    prefix = torch.nn.functional.pad(torch.cumsum(sorted_values, dim=1), (1, 0))  # prefix[:, p] = sum of the p smallest
    with torch.no_grad():  # window bounds are integers: no gradient flows through them
        keys = sorted_values.detach().contiguous()
        below = torch.searchsorted(keys, (scaled.detach() - half_width).contiguous(), right=True)  # x_k <= a - h
        before_end = torch.searchsorted(keys, (scaled.detach() + half_width).contiguous(), right=False)  # x_k < a + h
    in_window = (before_end - below).to(scaled.dtype)
    window_sum = prefix.gather(1, before_end) - prefix.gather(1, below)
    ramp_sums = below.to(scaled.dtype) + in_window * (scaled / (2.0 * half_width) + 0.5) - window_sum / (2.0 * half_width)
    to_reference = scaled - scaled.gather(1, reference_index[:, None])  # x_ij - x_ii
    ranks = (ramp_sums - 0.5 - ramp(to_reference)) / (batch_size - 2)  # less the k = j and k = i terms
    ranks = ranks.scatter(1, reference_index[:, None], 0.0)
    return ranks.to(reference_rows.dtype)


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
