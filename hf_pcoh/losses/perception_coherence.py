"""Perception-coherence loss: the student ranks the batch's dissimilarities as the teacher does.

Nguyen, Gamboa, Zhang, Chhaibi, Gratton, Giaccone, "Feature Representation Transferring to Lightweight Models
via Perception Coherence" (TMLR 2026, arXiv 2505.06595; BibTeX in :mod:`hf_pcoh.citations`).
Only the paper's abstract and introduction were readable when this was written and no reference code
is public, so the construction below is *ours*, following the abstract's notion: two encoders are
coherent when they order the dissimilarities between points the same way.

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

*Local* perception coherence (option ``locality = lambda``; also ours, not the paper's) weights each
rank error towards the reference's nearest teacher neighbours:

    w_ij = exp(-R^T_i(j) / lambda),
    L_lambda = sum_{i in refs} sum_{j != i} w_ij (R^S_i(j) - R^T_i(j))^2 / sum_{i in refs} sum_{j != i} w_ij.

The teacher has no gradient, so the weights are constants: ``dL/dR^S_i(j) = 2 w_ij (R^S_i(j) - R^T_i(j)) /
sum w``. ``lambda -> inf`` gives back the uniform ``L``; a small ``lambda`` (e.g. 0.1: the nearest
neighbour counts e^10 times the farthest) makes the student keep the teacher's local neighbourhoods
in order and care less about how far-apart points are ranked.

*Two-sided locality* (``locality_sides="both"``; ours, the candidate registered in docs/study.md) weighs each pair
by the nearer of its two *hard* ranks, so that an intruder (a point the student puts among the reference's nearest
while the teacher keeps it far) weighs as much as a true near neighbour:

    w_ij = max(exp(-H^T_i(j) / lambda), exp(-H^S_i(j) / lambda)) = exp(-min(H^T_i(j), H^S_i(j)) / lambda),

where ``H_i(j) = #{k != i, j : d(i, k) < d(i, j)} / (B-2)`` (ties 1/2; 0 = nearest) is the normalised hard rank of
each space, computed by sorting, with no gradient through the weights (the student's ranks are of its detached
dissimilarities); the loss is ``L_lambda`` above with these weights. Written with integer ranks
``R = 1 + (B-2) H`` (1 = nearest) and a decay per rank ``lambda'``, as the registration writes it,
``exp(-(R - 1) lambda') = exp(-H / lambda)`` for ``lambda = 1 / ((B-2) lambda')``: at ``B = 64`` the registered
``lambda' = 0.1`` and ``0.3`` are ``locality = 1/6.2 = 0.1613`` and ``1/18.6 = 0.05376``. (One-sided weights use
the loss's own teacher ranks, soft unless ``hard_teacher_ranks``; with hard teacher ranks, two-sided weights are
never below one-sided ones.)

*Top-k* (option ``top_k = k``; ours): only the pairs ``(i, j)`` with ``j`` among the ``k`` nearest points of ``i``
in the teacher **or** in the student (hard ranks, no gradient through the choice; points tied at the ``k``-th
place are all in) are scored, each still ranked against the whole row:

    S_i = {j != i : #{l != i, j : d^T(i, l) < d^T(i, j)} < k  or  #{l != i, j : d^S(i, l) < d^S(i, j)} < k},
    L_k = sum_{i in refs} sum_{j in S_i} (R^S_i(j) - R^T_i(j))^2 / sum_{i in refs} |S_i|,

the mean over the scored terms. With ``locality`` as well, the weights multiply: ``w_ij 1[j in S_i]``.
``k >= B - 1`` scores every pair: the plain ``L``.

Every variant is a ratio of sums over reference rows, so processes can split the rows of a global batch
(``forward(..., rows=...)``): a share is divided by the whole batch's sum of weights, which each process computes
from every row (hard ranks by sorting, ``O(B^2 log B)``; for one-sided locality, the teacher's ranks of every
row, without gradient), so that the shares add up to the one-process value exactly.

The soft ranks and the two implementations of ``L`` (``reference``: the direct ``O(m B^2)``-memory
formula; ``chunked``, the default: folded comparisons in blocks with an analytic backward, ``O(B^2)``
memory) live in ``soft_rank.py``. Both cost ``O(m B^2)`` comparisons (``O(B^3)`` with every point a
reference: seconds per step at ``B = 1024`` on a CPU). ``soft_rank = "sorted"`` (ours) swaps the sigmoid
for its clipped tangent at 0 (a ramp of the same slope, so ``tau`` means the same) and computes that
rank exactly by sorting each row: ``O(m B log B)`` time and ``O(m B)`` memory (``sorted_soft_rank.py``).
Here, the student's dissimilarity matrix is also recomputed in backward (activation checkpointing) once the
batch reaches ``CHECKPOINT_MIN_BATCH`` points, so that its ``[B, B]`` intermediates are not kept either.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from .base import INVARIANCES, DistillationLoss, register_loss
from .dissimilarity import Cosine, Dissimilarity, Euclidean, SquaredEuclidean, get_dissimilarity
from .numerics import as_float, divide_by_largest
from .sorted_soft_rank import (
    SortedRankDisagreement,
    fixed_sorted_soft_ranks,
    sorted_hard_ranks,
    top_k_selection,
)
from .soft_rank import (
    SoftRankDisagreement,
    fixed_soft_ranks_chunked,
    hard_ranks,
    hard_ranks_chunked,
    locality_weights,
    rank_disagreement,
    soft_ranks_reference,
)

# Kept importable from here (``from hf_pcoh.losses.perception_coherence import rank_disagreement``).
__all__ = ["PerceptionCoherenceLoss", "rank_disagreement", "scale_dissimilarities", "soft_ranks_reference"]

ScaleName = Literal["std", "median", "none"]
ImplementationName = Literal["auto", "chunked", "reference"]
SoftRankName = Literal["pairwise", "sorted"]
LocalitySides = Literal["teacher", "both"]

# From this many points on, the student's [B, B] dissimilarity intermediates (4 MiB each at 1024) are
# recomputed in backward rather than kept; below it the recomputation costs more time than it saves memory.
CHECKPOINT_MIN_BATCH = 1024


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


@register_loss
class PerceptionCoherenceLoss(DistillationLoss):
    """Perception coherence: match the teacher's soft ranking of in-batch dissimilarities.

    ``L = 1/(m (B-1)) sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2`` with soft ranks
    ``R_i(j) = 1/(B-2) sum_{k != i,j} sigmoid((d(i,j) - d(i,k)) / tau)`` (module docstring). Only
    dissimilarities are compared, so the widths may differ and no projector is needed. With the default
    options (euclidean, ``scale="std"``) the loss is invariant to rotations, translations and isotropic
    scaling of either side.

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features (may differ from ``d_s``).
        temperature: ``tau``, in units of the scaled dissimilarities (default 0.1).
        dissimilarity: ``"euclidean"`` (default), ``"squared_euclidean"``, ``"cosine"`` or a :class:`Dissimilarity`.
        teacher_dissimilarity: the teacher's dissimilarity (default: the student's).
        scale: ``"std"`` (default), ``"median"`` or ``"none"``: how each side's dissimilarities are
            normalised before ranking.
        hard_teacher_ranks: rank the teacher's dissimilarities exactly instead of softly.
        num_references: use ``m`` reference points sampled without replacement per batch instead of all
            ``B`` (``O(m B^2)`` work).
        implementation: ``"auto"`` (default, = ``"chunked"``), ``"chunked"`` (:class:`SoftRankDisagreement`,
            ``O(B^2)`` memory) or ``"reference"`` (the direct formula, ``O(m B^2)`` memory; for checking).
        reference_chunk_size: references per block of the chunked implementation (default: as many as
            keep a block under ``soft_rank.BLOCK_ELEMENTS`` comparisons).
        locality: ``lambda`` of local perception coherence (ours): rank errors weighted by
            ``w_ij = exp(-R^T_i(j) / lambda)``, ``L = sum w (R^S - R^T)^2 / sum w`` (module docstring);
            default None: uniform weights, the loss above.
        locality_sides: ``"teacher"`` (default): the weights above, from the teacher's ranks; ``"both"`` (ours):
            ``w_ij = max(exp(-H^T_i(j) / lambda), exp(-H^S_i(j) / lambda))`` with the hard ranks ``H`` of either
            space, no gradient through them; a decay ``lambda'`` per integer rank is ``locality = 1 / ((B-2)
            lambda')`` (module docstring). Needs ``locality``.
        top_k: score only each reference's ``k`` nearest points in the teacher or the student (hard ranks, ours),
            each still ranked against the whole row; the loss is the (weighted) mean over those terms. Default
            None: every pair.
        soft_rank: ``"pairwise"`` (default): the sigmoid rank above, ``O(m B^2)`` comparisons; ``"sorted"``:
            the ramp rank ``g(x) = clamp(1/2 + x/4, 0, 1)`` in place of the sigmoid, computed exactly by
            sorting each reference's row, ``O(m B log B)`` (``sorted_soft_rank.py``; makes ``B = 1024``
            cost about as much as the pairwise rank at ``B = 256``). ``implementation`` then does not apply.

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features, ``B >= 3``. Returns a scalar.

    References:
        Nguyen, Gamboa, Zhang, Chhaibi, Gratton, Giaccone, "Feature Representation Transferring to Lightweight
        Models via Perception Coherence", TMLR 2026 (arXiv 2505.06595), whose abstract defines coherence as
        agreeing on the order of dissimilarities; the soft-rank loss is our construction.

    Example::

        loss = PerceptionCoherenceLoss(student_dim=256, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 256], [B, 384] -> scalar
    """

    name = "perception_coherence"
    citation = """@article{nguyen2026perception,
  title   = {Feature Representation Transferring to Lightweight Models via Perception Coherence},
  author  = {Nguyen, Hai-Vy and Gamboa, Fabrice and Zhang, Sixin and Chhaibi, Reda and Gratton, Serge and Giaccone, Thierry},
  journal = {Transactions on Machine Learning Research},
  year    = {2026},
  note    = {arXiv:2505.06595}
}"""
    batch_level = True
    min_batch_size = 3
    zero_at_agreement = True
    invariances = frozenset(INVARIANCES)  # rotation, translation, scale of either side; the batch's order

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
        locality: float | None = None,
        soft_rank: SoftRankName = "pairwise",
        locality_sides: LocalitySides = "teacher",
        top_k: int | None = None,
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
        if locality is not None and not locality > 0:
            raise ValueError(
                f"locality={locality} must be > 0 (try 0.1: the nearest teacher neighbour then weighs e^10 times the "
                "farthest) or None (uniform weights)"
            )
        if locality_sides not in ("teacher", "both"):
            raise ValueError(f"locality_sides={locality_sides!r} must be 'teacher' (weights from the teacher's ranks) "
                             "or 'both' (the nearer of the teacher's and the student's hard ranks)")
        if locality_sides == "both" and locality is None:
            raise ValueError("locality_sides='both' weighs pairs by locality, which is None: set locality (e.g. "
                             "0.16: 1 / ((B-2) lambda') for a decay lambda' = 0.1 per rank at B = 64) or drop "
                             "locality_sides")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be a positive integer (e.g. 10: each reference's 10 nearest "
                             "points in either space) or None (every pair)")
        if soft_rank not in ("pairwise", "sorted"):
            raise ValueError(f"soft_rank={soft_rank!r} must be 'pairwise' (sigmoid, O(B^3) per batch) or 'sorted' "
                             "(ramp kernel by sorting, O(B^2 log B))")
        if soft_rank == "sorted" and implementation != "auto":
            raise ValueError(f"implementation={implementation!r} chooses how the pairwise soft rank is computed; "
                             "soft_rank='sorted' has one implementation: drop implementation")
        self.soft_rank = soft_rank
        self.temperature = float(temperature)
        self.locality = None if locality is None else float(locality)
        self.locality_sides = locality_sides
        self.top_k = top_k
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

    def scores_row_shares(self) -> bool:
        """All rows are references: the loss is a (weighted) mean over reference rows, so processes can each score
        their own rows (``forward(..., rows=...)``) against the gathered batch, O(B^3 / W) each. Weights (locality,
        top-k) are normalised over every row: each share divides by the whole batch's sum of weights, which every
        process computes (module docstring). Sampled references keep the whole computation."""
        return self.num_references is None

    def weighs_pairs(self) -> bool:
        """Whether the rank errors carry weights (``locality`` or ``top_k``) rather than counting alike."""
        return self.locality is not None or self.top_k is not None

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``rows``: score only these reference rows (global indices ``[m]``) against the whole batch; the value is
        their mean, with weights divided by the whole batch's sum of them times ``m / B`` (:meth:`scores_row_shares`),
        so that ``sum over shares (m / B) value = the loss of the batch``. Default: every row (or
        ``num_references`` sampled ones)."""
        batch_size = self.check_pooled_batch(student, teacher)
        if rows is not None and not self.scores_row_shares():
            raise ValueError("perception_coherence scores a share of its rows only with every row a reference "
                             "(num_references unset)")
        references = self.reference_index(batch_size, student.device) if rows is None else rows.to(student.device)
        all_references = len(references) == batch_size  # then references == arange(B): rows need no gather
        # Ranks of near-equal distances are noise in bf16: everything below runs in float32 (or float64).
        with torch.autocast(device_type=student.device.type, enabled=False):
            with torch.no_grad():
                teacher_d = self.scaled_dissimilarities(teacher, self.teacher_dissimilarity)  # [B, B]
                teacher_ranks = self.teacher_ranks(teacher_d if all_references else teacher_d[references], references)
            if self.implementation != "reference" and student.requires_grad and torch.is_grad_enabled() \
                    and batch_size >= CHECKPOINT_MIN_BATCH:
                # Recomputing the [B, B] dissimilarities in backward (O(B^2 d), small beside the O(m B^2)
                # comparisons) means autograd keeps only the features and the scaled matrix, not the
                # dissimilarity's own intermediates.
                student_d = checkpoint(self.scaled_dissimilarities, student, self.dissimilarity, use_reentrant=False)
            else:
                student_d = self.scaled_dissimilarities(student, self.dissimilarity)  # [B, B]
            weights, normaliser = None, None
            if self.weighs_pairs():
                with torch.no_grad():
                    weights, normaliser = self.pair_weights(
                        teacher_d, student_d.detach(), teacher_ranks, references, shared=rows is not None)
            del teacher_d
            if self.implementation == "reference":
                student_ranks = soft_ranks_reference(student_d[references], references, self.temperature)
                if weights is not None:
                    weights = weights.to(student_ranks.dtype)
                return rank_disagreement(
                    student_ranks, teacher_ranks.to(student_ranks.dtype), references, weights, normaliser)
            student_rows = student_d if all_references else student_d[references]
            if self.soft_rank == "sorted":
                return SortedRankDisagreement.apply(
                    student_rows, teacher_ranks, references, self.temperature, weights, normaliser)
            return SoftRankDisagreement.apply(
                student_rows, teacher_ranks, references, self.temperature, self.reference_chunk_size, weights,
                normaliser,
            )

    def pair_weights(
        self,
        teacher_d: torch.Tensor,
        student_d: torch.Tensor,
        teacher_ranks: torch.Tensor,
        references: torch.Tensor,
        shared: bool,
    ) -> tuple[torch.Tensor, float | None]:
        """The constant weights ``[m, B]`` of the scored rows (``locality``, ``locality_sides``, ``top_k``;
        ``w_ii = 0``) and the divisor of their weighted sum: None (the sum of these weights) or, when ``shared`` (this call
        scores a share of the rows), the whole batch's sum of weights times ``m / B``.

        ``teacher_d``, ``student_d``: both sides' scaled ``[B, B]`` dissimilarities (no gradient); ``teacher_ranks``:
        the loss's teacher ranks of the ``references`` rows."""
        batch_size = teacher_d.shape[0]
        # The rows whose weights are needed: the scored ones, or every row when the divisor sums the whole batch.
        weight_rows = torch.arange(batch_size, device=references.device) if shared else references

        def rows_of(matrix: torch.Tensor) -> torch.Tensor:
            return matrix if len(weight_rows) == batch_size else matrix[weight_rows]

        def loss_teacher_ranks() -> torch.Tensor:  # the loss's own teacher ranks, of the weight rows
            return teacher_ranks if len(weight_rows) == len(references) else self.teacher_ranks(teacher_d, weight_rows)

        if self.locality is None:
            weights = torch.ones(len(weight_rows), batch_size, dtype=teacher_ranks.dtype, device=teacher_ranks.device)
            weights.scatter_(1, weight_rows[:, None], 0.0)
        elif self.locality_sides == "teacher":
            weights = locality_weights(loss_teacher_ranks(), weight_rows, self.locality)
        else:
            teacher_hard = (loss_teacher_ranks() if self.hard_teacher_ranks
                            else sorted_hard_ranks(rows_of(teacher_d), weight_rows))
            student_hard = sorted_hard_ranks(rows_of(student_d), weight_rows).to(teacher_hard.dtype)
            weights = locality_weights(torch.minimum(teacher_hard, student_hard), weight_rows, self.locality)
        if self.top_k is not None:
            selection = top_k_selection(rows_of(teacher_d), rows_of(student_d), weight_rows, self.top_k)
            weights = weights * selection.to(weights.dtype)
        if not shared:
            return weights, None
        normaliser = float(weights.sum()) * len(references) / batch_size
        return weights[references], normaliser

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
        return divide_by_largest(as_float(features))

    def teacher_ranks(self, reference_rows: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """The teacher's ranks ``[m, B]`` (soft, or hard with ``hard_teacher_ranks``), without gradient."""
        if self.soft_rank == "sorted":
            if self.hard_teacher_ranks:
                return sorted_hard_ranks(reference_rows, references)
            return fixed_sorted_soft_ranks(reference_rows, references, self.temperature)
        if self.implementation == "reference":
            if self.hard_teacher_ranks:
                return hard_ranks(reference_rows, references)
            return soft_ranks_reference(reference_rows, references, self.temperature)
        if self.hard_teacher_ranks:
            return hard_ranks_chunked(reference_rows, references, self.reference_chunk_size)
        return fixed_soft_ranks_chunked(reference_rows, references, self.temperature, self.reference_chunk_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, dissimilarity={self.dissimilarity}, "
            f"scale={self.scale!r}, hard_teacher_ranks={self.hard_teacher_ranks}, num_references={self.num_references}, "
            f"implementation={self.implementation!r}, locality={self.locality}, soft_rank={self.soft_rank!r}, "
            f"locality_sides={self.locality_sides!r}, top_k={self.top_k}"
        )
