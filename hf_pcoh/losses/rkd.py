"""Relational knowledge distillation, distance-wise loss (RKD-D).

Park, Kim, Lu, Cho, "Relational Knowledge Distillation" (CVPR 2019, arXiv 1904.05068), Eqs. (3)-(5):
the pairwise distances of each side are divided by their mean over the batch,

    psi(x_i, x_j) = ||x_i - x_j|| / mu,    mu = 1/|P| sum_{(i, j) in P} ||x_i - x_j||,

and the student's are pulled to the teacher's with the Huber loss ``l_delta`` (smooth L1, ``delta = 1``):

    L = 1/|P| sum_{(i, j) in P} l_delta(psi(s_i, s_j), psi(t_i, t_j)),    P = {(i, j): i != j}.

The paper sums over all pairs of the batch (the ``i = j`` terms are 0 on both sides); averaging over
the ``B (B - 1)`` ordered pairs instead, so that the value does not grow with the batch, is ours.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import INVARIANCES, DistillationLoss, register_loss
from .dissimilarity import Euclidean
from .numerics import as_float, divide_by_largest


def normalised_distances(features: torch.Tensor) -> torch.Tensor:
    """``[B, d] -> [B, B]`` euclidean distances divided by their off-diagonal mean (0 if all points agree)."""
    distances = Euclidean()(divide_by_largest(features))  # distances / their mean: scale-invariant
    size = distances.shape[0]
    mean_distance = distances.sum() / (size * (size - 1))
    return distances / mean_distance.clamp_min(1e-12)


@register_loss
class RKDDistanceLoss(DistillationLoss):
    """RKD distance loss: Huber loss between the mean-normalised pairwise distances of student and teacher.

    ``L = mean_{i != j} huber(||s_i - s_j|| / mu_S, ||t_i - t_j|| / mu_T)``, ``mu`` the mean distance of
    the batch on each side; the widths may differ (only distances are compared).

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features (may differ from ``d_s``).
        delta: the Huber threshold (default 1.0, the paper's smooth L1).

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features, ``B >= 3``. Returns a scalar.

    References:
        Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv 1904.05068), Eqs. 3-5.

    Example::

        loss = RKDDistanceLoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)  # [B, 128], [B, 384] -> scalar
    """

    name = "rkd_distance"
    citation = """@inproceedings{park2019relational,
  title     = {Relational Knowledge Distillation},
  author    = {Park, Wonpyo and Kim, Dongju and Lu, Yan and Cho, Minsu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  pages     = {3967--3976},
  year      = {2019},
  note      = {arXiv:1904.05068}
}"""
    batch_level = True
    min_batch_size = 3
    zero_at_agreement = True
    invariances = frozenset(INVARIANCES)  # rotation, translation, scale of either side; the batch's order

    def __init__(self, student_dim: int, teacher_dim: int, delta: float = 1.0) -> None:
        super().__init__(student_dim, teacher_dim)
        if not delta > 0:
            raise ValueError(f"delta={delta} must be > 0 (the Huber threshold; the paper uses 1.0)")
        self.delta = float(delta)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch_size = self.check_pooled_batch(student, teacher)
        with torch.autocast(device_type=student.device.type, enabled=False):
            student_distances = normalised_distances(as_float(student))
            with torch.no_grad():
                # float32 even for a float64 teacher (as before numerics.py; kept so values do not move).
                teacher_distances = normalised_distances(teacher.float()).to(student_distances.dtype)
            # The diagonal is 0 on both sides and adds nothing to the sum.
            huber = F.huber_loss(student_distances, teacher_distances, reduction="sum", delta=self.delta)
            return huber / (batch_size * (batch_size - 1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, delta={self.delta}"
