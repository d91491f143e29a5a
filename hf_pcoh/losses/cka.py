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

from .base import DistillationLoss, register_loss
from .procrustes import DEFAULT_MAX_TOKENS, centre_and_normalise, feature_rows

CKA_CITATION = """@inproceedings{kornblith2019similarity,
  title     = {Similarity of Neural Network Representations Revisited},
  author    = {Kornblith, Simon and Norouzi, Mohammad and Lee, Honglak and Hinton, Geoffrey},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning},
  pages     = {3519--3529},
  year      = {2019},
  note      = {arXiv:1905.00414}
}"""


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
class CKALoss(DistillationLoss):
    """Linear CKA loss ``1 - ||S^T T||_F^2 / (||S^T S||_F ||T^T T||_F)`` on row-centred features.

    Inputs: ``[B, d_s]`` / ``[B, d_t]`` (or token features ``[B, T, d]`` with ``mask``: the unmasked
    tokens are the rows, sub-sampled to ``max_tokens``). Kornblith et al., ICML 2019, Sec. 3, CKA with
    the linear kernel (arXiv 1905.00414). Value in ``[0, 1]``.

    Example::

        loss = CKALoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "cka"
    citation = CKA_CITATION
    batch_level = True
    min_batch_size = 3
    accepts_tokens = True

    def __init__(self, student_dim: int, teacher_dim: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        super().__init__(student_dim, teacher_dim)
        if not isinstance(max_tokens, int) or max_tokens < 3:
            raise ValueError(f"max_tokens={max_tokens!r} must be an integer >= 3 (default {DEFAULT_MAX_TOKENS})")
        self.max_tokens = max_tokens

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
                    f"cka needs at least {self.min_batch_size} rows (points or tokens), got {len(student_rows)}: "
                    "raise per_device_train_batch_size"
                )
            return 1.0 - linear_cka(student_rows, teacher_rows)
