"""Soft ranks of in-batch dissimilarities and their disagreement: the kernel of perception coherence.

For ``m`` reference points ``i`` and their dissimilarity rows ``x_i = (d(i, 1), ..., d(i, B))`` (``[m, B]``),
the soft rank of point ``j`` seen from ``i`` is

    R_i(j) = 1/(B-2) * sum_{k != i, j} sigmoid((d(i, j) - d(i, k)) / tau)          in [0, 1],

which tends to the normalised hard rank ``#{k : d(i, k) < d(i, j)} / (B-2)`` (ties counted 1/2) as
``tau -> 0``; ``R_i(i) = 0``. The disagreement of student and teacher ranks is

    L = 1/(m (B-1)) * sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2,

or, with constant weights ``w_ij`` (``locality`` in ``perception_coherence.py``; ours),
``L = sum_i sum_{j != i} w_ij (R^S_i(j) - R^T_i(j))^2 / sum_i sum_{j != i} w_ij``. Construction ours
(see ``perception_coherence.py`` for the paper: Nguyen et al., TMLR 2026, arXiv 2505.06595).

Two implementations give the same value and gradient. ``reference`` (:func:`soft_ranks_reference`) is
the direct formula: autograd keeps the ``[m, B, B]`` comparison tensor, ``O(m B^2)`` memory (``O(B^3)``
with every point a reference). ``chunked`` works on a *folded* layout: every unordered pair ``{j, k}`` is
``o = (k - j) mod B`` steps apart for one offset ``o`` in ``1 .. B // 2``, so the ``[B/2, B]`` rows of
offsets hold each comparison once and ``1 - sigmoid`` gives the mirrored one (half the sigmoids of
the direct formula; sums over the second point of a pair become strided sums over a padded copy).
Blocks of at most ``BLOCK_ELEMENTS`` values (``c`` references x offsets x ``B``) are made one at a
time; :class:`SoftRanks` (ranks with an analytic backward) and :class:`SoftRankDisagreement` (the
loss, whose row gradients are computed in forward, from the block just made) keep only ``[m, B]``
tensors beyond a block: ``O(B^2)`` memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

# Values of one block of folded comparisons [references, offsets, pad + B] in the chunked implementation:
# 2^24 float32 values are 64 MiB, small beside the O(B^2) tensors yet large enough to keep kernels busy.
BLOCK_ELEMENTS = 2**24
# |x| beyond which sigmoid(x) is taken as saturated: sigmoid(30) rounds to 1 in float32, sigmoid(-30) ~ 9e-14.
SIGMOID_SATURATION = 30.0


def comparison_mask(reference_index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[m, B, B]`` boolean mask of the valid comparisons ``(i, j, k)``: ``j != i``, ``k != i``, ``k != j``."""
    device = reference_index.device
    points = torch.arange(batch_size, device=device)
    not_reference_j = points[None, :] != reference_index[:, None]  # [m, B]
    not_same_jk = ~torch.eye(batch_size, dtype=torch.bool, device=device)  # [B, B]
    return not_reference_j[:, :, None] & not_reference_j[:, None, :] & not_same_jk[None]


