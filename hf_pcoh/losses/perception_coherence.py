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
"""

from __future__ import annotations

from typing import Literal

import torch

from .base import DistillationLoss, register_loss
from .dissimilarity import Dissimilarity, get_dissimilarity

PERCEPTION_COHERENCE_CITATION = """@article{nguyen2026perception,
  title   = {Perception Coherence},
  author  = {Nguyen, Kim Thang and Gamboa, Fabrice and Zhang, Qiang and Chhaibi, Reda and Gratton, Serge and Giaccone, Thierry},
  journal = {Transactions on Machine Learning Research},
  year    = {2026},
  note    = {arXiv:2505.06595}
}"""

ScaleName = Literal["std", "median", "none"]


def scale_dissimilarities(dissimilarities: torch.Tensor, scale: ScaleName) -> torch.Tensor:
    """Divide a ``[B, B]`` dissimilarity matrix by the spread of its off-diagonal entries.

    ``std``: their standard deviation (ranks resolve distances in units of the batch's spread, which
    matters in high dimension where distances concentrate); ``median``: their median; ``none``.
    A zero spread (all points equal) leaves the matrix unchanged rather than dividing by zero.
    """
    if scale == "none":
        return dissimilarities
    size = dissimilarities.shape[0]
    off_diagonal = dissimilarities[~torch.eye(size, dtype=torch.bool, device=dissimilarities.device)]
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


@register_loss
class PerceptionCoherenceLoss(DistillationLoss):
    """Perception coherence: match the teacher's soft ranking of in-batch dissimilarities.

    ``L = 1/(m (B-1)) sum_i sum_{j != i} (R^S_i(j) - R^T_i(j))^2`` with soft ranks
    ``R_i(j) = 1/(B-2) sum_{k != i,j} sigmoid((d(i,j) - d(i,k)) / tau)`` (module docstring; Nguyen et
    al., TMLR 2026, arXiv 2505.06595; the soft-rank construction is ours). Inputs: student ``[B, d_s]``,
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
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (try 0.1)")
        if scale not in ("std", "median", "none"):
            raise ValueError(f"scale={scale!r} must be one of 'std', 'median', 'none'")
        if num_references is not None and num_references < 1:
            raise ValueError(f"num_references={num_references} must be a positive integer or None (all points)")
        self.temperature = float(temperature)
        self.dissimilarity = get_dissimilarity(dissimilarity)
        self.teacher_dissimilarity = get_dissimilarity(teacher_dissimilarity or dissimilarity)
        self.scale = scale
        self.hard_teacher_ranks = hard_teacher_ranks
        self.num_references = num_references

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
        if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
            raise ValueError(
                "perception_coherence expects pooled features [B, d_s] and [B, d_t] with the same B, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}; use a pooling other than 'none'"
            )
        batch_size = student.shape[0]
        if batch_size < self.min_batch_size:
            raise ValueError(
                f"perception_coherence needs at least {self.min_batch_size} points in the (global) batch, got "
                f"{batch_size}: raise per_device_train_batch_size"
            )
        references = self.reference_index(batch_size, student.device)
        student_d = scale_dissimilarities(self.dissimilarity(student), self.scale)
        with torch.no_grad():
            teacher_d = scale_dissimilarities(self.teacher_dissimilarity(teacher), self.scale)
            if self.hard_teacher_ranks:
                teacher_ranks = hard_ranks(teacher_d[references], references)
            else:
                teacher_ranks = soft_ranks_reference(teacher_d[references], references, self.temperature)
        student_ranks = soft_ranks_reference(student_d[references], references, self.temperature)
        return rank_disagreement(student_ranks, teacher_ranks.to(student_ranks.dtype), references)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, dissimilarity={self.dissimilarity}, "
            f"scale={self.scale!r}, hard_teacher_ranks={self.hard_teacher_ranks}, num_references={self.num_references}"
        )
