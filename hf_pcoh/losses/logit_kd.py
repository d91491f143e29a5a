"""Logit knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", NIPS 2014 Deep Learning Workshop, arXiv 1503.02531).

The student's temperature-softened class distribution is pulled to the teacher's,

    L = T^2 * mean_n KL( softmax(z^t_n / T) || softmax(z^s_n / T) ),

with ``softmax(z / T)`` the paper's Eq. (1); the ``T^2`` factor (their Sec. 2) keeps the gradient scale
independent of the temperature, so the term can be mixed with cross-entropy at a fixed weight.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import DistillationLoss, register_loss
from .numerics import masked_mean


@register_loss
class LogitKDLoss(DistillationLoss):
    """Hinton logit KD: ``T^2 * mean_n KL(softmax(t_n / T) || softmax(s_n / T))``.

    Compares class distributions, so ``student_dim`` and ``teacher_dim`` are both the number of classes.
    Adding a constant to every logit of a row changes nothing (softmax).

    Args:
        student_dim: the number of classes ``C`` of the student.
        teacher_dim: the number of classes of the teacher (must equal ``student_dim``).
        temperature: the softmax temperature ``T`` (default 2.0).

    Inputs:
        student and teacher logits ``[B, C]``, or per-token logits ``[B, L, C]`` with ``mask`` ``[B, L]``
        (padding positions are left out of the mean). Returns a scalar.

    References:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning
        Workshop (arXiv 1503.02531), Eq. 1 and Sec. 2.

    Example::

        loss = LogitKDLoss(student_dim=10, teacher_dim=10, temperature=4.0)
        value = loss(student_logits, teacher_logits)  # [B, 10], [B, 10] -> scalar
    """

    name = "logit_kd"
    citation = """@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}"""
    accepts_tokens = True
    input_kind = "logits"
    equal_widths = True
    zero_at_agreement = True
    invariances = frozenset({"batch_permutation"})

    def __init__(self, student_dim: int, teacher_dim: int, temperature: float = 2.0) -> None:
        super().__init__(student_dim, teacher_dim)
        if student_dim != teacher_dim:
            raise ValueError(
                f"logit_kd compares class distributions: student_dim={student_dim} and teacher_dim={teacher_dim} must "
                "both be the number of classes"
            )
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (try 2.0)")
        self.temperature = float(temperature)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student.shape != teacher.shape or student.shape[-1] != self.student_dim:
            raise ValueError(
                f"logit_kd expects student and teacher logits of the same shape [..., {self.student_dim}], got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        with torch.autocast(device_type=student.device.type, enabled=False):
            student_log_probs = F.log_softmax(student.float() / self.temperature, dim=-1)
            with torch.no_grad():
                teacher_log_probs = F.log_softmax(teacher.float() / self.temperature, dim=-1)
            # KL per row; where p_t underflows to 0 the term is 0 (xlogy-style), never NaN.
            per_row = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
            return masked_mean(per_row, mask if per_row.dim() == 2 else None) * self.temperature**2

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"
