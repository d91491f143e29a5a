"""Perception-coherence loss: the student ranks the batch's dissimilarities as the teacher does.

Nguyen, Gamboa, Zhang, Chhaibi, Gratton, Giaccone, "Perception coherence" (TMLR 2026, arXiv 2505.06595).
Only the paper's abstract and introduction were readable when this was written and no reference code
is public, so the construction below is *ours*, following the abstract's notion: two encoders are
coherent when they order the dissimilarities between points the same way. See ``../shared/DESIGN.md``.

For features ``X`` (``[B, d]``) and a dissimilarity ``d``, the soft rank of point ``j`` seen from the
reference point ``i`` is

    R_i(j) = 1/(B-2) * sum_{k != i, j} sigmoid((d(i, j) - d(i, k)) / tau)          in [0, 1],

which tends to the normalised hard rank ``#{k : d(i, k) < d(i, j)} / (B-2)`` (ties counted 1/2) as
``tau -> 0``. With ``R^S`` from the student and ``R^T`` from the teacher,

    L = 1/(m (B-1)) * sum_{i in refs} sum_{j != i} (R^S_i(j) - R^T_i(j))^2,

over ``m`` reference points (all ``B`` by default). For uniform ranks the mean squared rank difference
is an affine function of Spearman's rho, so ``L`` is a differentiable ``1 - rho`` per reference.
Before ranking, each side's dissimilarities are divided by their spread over the batch (``scale``),
so that one ``tau`` fits every model; the loss is then invariant to isotropic scaling of either side,
and under euclidean distances to rotations and translations of either side.

Two implementations give the same value and gradient. ``reference`` is the direct formula: autograd
keeps the ``[m, B, B]`` comparison tensor, ``O(m B^2)`` memory (``O(B^3)`` with every point a
reference). ``chunked`` (the default) works on a *folded* layout: every unordered pair ``{j, k}`` is
``o = (k - j) mod B`` steps apart for one offset ``o`` in ``1 .. B // 2``, so the ``[B/2, B]`` rows of
offsets hold each comparison once and ``1 - sigmoid`` gives the mirrored one (half the sigmoids of
the direct formula; sums over the second point of a pair become strided sums over a padded copy).
Blocks of at most ``BLOCK_ELEMENTS`` values (``c`` references x offsets x ``B``) are made one at a
time; :class:`SoftRanks` (ranks with an analytic backward) and :class:`SoftRankDisagreement` (the
loss, whose row gradients are computed in forward, from the block just made) keep only ``[m, B]``
tensors beyond a block: ``O(B^2)`` memory. The student's dissimilarity matrix is recomputed in
backward (activation checkpointing) once the batch reaches ``CHECKPOINT_MIN_BATCH`` points, so that
its ``[B, B]`` intermediates are not kept either.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from .base import DistillationLoss, register_loss
from .dissimilarity import Cosine, Dissimilarity, Euclidean, SquaredEuclidean, get_dissimilarity

PERCEPTION_COHERENCE_CITATION = """@article{nguyen2026perception,
  title   = {Perception Coherence},
  author  = {Nguyen, Kim Thang and Gamboa, Fabrice and Zhang, Qiang and Chhaibi, Reda and Gratton, Serge and Giaccone, Thierry},
  journal = {Transactions on Machine Learning Research},
  year    = {2026},
  note    = {arXiv:2505.06595}
}"""

ScaleName = Literal["std", "median", "none"]
ImplementationName = Literal["auto", "chunked", "reference"]

# Values of one block of folded comparisons [references, offsets, pad + B] in the chunked implementation:
# 2^24 float32 values are 64 MiB, small beside the O(B^2) tensors yet large enough to keep kernels busy.
BLOCK_ELEMENTS = 2**24
# From this many points on, the student's [B, B] dissimilarity intermediates (4 MiB each at 1024) are
# recomputed in backward rather than kept; below it the recomputation costs more time than it saves memory.
CHECKPOINT_MIN_BATCH = 1024
# |x| beyond which sigmoid(x) is taken as saturated: sigmoid(30) rounds to 1 in float32, sigmoid(-30) ~ 9e-14.
SIGMOID_SATURATION = 30.0


def scale_dissimilarities(dissimilarities: torch.Tensor, scale: ScaleName) -> torch.Tensor:
    """Divide a ``[B, B]`` dissimilarity matrix by the spread of its off-diagonal entries.

    ``std``: their standard deviation (ranks resolve distances in units of the batch's spread, which
    matters in high dimension where distances concentrate); ``median``: their median; ``none``.
    A zero spread (all pairs equally far apart) divides by 1e-12 rather than by zero: every comparison
    is then a tie, as before scaling.
    """
    if scale == "none":
        return dissimilarities
    size = dissimilarities.shape[0]
    # The off-diagonal entries as a view (no copy, no index tensors kept for backward): in the flattened
    # matrix, the diagonal entries are every (B + 1)-th element, starting at 0.
    off_diagonal = dissimilarities.reshape(-1)[1:].view(size - 1, size + 1)[:, :size]
    if scale == "std":
        spread = off_diagonal.std()
    elif scale == "median":
        spread = off_diagonal.median()
    else:
        raise ValueError(f"scale={scale!r} is not one of 'std', 'median', 'none'")
    return dissimilarities / spread.clamp_min(1e-12)


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
    student_ranks: torch.Tensor, teacher_ranks: torch.Tensor, reference_index: torch.Tensor
) -> torch.Tensor:
    """``1/(m (B-1)) * sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2`` over ``[m, B]`` rank matrices.

    Both sides' ``R_i(i)`` are 0 (every rank function here sets them so), so the ``j = i`` terms add
    nothing and need no mask; ``reference_index`` is only checked against that.
    """
    references, batch_size = student_ranks.shape
    if reference_index.shape != (references,):
        raise ValueError(f"reference_index has shape {tuple(reference_index.shape)}, expected ({references},)")
    return (student_ranks - teacher_ranks).pow(2).sum() / (references * (batch_size - 1))


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

    Same value and gradient as ``rank_disagreement(soft_ranks_chunked(rows, ...), teacher_ranks, ...)``,
    but the gradient ``dL/dR = 2 (R^S - R^T) / (m (B - 1))`` is known as soon as the ranks are, so the
    row gradients are computed in forward, from the block of sigmoids just made (still in cache), and
    no block outlives forward; backward only scales them.
    """

    @staticmethod
    def forward(
        ctx: Any,
        reference_rows: torch.Tensor,
        teacher_ranks: torch.Tensor,
        reference_index: torch.Tensor,
        temperature: float,
        reference_chunk_size: int | None,
    ) -> torch.Tensor:
        needs_grad = ctx.needs_input_grad[0]
        student_ranks, kept_block = _chunked_rank_sums(
            reference_rows, reference_index, temperature, False, reference_chunk_size, keep_single_block=needs_grad
        )
        teacher_ranks = teacher_ranks.to(student_ranks.dtype)
        loss = rank_disagreement(student_ranks, teacher_ranks, reference_index)
        ctx.row_gradients = None
        if needs_grad:
            num_references, batch_size = student_ranks.shape
            rank_grads = (student_ranks - teacher_ranks).mul_(2.0 / (num_references * (batch_size - 1)))
            ctx.row_gradients = soft_rank_row_gradients(
                reference_rows, reference_index, temperature, reference_chunk_size, rank_grads, kept_block
            )
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        return ctx.row_gradients * grad_loss, None, None, None, None


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


