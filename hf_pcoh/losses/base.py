"""The contract every feature-distillation loss follows, and the name -> class registry.

A loss is an ``nn.Module`` built from the widths of the two feature spaces it compares
(``student_dim``, ``teacher_dim``) plus its own keyword options, so losses that need learned
parameters (a FitNets projector, CosPress's compression of the teacher space) own them and the
trainer optimises and saves them with the student.

Calling it as ``loss(student, teacher, mask=None, labels=None)`` returns a scalar tensor.
``student`` is ``[B, d_s]`` (pooled) or ``[B, T, d_s]`` (tokens, with ``mask`` ``[B, T]``);
``teacher`` has the same leading shape with width ``d_t``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import unknown_name_message

LOSSES: dict[str, type["DistillationLoss"]] = {}


def register_loss(cls: type["DistillationLoss"]) -> type["DistillationLoss"]:
    """Class decorator: make ``cls`` available as ``LOSSES[cls.name]`` (and in recipes by that name)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
    if cls.name in LOSSES and LOSSES[cls.name] is not cls:
        raise ValueError(f"a loss named {cls.name!r} is already registered ({LOSSES[cls.name].__qualname__})")
    LOSSES[cls.name] = cls
    return cls


def get_loss_class(name: str) -> type["DistillationLoss"]:
    """Return the registered loss class called ``name``; fail with the list of known names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(unknown_name_message("loss", name, list(LOSSES))) from None


def build_loss(name: str, student_dim: int, teacher_dim: int, **options: Any) -> "DistillationLoss":
    """Instantiate the loss ``name`` for the given feature widths, with its options checked by name."""
    loss_class = get_loss_class(name)
    try:
        return loss_class(student_dim=student_dim, teacher_dim=teacher_dim, **options)
    except TypeError as error:
        raise ValueError(f"bad options for loss {name!r}: {options} ({error}). {loss_class.__doc__.splitlines()[0]}") from None


class DistillationLoss(nn.Module):
    """Base class of feature-distillation losses.

    Class attributes a subclass sets:
      * ``name``: the registry and recipe name;
      * ``citation``: a BibTeX entry of the paper the loss implements (collected into model cards);
      * ``batch_level``: True when the loss compares points of the batch with one another
        (it then must see the global batch under data parallelism, and needs ``min_batch_size`` rows);
      * ``accepts_tokens``: True when the loss can take ``[B, T, d]`` token features with a mask.
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    batch_level: ClassVar[bool] = False
    min_batch_size: ClassVar[int] = 1
    accepts_tokens: ClassVar[bool] = False

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def check_pooled_batch(self, student: torch.Tensor, teacher: torch.Tensor) -> int:
        """For losses over pooled points: ``[B, d_s]`` and ``[B, d_t]`` with ``B >= min_batch_size``; returns ``B``."""
        if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"{self.name} expects pooled features [B, d_s] and [B, d_t] with the same B, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}; use a pooling other than 'none'"
            )
        batch_size = student.shape[0]
        if batch_size < self.min_batch_size:
            raise ValueError(
                f"{self.name} needs at least {self.min_batch_size} points in the (global) batch, got {batch_size}: "
                "raise per_device_train_batch_size"
            )
        return batch_size

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}"
