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
reference). ``chunked`` (the default) is :class:`SoftRanks`, a ``torch.autograd.Function`` that sums
the comparisons a block of references at a time and, in backward, recomputes them block by block
from ``sigmoid'(x) = s (1 - s)``, so only ``[m, B]`` tensors outlive a block: ``O(B^2)`` memory with
a bounded transient block of at most ``BLOCK_ELEMENTS`` comparisons (``c`` references x ``B^2``, rows
split further when one reference's ``B^2`` exceeds it). The student's dissimilarity matrix is
recomputed in backward (activation checkpointing) so that its intermediates are not kept either.
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

# Elements of one block of comparisons [references, rows, B] in the chunked implementation: 2^24
# float32 values are 64 MiB, small beside the O(B^2) tensors yet large enough to keep kernels busy.
BLOCK_ELEMENTS = 2**24


def scale_dissimilarities(dissimilarities: torch.Tensor, scale: ScaleName) -> torch.Tensor:
    """Divide a ``[B, B]`` dissimilarity matrix by the spread of its off-diagonal entries.

    ``std``: their standard deviation (ranks resolve distances in units of the batch's spread, which
    matters in high dimension where distances concentrate); ``median``: their median; ``none``.
    A zero spread (all points equal) leaves the matrix unchanged rather than dividing by zero.
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
    spread = torch.where(spread > 1e-12, spread, torch.ones_like(spread))
    return dissimilarities / spread


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
    """``1/(m (B-1)) * sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2`` over ``[m, B]`` rank matrices."""
    references, batch_size = student_ranks.shape
    points = torch.arange(batch_size, device=student_ranks.device)
    valid = points[None, :] != reference_index[:, None]
    squared = (student_ranks - teacher_ranks).pow(2) * valid
    return squared.sum() / (references * (batch_size - 1))


def comparison_blocks(
    num_references: int, batch_size: int, reference_chunk_size: int | None = None
) -> list[tuple[slice, slice]]:
    """Blocks ``(references, rows)`` of the ``[m, B, B]`` comparisons, each at most ``BLOCK_ELEMENTS``.

    ``reference_chunk_size`` references per block (default: as many as fit the budget); where even
    that many full ``[B, B]`` slices exceed the budget, the rows ``j`` are split as well.
    """
    per_reference = batch_size * batch_size
    references_per_block = reference_chunk_size or max(1, BLOCK_ELEMENTS // per_reference)
    references_per_block = min(references_per_block, num_references)
    if references_per_block * per_reference <= BLOCK_ELEMENTS:
        rows_per_block = batch_size
    else:
        rows_per_block = max(1, BLOCK_ELEMENTS // (references_per_block * batch_size))
    return [
        (slice(first_reference, first_reference + references_per_block), slice(first_row, first_row + rows_per_block))
        for first_reference in range(0, num_references, references_per_block)
        for first_row in range(0, batch_size, rows_per_block)
    ]


def _chunked_rank_sums(
    reference_rows: torch.Tensor,
    reference_index: torch.Tensor,
    temperature: float,
    hard: bool,
    reference_chunk_size: int | None,
) -> torch.Tensor:
    """Soft (or hard) ranks ``[m, B]`` without materialising the ``[m, B, B]`` comparisons.

    Each block of comparisons ``x = (d_ij - d_ik) / tau`` is one buffer turned in place into
    ``sigmoid(x)`` (or the hard step ``(1 + sign(x)) / 2``, ties 1/2). Summing over every ``k`` and
    subtracting the two excluded terms (``k = j``, always a tie worth 1/2, and ``k = i``) replaces the
    ``[m, B, B]`` mask. (``sigmoid_`` rather than the ``tanh`` form: it is several times faster on CPU.)
    """
    num_references, batch_size = reference_rows.shape
    ranks = torch.empty_like(reference_rows)  # [m, B]

    def step_(values: torch.Tensor) -> torch.Tensor:
        return values.sign_().add_(1.0).mul_(0.5) if hard else values.sigmoid_()

    for references, rows in comparison_blocks(num_references, batch_size, reference_chunk_size):
        scaled = reference_rows[references] / temperature  # [c, B]
        block = step_(scaled[:, rows, None] - scaled[:, None, :])  # [c, b, B]
        # d(i, j) - d(i, i): the excluded k = i term.
        to_reference = step_(scaled[:, rows] - scaled.gather(1, reference_index[references, None]))
        ranks[references, rows] = (block.sum(dim=2) - 0.5 - to_reference) / (batch_size - 2)
    return ranks.scatter_(1, reference_index[:, None], 0.0)


class SoftRanks(torch.autograd.Function):
    """``R_i(j)`` from ``[m, B]`` reference rows, in ``O(m B)`` saved memory (the analytic backward).

    With ``G = dL/dR`` (``G_ii = 0``) and ``W_ijk = sigmoid'((d_ij - d_ik) / tau)`` over the valid
    ``k``, ``dL/dd_ia = [G_ia sum_k W_iak - sum_j G_ij W_ija] / ((B - 2) tau)``, using ``W`` symmetric
    in ``(j, k)``. Backward recomputes ``W`` block by block as ``s (1 - s)`` with ``s = sigmoid(x)``.
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
        return _chunked_rank_sums(reference_rows, reference_index, temperature, False, reference_chunk_size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ranks: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        reference_rows, reference_index = ctx.saved_tensors
        temperature = ctx.temperature
        num_references, batch_size = reference_rows.shape
        # R_i(i) is the constant 0: its incoming gradient must not leak into the other entries.
        rank_grads = grad_ranks.to(reference_rows.dtype).scatter(1, reference_index[:, None], 0.0)  # [m, B]
        grads = torch.zeros_like(reference_rows)  # [m, B], in units of (B - 2) tau

        def sigmoid_derivative_(values: torch.Tensor) -> torch.Tensor:
            values.sigmoid_()
            return values.mul_(1.0 - values)

        for references, rows in comparison_blocks(num_references, batch_size, ctx.reference_chunk_size):
            scaled = reference_rows[references] / temperature  # [c, B]
            # The k = j entry (sigmoid'(0)) appears in both terms below and cancels.
            weights = sigmoid_derivative_(scaled[:, rows, None] - scaled[:, None, :])  # [c, b, B]
            # The k = i term is excluded from sum_k W_iak: subtract it.
            to_reference = scaled[:, rows] - scaled.gather(1, reference_index[references, None])
            row_sums = weights.sum(dim=2) - sigmoid_derivative_(to_reference)
            grads[references, rows] += rank_grads[references, rows] * row_sums
            grads[references] -= torch.bmm(rank_grads[references, None, rows], weights).squeeze(1)
        grads /= (batch_size - 2) * temperature
        return grads.scatter_(1, reference_index[:, None], 0.0), None, None, None


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
        return _chunked_rank_sums(reference_rows, reference_index, 1.0, True, reference_chunk_size)


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
      implementation: ``"auto"`` (default, = ``"chunked"``), ``"chunked"`` (:class:`SoftRanks`,
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
                if student.requires_grad and torch.is_grad_enabled():
                    student_d = checkpoint(self.scaled_dissimilarities, student, self.dissimilarity, use_reentrant=False)
                else:
                    student_d = self.scaled_dissimilarities(student, self.dissimilarity)
                student_ranks = soft_ranks_chunked(
                    student_d if all_references else student_d[references], references, self.temperature,
                    self.reference_chunk_size,
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
        largest = features.detach().abs().amax()
        return features / torch.where(largest > 0, largest, 1.0)

    def teacher_ranks(self, reference_rows: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """The teacher's ranks ``[m, B]`` (soft, or hard with ``hard_teacher_ranks``), without gradient."""
        if self.implementation == "reference":
            if self.hard_teacher_ranks:
                return hard_ranks(reference_rows, references)
            return soft_ranks_reference(reference_rows, references, self.temperature)
        if self.hard_teacher_ranks:
            return hard_ranks_chunked(reference_rows, references, self.reference_chunk_size)
        return _chunked_rank_sums(reference_rows, references, self.temperature, False, self.reference_chunk_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, dissimilarity={self.dissimilarity}, "
            f"scale={self.scale!r}, hard_teacher_ranks={self.hard_teacher_ranks}, num_references={self.num_references}, "
            f"implementation={self.implementation!r}"
        )
