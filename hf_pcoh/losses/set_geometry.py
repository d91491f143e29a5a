"""Set-geometry losses' shared plumbing: the rows two feature sets are compared on, and their normalisation.

Procrustes, Gram and CKA (``procrustes.py``, ``cka.py``) compare the student's and the teacher's feature
*sets* as wholes, following the representational-similarity convention (Ding, Denain, Steinhardt,
"Grounding representation similarity", NeurIPS 2021):

* rows are the points of the batch (pooled features ``[B, d]``) or, for token features ``[B, T, d]``,
  the real (unmasked) tokens of all sequences, the same ones on both sides, sub-sampled uniformly to at
  most ``max_tokens`` rows so the ``N x N`` / ``d x d`` products stay bounded;
* each side is centred over its rows and scaled to unit Frobenius norm,
  ``S~ = (S - 1 mean(S)) / ||S - 1 mean(S)||_F``,

so every distance built on ``S~``, ``T~`` is invariant to translations and isotropic scaling of either
side. Sub-sampling and the row rule are our choices (the papers compare whole data sets).
"""

from __future__ import annotations

import torch

from .base import DistillationLoss
from .numerics import as_float, divide_by_largest

DEFAULT_MAX_TOKENS = 4096


def feature_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None,
    max_tokens: int,
    loss_name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``[N, d_s]``, ``[N, d_t]`` a set-level loss compares, in float32 (or float64).

    Pooled ``[B, d]`` features are used as they are; token features ``[B, T, d]`` give their unmasked
    tokens, the same ones on both sides, sub-sampled uniformly to ``max_tokens`` rows when there are more.
    """
    if student.dim() != teacher.dim() or student.shape[:-1] != teacher.shape[:-1] or student.dim() not in (2, 3):
        raise ValueError(
            f"{loss_name} expects [B, d_s]/[B, d_t] or token features [B, T, d_s]/[B, T, d_t] with the same B (and T), "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    student, teacher = as_float(student), as_float(teacher)
    if student.dim() == 2:
        return student, teacher
    if mask is None:
        student, teacher = student.flatten(0, 1), teacher.flatten(0, 1)
    else:
        keep = mask.bool().flatten()
        student, teacher = student.flatten(0, 1)[keep], teacher.flatten(0, 1)[keep]
    if len(student) > max_tokens:
        chosen = torch.randperm(len(student), device=student.device)[:max_tokens]
        student, teacher = student[chosen], teacher[chosen]
    return student, teacher


def centre_and_normalise(features: torch.Tensor) -> torch.Tensor:
    """``[N, d]`` -> centred over the rows, unit Frobenius norm (all-equal rows -> all zeros, no gradient)."""
    info = torch.finfo(features.dtype)
    features = divide_by_largest(features)  # scale-invariant result: the float32 overflow guard
    centred = features - features.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(centred)
    # Below round-off level the rows are equal: their "shape" would be rounding noise blown up to norm 1.
    spread = norm > 16 * info.eps * centred.numel() ** 0.5
    return torch.where(spread, centred / torch.where(spread, norm, 1.0), 0.0)


class SetGeometryLoss(DistillationLoss):
    """Base of the losses that compare the two sets of rows as wholes (Procrustes, Gram, CKA).

    ``L = distance(S, T)`` on the rows of :func:`feature_rows` (pooled points, or unmasked tokens
    sub-sampled to ``max_tokens``), computed in float32 (float64 when given) outside autocast, with at
    least ``min_batch_size`` rows; a subclass implements ``distance(student_rows, teacher_rows)``
    (``[N, d_s]``, ``[N, d_t]`` -> scalar) and sets its ``name``, ``citation`` and the declarations of
    :class:`DistillationLoss` (``invariances``, ``zero_at_agreement``): every distance of the normalised sets is
    invariant to translations and isotropic scaling, but only the distance knows whether it is to rotations.

    Options:
      max_tokens: the most token rows compared per batch (default 4096; pooled features are not sub-sampled).

    Example::

        class MeanGapLoss(SetGeometryLoss):
            name = "mean_gap"

            def distance(self, student, teacher):
                return (centre_and_normalise(student).mean() - centre_and_normalise(teacher).mean()).abs()
    """

    batch_level = True
    min_batch_size = 3
    accepts_tokens = True

    def __init__(self, student_dim: int, teacher_dim: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        super().__init__(student_dim, teacher_dim)
        if not isinstance(max_tokens, int) or max_tokens < 3:
            raise ValueError(f"max_tokens={max_tokens!r} must be an integer >= 3 (default {DEFAULT_MAX_TOKENS})")
        self.max_tokens = max_tokens

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.autocast(device_type=student.device.type, enabled=False):
            student_rows, teacher_rows = feature_rows(student, teacher.detach(), mask, self.max_tokens, self.name)
            if len(student_rows) < self.min_batch_size:
                raise ValueError(
                    f"{self.name} needs at least {self.min_batch_size} rows (points or tokens), got {len(student_rows)}: "
                    "raise per_device_train_batch_size"
                )
            return self.distance(student_rows, teacher_rows)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_tokens={self.max_tokens}"
