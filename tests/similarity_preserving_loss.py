"""A loss written the way a user adds one: this file and nothing else (tests/test_new_loss_one_file.py).

Importing it registers ``similarity_preserving_test`` in ``hf_pcoh.losses.LOSSES``; the command line imports
it through ``HF_PCOH_LOSS_MODULES=tests/similarity_preserving_loss.py``. Only ``hf_pcoh.losses`` is imported,
so that the module can be imported while hf_pcoh itself is (the environment hook runs inside its import).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hf_pcoh.losses import DistillationLoss, register_loss
from hf_pcoh.losses.numerics import as_float, divide_by_largest


@register_loss
class SimilarityPreservingTestLoss(DistillationLoss):
    """Similarity-preserving KD: ``1/B^2 ||norm(S S^T) - norm(T T^T)||_F^2``, ``norm`` L2-normalising each row.

    Compares the batch's Gram matrices, so the widths may differ and no projector is needed.

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features (may differ from ``d_s``).
        weight_of_self_similarity: how much the diagonal of the Gram matrices counts (default 1.0: as the paper).

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features, ``B >= 2``. Returns a scalar.

    References:
        Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv 1907.09682).

    Example::

        loss = SimilarityPreservingTestLoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "similarity_preserving_test"
    citation = """@inproceedings{tung2019similarity,
  title     = {Similarity-Preserving Knowledge Distillation},
  author    = {Tung, Frederick and Mori, Greg},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision},
  year      = {2019},
  note      = {arXiv:1907.09682}
}"""
    batch_level = True
    min_batch_size = 2
    zero_at_agreement = True
    invariances = frozenset({"student_rotation", "teacher_rotation", "student_scale", "teacher_scale",
                             "batch_permutation"})

    def __init__(self, student_dim: int, teacher_dim: int, weight_of_self_similarity: float = 1.0) -> None:
        super().__init__(student_dim, teacher_dim)
        if not weight_of_self_similarity >= 0:
            raise ValueError(f"weight_of_self_similarity={weight_of_self_similarity} must be >= 0 (default 1.0)")
        self.weight_of_self_similarity = float(weight_of_self_similarity)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch_size = self.check_pooled_batch(student, teacher)
        with torch.autocast(device_type=student.device.type, enabled=False):
            student_gram = self.normalised_gram(as_float(student))  # [B, B]
            with torch.no_grad():
                teacher_gram = self.normalised_gram(as_float(teacher.detach()).to(student_gram.dtype))
            weights = torch.ones_like(student_gram).fill_diagonal_(self.weight_of_self_similarity)
            return (weights * (student_gram - teacher_gram).pow(2)).sum() / batch_size**2

    @staticmethod
    def normalised_gram(features: torch.Tensor) -> torch.Tensor:
        """``[B, d] -> [B, B]``: the Gram matrix with each row scaled to unit norm (a zero row stays 0)."""
        features = divide_by_largest(features)  # scale-invariant result: the float32 overflow guard
        return F.normalize(features @ features.T, dim=1, eps=1e-12)
