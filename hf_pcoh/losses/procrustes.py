"""Procrustes and Gram losses: match the geometry of the feature sets up to rotation.

Bhattarai, Amjad, Zhylko, Alhanai, "Knowledge distillation through geometry-aware representational
alignment" (arXiv 2509.25253): projected MSE and CKA can be (near) zero while the student's feature
geometry differs from the teacher's; the squared Procrustes distance and the distance between feature
Gram matrices, both common measures of representational alignment, do not have that blind spot.

Choices that are ours (the paper's code was not reachable), following the representational-similarity
convention it builds on (Ding, Denain, Steinhardt, "Grounding representation similarity", NeurIPS 2021):

* rows and normalisation as in ``set_geometry.py``: the batch's points (or its real tokens, sub-sampled to
  ``max_tokens``), each side centred over its rows and scaled to unit Frobenius norm, ``S~``, ``T~``;
* squared Procrustes distance ``min_{Q: Q^T Q = I} ||S~ Q - T~||_F^2 = 2 - 2 ||S~^T T~||_*`` (nuclear
  norm; no explicit ``Q``; for ``d_s != d_t``, ``Q`` has orthonormal columns), in ``[0, 2]``;
* Gram loss ``||S~ S~^T - T~ T~^T||_F^2``, in ``[0, 2]``.

Both are invariant to orthogonal transforms, translations and isotropic scaling of either side.
"""

from __future__ import annotations

import torch

from ..citations import PROCRUSTES_GRAM as PROCRUSTES_CITATION
from .base import register_loss
from .set_geometry import SetGeometryLoss, centre_and_normalise


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
    citation = PROCRUSTES_CITATION

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
    citation = PROCRUSTES_CITATION

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return gram_distance(student, teacher)
