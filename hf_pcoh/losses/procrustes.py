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

from .base import INVARIANCES, register_loss
from .set_geometry import SetGeometryLoss, centre_and_normalise

# Procrustes distance and the Frobenius norm of the feature Gram matrix, both from this paper.
BHATTARAI_2025 = """@article{bhattarai2025geometry,
  title   = {Knowledge distillation through geometry-aware representational alignment},
  author  = {Bhattarai, Prajjwal and Amjad, Mohammad and Zhylko, Dmytro and Alhanai, Tuka},
  journal = {arXiv preprint arXiv:2509.25253},
  year    = {2025}
}"""


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

    ``S~``, ``T~``: the ``[N, d_s]`` / ``[N, d_t]`` rows centred over the rows and scaled to unit Frobenius
    norm; ``||.||_*`` is the nuclear norm, so ``min_Q ||S~ Q - T~||_F^2`` over ``Q`` with orthonormal columns
    needs no explicit ``Q`` and the widths may differ. Value in ``[0, 2]``; 0 iff the sets agree up to
    rotation, translation and scale.

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features (may differ from ``d_s``).
        max_tokens: the most token rows compared per batch (default 4096; pooled features are not sub-sampled).

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features, ``B >= 3``; or token features
        ``[B, T, d_s]`` / ``[B, T, d_t]`` with ``mask`` ``[B, T]``: the unmasked tokens are the rows,
        sub-sampled to ``max_tokens``. Returns a scalar.

    References:
        Bhattarai, Amjad, Zhylko, Alhanai, "Knowledge distillation through geometry-aware representational
        alignment", arXiv 2509.25253 (its Procrustes distillation loss); the normalisation of Ding, Denain,
        Steinhardt, "Grounding representation similarity", NeurIPS 2021.

    Example::

        loss = ProcrustesLoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "procrustes"
    citation = BHATTARAI_2025
    zero_at_agreement = True
    invariances = frozenset(INVARIANCES)  # rotation, translation, scale of either side; the batch's order

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return procrustes_distance(student, teacher)


@register_loss
class GramLoss(SetGeometryLoss):
    """Gram-matrix distance ``||S~ S~^T - T~ T~^T||_F^2`` between the centred, unit-norm feature sets.

    Same rows and normalisation as :class:`ProcrustesLoss`; compares all inner products between points,
    so it is invariant to orthogonal transforms of either side and the widths may differ. Value in ``[0, 2]``.

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features (may differ from ``d_s``).
        max_tokens: the most token rows compared per batch (default 4096; pooled features are not sub-sampled).

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features, ``B >= 3``; or token features
        ``[B, T, d_s]`` / ``[B, T, d_t]`` with ``mask`` ``[B, T]``: the unmasked tokens are the rows,
        sub-sampled to ``max_tokens``. Returns a scalar.

    References:
        Bhattarai, Amjad, Zhylko, Alhanai, "Knowledge distillation through geometry-aware representational
        alignment", arXiv 2509.25253 (its feature-Gram-matrix distillation loss).

    Example::

        loss = GramLoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "gram"
    citation = BHATTARAI_2025
    zero_at_agreement = True
    invariances = frozenset(INVARIANCES)  # rotation, translation, scale of either side; the batch's order

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return gram_distance(student, teacher)
