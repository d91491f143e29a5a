"""Linear CKA loss: ``1 - CKA(S, T)``.

Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited" (ICML 2019,
arXiv 1905.00414), Sec. 3: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)); with linear kernels and
features centred over the rows it reduces to (their Table 1, "Linear CKA")

    CKA(S, T) = ||S^T T||_F^2 / (||S^T S||_F ||T^T T||_F)          in [0, 1].

It is invariant to orthogonal transforms and isotropic scaling of either side, and the widths may
differ. It weighs directions by their squared variance, which is why it can be ~1 while the fine
geometry differs (see ``procrustes.py``).
"""

from __future__ import annotations

import torch

from .base import INVARIANCES, register_loss
from .set_geometry import SetGeometryLoss, centre_and_normalise


def linear_cka(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Linear CKA of ``[N, d_s]`` and ``[N, d_t]`` rows (centred here); 0 when either side is constant."""
    student, teacher = centre_and_normalise(student), centre_and_normalise(teacher)
    rows = student.shape[0]
    if rows < (student.shape[1] + teacher.shape[1]) // 2:
        # The same quantities through the [N, N] Gram matrices: <K_S, K_T> / (||K_S|| ||K_T||).
        student_gram, teacher_gram = student @ student.T, teacher @ teacher.T
        cross = (student_gram * teacher_gram).sum()
        student_norm, teacher_norm = student_gram.pow(2).sum().sqrt(), teacher_gram.pow(2).sum().sqrt()
    else:
        cross = (student.T @ teacher).pow(2).sum()
        student_norm = (student.T @ student).pow(2).sum().sqrt()
        teacher_norm = (teacher.T @ teacher).pow(2).sum().sqrt()
    return cross / (student_norm * teacher_norm).clamp_min(1e-12)


@register_loss
class CKALoss(SetGeometryLoss):
    """Linear CKA loss ``1 - ||S^T T||_F^2 / (||S^T S||_F ||T^T T||_F)`` on row-centred features.

    Value in ``[0, 1]``; 0 when the two sets agree up to rotation, translation and isotropic scale of
    either side. It weighs directions by their squared variance, so it can be ~0 while the fine geometry
    differs (see :class:`ProcrustesLoss`).

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features (may differ from ``d_s``).
        max_tokens: the most token rows compared per batch (default 4096; pooled features are not sub-sampled).

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features, ``B >= 3``; or token features
        ``[B, T, d_s]`` / ``[B, T, d_t]`` with ``mask`` ``[B, T]``: the unmasked tokens are the rows,
        sub-sampled to ``max_tokens``. Returns a scalar.

    References:
        Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited", ICML 2019
        (arXiv 1905.00414), Sec. 3: CKA with the linear kernel.

    Example::

        loss = CKALoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "cka"
    citation = """@inproceedings{kornblith2019similarity,
  title     = {Similarity of Neural Network Representations Revisited},
  author    = {Kornblith, Simon and Norouzi, Mohammad and Lee, Honglak and Hinton, Geoffrey},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning},
  pages     = {3519--3529},
  year      = {2019},
  note      = {arXiv:1905.00414}
}"""
    zero_at_agreement = True
    invariances = frozenset(INVARIANCES)  # rotation, translation, scale of either side; the batch's order

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return 1.0 - linear_cka(student, teacher)