def hard_ranks_chunked(
    reference_rows: torch.Tensor, reference_index: torch.Tensor, reference_chunk_size: int | None = None
) -> torch.Tensor:
    """Same as :func:`hard_ranks` (no gradient), without the ``[m, B, B]`` tensor."""
    with torch.no_grad():
        return _chunked_rank_sums(reference_rows, reference_index, 1.0, True, reference_chunk_size)[0]


@register_loss
class PerceptionCoherenceLoss(DistillationLoss):
    """Perception coherence: match the teacher's soft ranking of in-batch dissimilarities.

    ``L = 1/(m (B-1)) sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2`` with soft ranks
    ``R_i(j) = 1/(B-2) sum_{k != i,j} sigmoid((d(i,j) - d(i,k)) / tau)`` (module docstring; Nguyen et
    al., TMLR 2026, arXiv 2505.06595, whose abstract defines coherence as agreeing on the order of
    dissimilarities; the soft-rank loss is our construction). Inputs: student ``[B, d_s]``,
    teacher ``[B, d_t]``; the widths may differ (only dissimilarities are compared), so no projector.

    Options:
      temperature: ``tau``, in units of the scaled dissimilarities (default 0.1).
      dissimilarity / teacher_dissimilarity: ``"euclidean"`` (default), ``"squared_euclidean"``,
          ``"cosine"`` or a :class:`Dissimilarity`; the teacher's defaults to the student's.
      scale: ``"std"`` (default), ``"median"`` or ``"none"``: how each side's dissimilarities are
          normalised before ranking.
      hard_teacher_ranks: rank the teacher's dissimilarities exactly instead of softly.
      num_references: use ``m`` reference points sampled without replacement per batch instead of all
          ``B`` (``O(m B^2)`` work).
      implementation: ``"auto"`` (default, = ``"chunked"``), ``"chunked"`` (:class:`SoftRankDisagreement`,
          ``O(B^2)`` memory) or ``"reference"`` (the direct formula, ``O(m B^2)`` memory; for checking).
      reference_chunk_size: references per block of the chunked implementation (default: as many as
          keep a block under ``BLOCK_ELEMENTS`` comparisons).

    Example::

        loss = PerceptionCoherenceLoss(student_dim=256, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 256], [B, 384] -> scalar
    """

    name = "perception_coherence"
    citation = PERCEPTION_COHERENCE_CITATION
    batch_level = True
    min_batch_size = 3

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        temperature: float = 0.1,
        dissimilarity: str | Dissimilarity = "euclidean",
        teacher_dissimilarity: str | Dissimilarity | None = None,
        scale: ScaleName = "std",
        hard_teacher_ranks: bool = False,
        num_references: int | None = None,
        implementation: ImplementationName = "auto",
        reference_chunk_size: int | None = None,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (try 0.1)")
        if scale not in ("std", "median", "none"):
            raise ValueError(f"scale={scale!r} must be one of 'std', 'median', 'none'")
        if num_references is not None and num_references < 1:
            raise ValueError(f"num_references={num_references} must be a positive integer or None (all points)")
        if implementation not in ("auto", "chunked", "reference"):
            raise ValueError(f"implementation={implementation!r} must be one of 'auto', 'chunked', 'reference'")
        if reference_chunk_size is not None and (not isinstance(reference_chunk_size, int) or reference_chunk_size < 1):
            raise ValueError(
                f"reference_chunk_size={reference_chunk_size!r} must be a positive integer or None (sized automatically)"
            )
        self.temperature = float(temperature)
        self.dissimilarity = get_dissimilarity(dissimilarity)
        self.teacher_dissimilarity = get_dissimilarity(teacher_dissimilarity or dissimilarity)
        self.scale = scale
        self.hard_teacher_ranks = hard_teacher_ranks
        self.num_references = num_references
        self.implementation: Literal["chunked", "reference"] = "chunked" if implementation == "auto" else implementation
        self.reference_chunk_size = reference_chunk_size

    def reference_index(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """The reference points of this batch: all of them, or ``num_references`` sampled ones."""
        if self.num_references is None or self.num_references >= batch_size:
            return torch.arange(batch_size, device=device)
        return torch.randperm(batch_size, device=device)[: self.num_references]

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch_size = self.check_pooled_batch(student, teacher)
        references = self.reference_index(batch_size, student.device)
        all_references = len(references) == batch_size  # then references == arange(B): rows need no gather
        # Ranks of near-equal distances are noise in bf16: everything below runs in float32 (or float64).
        with torch.autocast(device_type=student.device.type, enabled=False):
            with torch.no_grad():
                teacher_d = self.scaled_dissimilarities(teacher, self.teacher_dissimilarity)  # [B, B]
                teacher_ranks = self.teacher_ranks(teacher_d if all_references else teacher_d[references], references)
                del teacher_d
            if self.implementation == "reference":
                student_d = self.scaled_dissimilarities(student, self.dissimilarity)
                student_ranks = soft_ranks_reference(student_d[references], references, self.temperature)
            else:
                # Recomputing the [B, B] dissimilarities in backward (O(B^2 d), small beside the O(m B^2)
                # comparisons) means autograd keeps only the features and the scaled matrix, not the
                # dissimilarity's own intermediates.
                if student.requires_grad and torch.is_grad_enabled() and batch_size >= CHECKPOINT_MIN_BATCH:
                    student_d = checkpoint(self.scaled_dissimilarities, student, self.dissimilarity, use_reentrant=False)
                else:
                    student_d = self.scaled_dissimilarities(student, self.dissimilarity)
                return SoftRankDisagreement.apply(
                    student_d if all_references else student_d[references], teacher_ranks, references,
                    self.temperature, self.reference_chunk_size,
                )
            return rank_disagreement(student_ranks, teacher_ranks.to(student_ranks.dtype), references)

    def scaled_dissimilarities(self, features: torch.Tensor, dissimilarity: Dissimilarity) -> torch.Tensor:
        """``[B, d] -> [B, B]``: the dissimilarities of one side, divided by their spread (``scale``)."""
        return scale_dissimilarities(dissimilarity(self.rescaled(features, dissimilarity)), self.scale)

    def rescaled(self, features: torch.Tensor, dissimilarity: Dissimilarity) -> torch.Tensor:
        """Features divided by their (detached) largest entry where that changes no rank and no gradient.

        The built-in dissimilarities are homogeneous and ``scale`` divides their spread out, so the ranks
        do not depend on the features' scale; dividing first keeps squared distances of huge features
        (1e20) from overflowing float32. Custom dissimilarities and ``scale="none"`` are left alone.
        """
        if self.scale == "none" or type(dissimilarity) not in (Euclidean, SquaredEuclidean, Cosine):
            return features
        features = features if features.dtype in (torch.float32, torch.float64) else features.float()
        return features / features.detach().abs().amax().clamp_min(torch.finfo(features.dtype).tiny)

    def teacher_ranks(self, reference_rows: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """The teacher's ranks ``[m, B]`` (soft, or hard with ``hard_teacher_ranks``), without gradient."""
        if self.implementation == "reference":
            if self.hard_teacher_ranks:
                return hard_ranks(reference_rows, references)
            return soft_ranks_reference(reference_rows, references, self.temperature)
        if self.hard_teacher_ranks:
            return hard_ranks_chunked(reference_rows, references, self.reference_chunk_size)
        return _chunked_rank_sums(reference_rows, references, self.temperature, False, self.reference_chunk_size)[0]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, dissimilarity={self.dissimilarity}, "
            f"scale={self.scale!r}, hard_teacher_ranks={self.hard_teacher_ranks}, num_references={self.num_references}, "
            f"implementation={self.implementation!r}"
        )