def soft_ranks_reference(
    reference_rows: torch.Tensor, reference_index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft ranks ``R_i(j)`` for each reference ``i``: ``[m, B]`` (the entry ``j = i`` is 0).

    ``reference_rows`` is ``[m, B]``: the dissimilarities from the ``m`` references to all ``B`` points.
    This is the direct formula; it builds the ``[m, B, B]`` comparison tensor, so its memory is
    ``O(m B^2)`` (``O(B^3)`` with every point a reference).
    """
    batch_size = reference_rows.shape[1]
    differences = (reference_rows[:, :, None] - reference_rows[:, None, :]) / temperature  # [m, B, B]
    mask = comparison_mask(reference_index, batch_size)
    return (torch.sigmoid(differences) * mask).sum(dim=2) / (batch_size - 2)


def hard_ranks(reference_rows: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
    """The ``tau -> 0`` limit of :func:`soft_ranks_reference`: ``#{k: d(i,k) < d(i,j)} / (B-2)``, ties 1/2."""
    batch_size = reference_rows.shape[1]
    differences = reference_rows[:, :, None] - reference_rows[:, None, :]
    steps = (differences > 0).to(reference_rows.dtype) + 0.5 * (differences == 0).to(reference_rows.dtype)
    mask = comparison_mask(reference_index, batch_size)
    return (steps * mask).sum(dim=2) / (batch_size - 2)


def rank_disagreement(
    student_ranks: torch.Tensor,
    teacher_ranks: torch.Tensor,
    reference_index: torch.Tensor,
    weights: torch.Tensor | None = None,
    normaliser: float | None = None,
) -> torch.Tensor:
    """``1/(m (B-1)) * sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2`` over ``[m, B]`` rank matrices.

    Both sides' ``R_i(i)`` are 0 (every rank function here sets them so), so the ``j = i`` terms add
    nothing and need no mask; ``reference_index`` is only checked against that. With ``weights``
    ``[m, B]`` (constants, ``w_ii = 0``, e.g. :func:`locality_weights`): the weighted mean
    ``sum_ij w_ij (R^S_i(j) - R^T_i(j))^2 / sum_ij w_ij``. ``normaliser`` replaces the divisor (``m (B-1)``
    or ``sum_ij w_ij``): a share of the rows of a weighted loss is divided by the whole batch's sum of
    weights, scaled to the share, so that the shares add up to the whole (``PerceptionCoherenceLoss.forward``).
    """
    references, batch_size = student_ranks.shape
    if reference_index.shape != (references,):
        raise ValueError(f"reference_index has shape {tuple(reference_index.shape)}, expected ({references},)")
    if weights is None:
        divisor = references * (batch_size - 1) if normaliser is None else normaliser
        return (student_ranks - teacher_ranks).pow(2).sum() / divisor
    divisor = weights.sum() if normaliser is None else normaliser
    return (weights * (student_ranks - teacher_ranks).pow(2)).sum() / divisor


def locality_weights(teacher_ranks: torch.Tensor, reference_index: torch.Tensor, locality: float) -> torch.Tensor:
    """``w_ij = exp(-R^T_i(j) / locality)`` for ``j != i`` and ``w_ii = 0``: ``[m, B]``, no gradient.

    Teacher ranks lie in ``[0, 1]`` (0 = nearest), so the weights lie in ``[exp(-1 / locality), 1]``:
    a reference's nearest teacher neighbours count up to ``exp(1 / locality)`` times its farthest ones.
    Given ``min(H^T, H^S)``, the smaller of the two sides' hard ranks, the same function gives the two-sided
    weights ``max(exp(-H^T / locality), exp(-H^S / locality))`` (``locality_sides="both"``).
    """
    with torch.no_grad():
        weights = torch.exp(-teacher_ranks / locality)
        return weights.scatter_(1, reference_index[:, None], 0.0)


def comparison_blocks(
    num_references: int, batch_size: int, reference_chunk_size: int | None = None
) -> list[tuple[slice, slice]]:
    """Blocks ``(references, offsets)`` of the folded comparisons, each at most ``BLOCK_ELEMENTS`` values.

    The folded layout (see :func:`folded_sigmoids`) holds, per reference, one row of ``B + pad`` values
    for each offset ``o = 1 .. B // 2`` (``pad < B // 2``). ``reference_chunk_size`` references per block
    (default: as many as fit the budget); where even that many references exceed it, the offsets are
    split as well (at least one offset row per block). Offsets are given as indices ``q = o - 1``.
    """
    num_offsets = batch_size // 2
    per_offset = batch_size + num_offsets  # the longest padded row
    per_reference = num_offsets * per_offset
    references_per_block = reference_chunk_size or max(1, BLOCK_ELEMENTS // per_reference)
    references_per_block = min(references_per_block, num_references)
    if references_per_block * per_reference <= BLOCK_ELEMENTS:
        offsets_per_block = num_offsets
    else:
        offsets_per_block = max(1, BLOCK_ELEMENTS // (references_per_block * per_offset))
    return [
        (
            slice(first_reference, min(first_reference + references_per_block, num_references)),
            slice(first_offset, min(first_offset + offsets_per_block, num_offsets)),
        )
        for first_reference in range(0, num_references, references_per_block)
        for first_offset in range(0, num_offsets, offsets_per_block)
    ]


def step_(values: torch.Tensor, hard: bool) -> torch.Tensor:
    """In place: ``sigmoid`` of the comparisons, or the hard step ``(1 + sign(x)) / 2`` (ties 1/2).

    The comparisons are clamped to ``+-SIGMOID_SATURATION`` first: beyond it ``sigmoid`` is 1 in float32
    and under 1e-13 on the other side, so no rank moves by more than 1e-13, but ``sigmoid`` of the far
    tail would otherwise produce denormal numbers, which make the CPU's sigmoid and the backward's
    products about twice as slow (a common case: tau=0.1 spans ~150 units of scaled distance).
    """
    if hard:
        return values.sign_().add_(1.0).mul_(0.5)
    return values.clamp_(-SIGMOID_SATURATION, SIGMOID_SATURATION).sigmoid_()


def cyclic_partners(values: torch.Tensor, offsets: slice) -> torch.Tensor:
    """``[c, B] -> [c, n, B]`` view with ``out[r, t, j] = values[r, (j + o_t) mod B]``, ``o_t = offsets.start + 1 + t``."""
    count, batch_size = values.shape
    extended = torch.cat([values, values[:, : offsets.stop]], dim=1)  # j + o <= B - 1 + offsets.stop
    size = (count, offsets.stop - offsets.start, batch_size)
    return extended.as_strided(size, (extended.stride(0), 1, 1), extended.storage_offset() + offsets.start + 1)


def folded_buffer(first: torch.Tensor, partners: torch.Tensor, offsets: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded buffer ``[c, n, pad + B]`` (``pad = offsets.stop``) and its core ``[c, n, B]`` view, which
    holds ``first[r, None, j] - partners[r, t, j]``. :func:`fill_padding` later copies the core's last
    ``pad`` columns in front of it, so that sums along the cyclic diagonals become plain strided sums."""
    count, num_offsets, batch_size = partners.shape
    padded = first.new_empty(count, num_offsets, offsets.stop + batch_size)
    core = padded[:, :, offsets.stop :]
    torch.sub(first[:, None, :], partners, out=core)
    return padded, core


def fill_padding(padded: torch.Tensor, offsets: slice) -> torch.Tensor:
    """Copy the core's last ``pad`` columns into the padding: ``padded[..., p] = core[..., (p - pad) mod B]``."""
    batch_size = padded.shape[2] - offsets.stop
    padded[:, :, : offsets.stop].copy_(padded[:, :, batch_size:])
    return padded


def first_and_second_sums(padded: torch.Tensor, offsets: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """For a filled padded buffer of ``F[t, j]`` (the pair ``(j, j + o_t)``): ``sum_t F[t, j]`` (``j`` first
    in its pairs) and ``sum_t F[t, (k - o_t) mod B]`` (``k`` second), each ``[c, B]``."""
    count, num_offsets, width = padded.shape
    batch_size, pad = width - offsets.stop, offsets.stop
    first = padded[:, :, pad:].sum(dim=1)
    # F[t, (k - o_t) mod B] = padded[t, k - o_t + pad]: a stride of (width - 1) along t.
    diagonals = padded.as_strided(
        (count, num_offsets, batch_size),
        (padded.stride(0), padded.stride(1) - 1, 1),
        padded.storage_offset() + pad - offsets.start - 1,
    )
    return first, diagonals.sum(dim=1)


def folded_sigmoids(scaled: torch.Tensor, offsets: slice, hard: bool = False) -> torch.Tensor:
    """``S[r, t, j] = sigmoid(x_j - x_{(j + o_t) mod B})`` for one block of offsets, as a filled padded buffer.

    Each unordered pair ``{j, k}`` of the ``B`` points is one offset ``o = (k - j) mod B`` in ``1 .. B // 2``
    away, so the offsets ``1 .. B // 2`` hold every comparison once (twice for ``o = B / 2`` when ``B``
    is even) and ``sigmoid(x_k - x_j) = 1 - S`` gives the mirrored one: half the ``[B, B]`` comparisons
    of the direct formula, hence half its sigmoids.
    """
    padded, core = folded_buffer(scaled, cyclic_partners(scaled, offsets), offsets)
    step_(core, hard)
    return fill_padding(padded, offsets)


def _chunked_rank_sums(
    reference_rows: torch.Tensor,
    reference_index: torch.Tensor,
    temperature: float,
    hard: bool,
    reference_chunk_size: int | None,
    keep_single_block: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Soft (or hard) ranks ``[m, B]`` from the folded comparisons, one block at a time.

    ``(B - 2) R_i(j) = sum_t S[t, j] + sum_t (1 - S[t, (j - o_t) mod B]) - [B even] S[B/2 - 1, j]
    - step(x_ij - x_ii)``: each pair once from either side, less the doubled ``o = B / 2`` pairs and the
    excluded ``k = i`` term; ``R_i(i) = 0``.

    With ``keep_single_block`` and all comparisons in one block, that padded block of sigmoids is
    returned as well, for :func:`soft_rank_row_gradients` to reuse; otherwise ``None``.
    """
    num_references, batch_size = reference_rows.shape
    num_offsets = batch_size // 2
    scaled = reference_rows / temperature  # [m, B]
    to_reference = scaled - scaled.gather(1, reference_index[:, None])  # x_ij - x_ii  [m, B]
    ranks = -step_(to_reference, hard)
    blocks = comparison_blocks(num_references, batch_size, reference_chunk_size)
    padded = None
    for references, offsets in blocks:
        padded = folded_sigmoids(scaled[references], offsets, hard)
        first, second = first_and_second_sums(padded, offsets)
        ranks[references] += first - second + (offsets.stop - offsets.start)
        if batch_size % 2 == 0 and offsets.stop == num_offsets:  # the o = B/2 pairs were counted twice
            ranks[references] -= padded[:, -1, offsets.stop :]
    ranks.scatter_(1, reference_index[:, None], 0.0).div_(batch_size - 2)
    return ranks, (padded if keep_single_block and len(blocks) == 1 else None)


class SoftRanks(torch.autograd.Function):
    """``R_i(j)`` from ``[m, B]`` reference rows, in ``O(m B)`` saved memory (the analytic backward).

    With ``G = dL/dR`` (``G_ii = 0``) and ``W = sigmoid'`` of each comparison, each pair ``(j, k)``
    contributes ``U_jk = (G_ij - G_ik) W_ijk`` to ``dL/dx_ij`` and ``-U_jk`` to ``dL/dx_ik``; the excluded
    ``k = i`` terms take ``G_ij W(x_ij - x_ii)`` back, and everything is divided by ``(B - 2) tau``.
    ``W = s (1 - s)`` with ``s`` the folded sigmoids: when every comparison fits one block (e.g.
    ``B <= 256`` with all references), forward keeps that block and backward turns it into ``W`` in
    place (at most ``BLOCK_ELEMENTS`` values kept, no sigmoid recomputed); larger batches recompute it
    block by block, so only ``[m, B]`` tensors are kept.
    """

    @staticmethod
    def forward(
        ctx: Any,
        reference_rows: torch.Tensor,
        reference_index: torch.Tensor,
        temperature: float,
        reference_chunk_size: int | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(reference_rows, reference_index)
        ctx.temperature = temperature
        ctx.reference_chunk_size = reference_chunk_size
        ranks, ctx.kept_block = _chunked_rank_sums(
            reference_rows, reference_index, temperature, False, reference_chunk_size,
            keep_single_block=ctx.needs_input_grad[0],
        )
        return ranks

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ranks: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        reference_rows, reference_index = ctx.saved_tensors
        # The kept block is consumed in place; a second backward (retain_graph=True) recomputes it.
        kept_block, ctx.kept_block = ctx.kept_block, None
        grads = soft_rank_row_gradients(
            reference_rows, reference_index, ctx.temperature, ctx.reference_chunk_size, grad_ranks, kept_block
        )
        return grads, None, None, None


def soft_rank_row_gradients(
    reference_rows: torch.Tensor,
    reference_index: torch.Tensor,
    temperature: float,
    reference_chunk_size: int | None,
    grad_ranks: torch.Tensor,
    kept_block: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dL/d(reference_rows)`` ``[m, B]`` from ``dL/dR`` ``[m, B]`` (formula in :class:`SoftRanks`).

    ``kept_block``: forward's single padded block of sigmoids, turned into ``W`` in place; ``None``
    recomputes the blocks.
    """
    num_references, batch_size = reference_rows.shape
    num_offsets = batch_size // 2
    scaled = reference_rows / temperature
    # R_i(i) is the constant 0: its incoming gradient must not leak into the other entries.
    rank_grads = grad_ranks.to(reference_rows.dtype).scatter(1, reference_index[:, None], 0.0)  # [m, B]
    # The excluded k = i terms: -G_ij W(x_ij - x_ii).
    to_reference = step_(scaled - scaled.gather(1, reference_index[:, None]), hard=False)
    grads = -rank_grads * to_reference.mul_(1.0 - to_reference)  # [m, B], in units of (B - 2) tau

    for references, offsets in comparison_blocks(num_references, batch_size, reference_chunk_size):
        if kept_block is None:
            padded = folded_sigmoids(scaled[references], offsets)
        else:
            padded, kept_block = kept_block, None
        core = padded[:, :, offsets.stop :]
        core.addcmul_(core, core, value=-1.0)  # s - s^2 = sigmoid'(x), in place
        block_grads = rank_grads[references]
        partners = cyclic_partners(block_grads, offsets)
        # An explicit contiguous buffer: left to itself, torch lays the difference out like the
        # overlapping view (offsets innermost), and the product below then runs 3x slower.
        differences = torch.sub(block_grads[:, None, :], partners, out=torch.empty_like(core, memory_format=torch.contiguous_format))
        core.mul_(differences)  # U = (G_j - G_{j+o}) W
        del differences
        if batch_size % 2 == 0 and offsets.stop == num_offsets:  # o = B/2 holds each pair twice
            core[:, -1].mul_(0.5)
        first, second = first_and_second_sums(fill_padding(padded, offsets), offsets)
        grads[references] += first - second
    grads /= (batch_size - 2) * temperature
    return grads.scatter_(1, reference_index[:, None], 0.0)


class SoftRankDisagreement(torch.autograd.Function):
    """:func:`rank_disagreement` of the student's soft ranks (from its rows) and fixed teacher ranks.

    Same value and gradient as ``rank_disagreement(soft_ranks_chunked(rows, ...), teacher_ranks, ..., weights)``,
    but the gradient ``dL/dR = 2 (R^S - R^T) / (m (B - 1))`` (with constant ``weights``:
    ``2 w (R^S - R^T) / sum w``; with ``normaliser``, that divisor instead: :func:`rank_disagreement`) is known as
    soon as the ranks are, so the row gradients are computed in forward, from the block of sigmoids just made
    (still in cache), and no block outlives forward; backward only scales them.
    """

    @staticmethod
    def forward(
        ctx: Any,
        reference_rows: torch.Tensor,
        teacher_ranks: torch.Tensor,
        reference_index: torch.Tensor,
        temperature: float,
        reference_chunk_size: int | None,
        weights: torch.Tensor | None = None,
        normaliser: float | None = None,
    ) -> torch.Tensor:
        needs_grad = ctx.needs_input_grad[0]
        student_ranks, kept_block = _chunked_rank_sums(
            reference_rows, reference_index, temperature, False, reference_chunk_size, keep_single_block=needs_grad
        )
        teacher_ranks = teacher_ranks.to(student_ranks.dtype)
        if weights is not None:
            weights = weights.to(student_ranks.dtype)
        loss = rank_disagreement(student_ranks, teacher_ranks, reference_index, weights, normaliser)
        ctx.row_gradients = None
        if needs_grad:
            num_references, batch_size = student_ranks.shape
            if weights is None:
                divisor = num_references * (batch_size - 1) if normaliser is None else normaliser
                rank_grads = (student_ranks - teacher_ranks).mul_(2.0 / divisor)
            else:
                divisor = weights.sum() if normaliser is None else normaliser
                rank_grads = (student_ranks - teacher_ranks).mul_(weights).mul_(2.0 / divisor)
            ctx.row_gradients = soft_rank_row_gradients(
                reference_rows, reference_index, temperature, reference_chunk_size, rank_grads, kept_block
            )
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None, None]:
        return ctx.row_gradients * grad_loss, None, None, None, None, None, None


def soft_ranks_chunked(
    reference_rows: torch.Tensor,
    reference_index: torch.Tensor,
    temperature: float,
    reference_chunk_size: int | None = None,
) -> torch.Tensor:
    """Same value and gradient as :func:`soft_ranks_reference`, in ``O(m B)`` memory kept for backward.

    ``reference_rows`` ``[m, B]`` (differentiable), ``reference_index`` ``[m]`` -> ranks ``[m, B]``.
    """
    return SoftRanks.apply(reference_rows, reference_index, float(temperature), reference_chunk_size)


def fixed_soft_ranks_chunked(
    reference_rows: torch.Tensor,
    reference_index: torch.Tensor,
    temperature: float,
    reference_chunk_size: int | None = None,
) -> torch.Tensor:
    """The values of :func:`soft_ranks_chunked` without a gradient (e.g. the teacher's ranks): ``[m, B]``."""
    with torch.no_grad():
        return _chunked_rank_sums(reference_rows, reference_index, temperature, False, reference_chunk_size)[0]


def hard_ranks_chunked(
    reference_rows: torch.Tensor, reference_index: torch.Tensor, reference_chunk_size: int | None = None
) -> torch.Tensor:
    """Same as :func:`hard_ranks` (no gradient), without the ``[m, B, B]`` tensor."""
    with torch.no_grad():
        return _chunked_rank_sums(reference_rows, reference_index, 1.0, True, reference_chunk_size)[0]
