"""Procrustes and Gram losses: match the geometry of the feature sets up to rotation.

Bhattarai, Amjad, Zhylko, Alhanai, "Knowledge distillation through geometry-aware representational
alignment" (arXiv 2509.25253): projected MSE and CKA can be (near) zero while the student's feature
geometry differs from the teacher's; the squared Procrustes distance and the distance between feature
Gram matrices, both common measures of representational alignment, do not have that blind spot.

Choices that are ours (the paper's code was not reachable), following the representational-similarity
convention it builds on (Ding, Denain, Steinhardt, "Grounding representation similarity", NeurIPS 2021):

* rows are the points of the batch (pooled features) or, for token features ``[B, T, d]``, the real
  (unmasked) tokens of all sequences, sub-sampled uniformly to at most ``max_tokens`` rows so the
  ``N x N`` / ``d x d`` products stay bounded;
* each side is centred over its rows and scaled to unit Frobenius norm: ``S~ = (S - 1 mean(S)) / ||.||_F``;
* squared Procrustes distance ``min_{Q: Q^T Q = I} ||S~ Q - T~||_F^2 = 2 - 2 ||S~^T T~||_*`` (nuclear
  norm; no explicit ``Q``; for ``d_s != d_t``, ``Q`` has orthonormal columns), in ``[0, 2]``;
* Gram loss ``||S~ S~^T - T~ T~^T||_F^2``, in ``[0, 2]``.

Both are invariant to orthogonal transforms, translations and isotropic scaling of either side.
"""

from __future__ import annotations

import torch

from .base import DistillationLoss, register_loss

PROCRUSTES_CITATION = """@article{bhattarai2025geometry,
  title   = {Knowledge distillation through geometry-aware representational alignment},
  author  = {Bhattarai, Prajjwal and Amjad, Mohammad and Zhylko, Dmytro and Alhanai, Tuka},
  journal = {arXiv preprint arXiv:2509.25253},
  year    = {2025}
}"""

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


def as_float(features: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given: set geometry is compared in full precision, also under autocast."""
    return features if features.dtype in (torch.float32, torch.float64) else features.float()


def centre_and_normalise(features: torch.Tensor) -> torch.Tensor:
    """``[N, d]`` -> centred over the rows, unit Frobenius norm (all-equal rows -> all zeros, no gradient)."""
    # The result is scale-invariant, so dividing by the (detached) largest entry first changes neither the
    # value nor the gradient, and keeps squares of huge features (1e20) from overflowing float32.
    info = torch.finfo(features.dtype)
    largest = features.detach().abs().amax()
    features = features / torch.where(largest > 0, largest, 1.0)
    centred = features - features.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(centred)
    # Below round-off level the rows are equal: their "shape" would be rounding noise blown up to norm 1.
    spread = norm > 16 * info.eps * centred.numel() ** 0.5
    return torch.where(spread, centred / torch.where(spread, norm, 1.0), 0.0)


def procrustes_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``2 - 2 ||S~^T T~||_*`` for ``[N, d_s]``, ``[N, d_t]`` rows (normalised here)."""
    student, teacher = centre_and_normalise(student), centre_and_normalise(teacher)
    # svdvals has a well-defined gradient (U V^T) even for repeated or zero singular values.
    return 2.0 - 2.0 * torch.linalg.svdvals(student.T @ teacher).sum()


def gram_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``||S~ S~^T - T~ T~^T||_F^2`` for ``[N, d_s]``, ``[N, d_t]`` rows (normalised here)."""
    student, teacher = centre_and_normalise(student), centre_and_normalise(teacher)
    rows = student.shape[0]
    if rows <= student.shape[1] + teacher.shape[1]:
        return (student @ student.T - teacher @ teacher.T).pow(2).sum()  # [N, N]
    # Same value through the widths: ||S^T S||^2 + ||T^T T||^2 - 2 ||S^T T||^2, O(N d^2) instead of O(N^2 d).
    squared = (
        (student.T @ student).pow(2).sum() + (teacher.T @ teacher).pow(2).sum() - 2.0 * (student.T @ teacher).pow(2).sum()
    )
    return squared.clamp_min(0.0)


class SetGeometryLoss(DistillationLoss):
    """Shared plumbing of the losses that compare the two sets of rows as wholes (Procrustes, Gram, CKA):
    rows from pooled or token features, float32 outside autocast, a minimum row count; a subclass
    implements ``distance(student_rows, teacher_rows)``."""

    citation = PROCRUSTES_CITATION
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


@register_loss
class ProcrustesLoss(SetGeometryLoss):
    """Squared Procrustes distance ``2 - 2 ||S~^T T~||_*`` between the centred, unit-norm feature sets.

    ``S~``, ``T~``: the ``[N, d_s]`` / ``[N, d_t]`` rows (pooled points, or unmasked tokens sub-sampled to
    ``max_tokens``) centred over the rows and scaled to unit Frobenius norm; ``||.||_*`` is the nuclear
    norm, so ``min_Q ||S~ Q - T~||_F^2`` over ``Q`` with orthonormal columns needs no explicit ``Q`` and the
    widths may differ. Value in ``[0, 2]``; 0 iff the sets agree up to rotation, translation and scale.
    Bhattarai et al., arXiv 2509.25253 (its Procrustes distillation loss; normalisation of Ding et al. 2021).

    Example::

        loss = ProcrustesLoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "procrustes"

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return procrustes_distance(student, teacher)


@register_loss
class GramLoss(SetGeometryLoss):
    """Gram-matrix distance ``||S~ S~^T - T~ T~^T||_F^2`` between the centred, unit-norm feature sets.

    Same rows and normalisation as :class:`ProcrustesLoss`; compares all inner products between points,
    so it is invariant to orthogonal transforms of either side and the widths may differ. Value in ``[0, 2]``.
    Bhattarai et al., arXiv 2509.25253 (its feature-Gram-matrix distillation loss).

    Example::

        loss = GramLoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "gram"

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return gram_distance(student, teacher)
