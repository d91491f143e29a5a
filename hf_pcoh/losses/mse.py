"""Projected mean-squared error between features (FitNets-style hint loss).

Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets" (ICLR 2015,
arXiv 1412.6550): a learned regressor maps the student's features into the teacher's space and the
squared error to the teacher's features is minimised,

    L = 1/(N d_t) * sum_n || W s_n - t_n ||^2,

over the ``N`` rows (pooled points, or the unmasked tokens of token features).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .base import DistillationLoss, register_loss
from .numerics import masked_mean


@register_loss
class ProjectedMSELoss(DistillationLoss):
    """Projected MSE (FitNets): ``mean || W s - t ||^2`` with a learned linear ``W: d_s -> d_t``.

    The mean runs over the rows (pooled points, or the real tokens) and the teacher's width. ``W`` is a
    submodule (``projector``), trained with the student and saved with the distillation heads.

    Args:
        student_dim: width ``d_s`` of the student's features.
        teacher_dim: width ``d_t`` of the teacher's features.
        projector: ``"auto"`` (default: a linear map when the widths differ, none when they agree),
            ``"linear"`` (always learn one) or ``"none"`` (plain MSE; the widths must agree).
        bias: whether the projector has a bias (default False, as in FitNets' 1x1 regressors).

    Inputs:
        student ``[B, d_s]`` and teacher ``[B, d_t]`` pooled features; or token features ``[B, T, d_s]`` /
        ``[B, T, d_t]`` with ``mask`` ``[B, T]`` (padding positions are left out of the mean). Returns a scalar.

    References:
        Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015
        (arXiv 1412.6550).

    Example::

        loss = ProjectedMSELoss(student_dim=128, teacher_dim=384)
        value = loss(student_features, teacher_features)
    """

    name = "projected_mse"
    citation = """@inproceedings{romero2015fitnets,
  title     = {FitNets: Hints for Thin Deep Nets},
  author    = {Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine and Gatta, Carlo and Bengio, Yoshua},
  booktitle = {International Conference on Learning Representations},
  year      = {2015},
  note      = {arXiv:1412.6550}
}"""
    accepts_tokens = True
    zero_at_agreement = True  # equal widths: no projector under projector="auto"
    invariances = frozenset({"batch_permutation"})

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        projector: Literal["auto", "linear", "none"] = "auto",
        bias: bool = False,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        if projector not in ("auto", "linear", "none"):
            raise ValueError(f"projector={projector!r} must be 'auto', 'linear' or 'none'")
        if projector == "none" and student_dim != teacher_dim:
            raise ValueError(
                f"projected_mse with projector='none' needs equal widths, got student_dim={student_dim} and "
                f"teacher_dim={teacher_dim}: use projector='auto' to learn a linear projector"
            )
        use_linear = projector == "linear" or (projector == "auto" and student_dim != teacher_dim)
        self.projector: nn.Module = nn.Linear(student_dim, teacher_dim, bias=bias) if use_linear else nn.Identity()

    def untrained_parameters(self, tokens: bool) -> list[str]:
        """The projector (when there is one) takes every value."""
        return []

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        projected = self.projector(student)
        if projected.shape != teacher.shape:
            raise ValueError(
                f"projected_mse: projected student features {tuple(projected.shape)} do not match the teacher's "
                f"{tuple(teacher.shape)}"
            )
        squared_error = (projected.float() - teacher.float()).pow(2)
        return masked_mean(squared_error, mask if squared_error.dim() == 3 else None)
