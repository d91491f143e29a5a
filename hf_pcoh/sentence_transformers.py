"""hf_pcoh's losses as sentence-transformers losses, for ``SentenceTransformerTrainer``.

They follow the contract of sentence-transformers' ``MSELoss``: built on the student ``model``, trained
on a data set with a text column and a ``label`` column holding the teacher's embeddings (computed once,
e.g. with :func:`add_teacher_embeddings`), and called as ``loss(sentence_features, labels)``. Each
wraps the hf_pcoh loss of the same name (:mod:`hf_pcoh.losses`), with the same options, and reports
them through ``get_config_dict`` and its paper through ``citation`` (sentence-transformers puts both in
the model card). Losses with learned parameters (the projectors of projected MSE and CosPress) keep them
on the loss module: ``SentenceTransformerTrainer`` trains them with the student, and they are not saved
with it.

sentence-transformers is an optional dependency (``pip install hf_pcoh[sentence-transformers]``): this
module never imports it; the models passed in are ``SentenceTransformer`` objects.

Example::

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from hf_pcoh.sentence_transformers import PerceptionCoherenceLoss, add_teacher_embeddings

    teacher = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    student = SentenceTransformer("path/to/small-model")
    train = add_teacher_embeddings(Dataset.from_dict({"text": texts}), teacher, "text")
    loss = PerceptionCoherenceLoss(student, teacher_dim=384, temperature=0.1)
    SentenceTransformerTrainer(model=student, train_dataset=train, loss=loss).train()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from .distributed import gather_with_grad, world_size
from .losses import DistillationLoss, build_loss, get_loss_class


def embedding_dimension(model: nn.Module) -> int:
    """The width of a ``SentenceTransformer``'s sentence embedding (its name changed in sentence-transformers 5)."""
    for method in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, method):
            width = getattr(model, method)()
            if width:
                return int(width)
    raise ValueError(
        f"{type(model).__name__} does not report its embedding width: pass a SentenceTransformer whose last module "
        "knows it (e.g. a Pooling or Dense module)"
    )


def add_teacher_embeddings(dataset: Any, teacher: Any, text_column: str, label_column: str = "label",
                           batch_size: int = 64) -> Any:
    """``dataset`` with the teacher's embeddings of ``text_column`` in ``label_column`` (``teacher.encode``, once)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"text_column={text_column!r} is not a column of the data set "
                         f"(columns: {dataset.column_names})")

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return {label_column: teacher.encode(batch[text_column], batch_size=batch_size, convert_to_numpy=True)}

    return dataset.map(encode, batched=True, batch_size=batch_size)


class FeatureDistillationLoss(nn.Module):
    """An hf_pcoh loss between the student's sentence embeddings and precomputed teacher embeddings.

    Args:
        model: the student ``SentenceTransformer``.
        teacher_dim: the width of the teacher embeddings in ``label`` (default: the student's width).
        **options: the options of the hf_pcoh loss (``python scripts/distill.py --help`` lists them).

    Inputs: one or more text columns and a ``label`` column of teacher embeddings ``[B, teacher_dim]``
    (broadcast to every column) or ``[B, columns, teacher_dim]`` (one per column); the loss is the mean
    over columns. Batch-level losses compare the rows of a batch, so they need batches of at least
    ``min_batch_size`` rows (under several processes, the gathered global batch).
    """

    loss_name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, teacher_dim: int | None = None, **options: Any) -> None:
        super().__init__()
        self.model = model
        student_dim = embedding_dimension(model)
        self.teacher_dim = int(teacher_dim or student_dim)
        self.options = dict(options)
        self.loss: DistillationLoss = build_loss(self.loss_name, student_dim=student_dim, teacher_dim=self.teacher_dim,
                                                 **options)
        device = getattr(model, "device", None)
        if device is not None:
            self.loss.to(device)

    def forward(
        self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's embeddings as labels: add a 'label' column "
                             "(hf_pcoh.sentence_transformers.add_teacher_embeddings)")
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        labels = labels.detach()
        if labels.dim() == 2:
            teacher_embeddings = [labels] * len(embeddings)
        elif labels.dim() == 3 and labels.shape[1] == len(embeddings):
            teacher_embeddings = [labels[:, column] for column in range(labels.shape[1])]
        else:
            raise ValueError(f"labels of shape {tuple(labels.shape)}: expected [batch, teacher_dim] or "
                             f"[batch, {len(embeddings)}, teacher_dim] for {len(embeddings)} text column(s)")
        values = [self.compare(student, teacher) for student, teacher in zip(embeddings, teacher_embeddings)]
        return torch.stack(values).mean()

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The hf_pcoh loss of one column: ``[B, d_s]`` student and ``[B, d_t]`` teacher embeddings -> scalar."""
        if teacher.shape[-1] != self.teacher_dim:
            raise ValueError(f"the teacher embeddings in 'label' are {teacher.shape[-1]}-d but the loss was built for "
                             f"teacher_dim={self.teacher_dim}: pass teacher_dim={teacher.shape[-1]}")
        teacher = teacher.to(device=student.device, dtype=student.dtype)
        if self.loss.batch_level and world_size() > 1:  # compare the points of the global batch
            student, teacher = gather_with_grad(student), gather_with_grad(teacher)
        return self.loss(student, teacher)

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's settings, as sentence-transformers shows them in the model card."""
        options = {name: value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
                   for name, value in self.options.items()}
        return {"teacher_dim": self.teacher_dim, **options}

    @property
    def citation(self) -> str:
        return get_loss_class(self.loss_name).citation


class PerceptionCoherenceLoss(FeatureDistillationLoss):
    """Perception coherence: the student ranks each point's in-batch neighbours as the teacher does.

    The soft-rank loss of :class:`hf_pcoh.losses.PerceptionCoherenceLoss` (Nguyen et al., TMLR 2026) on the
    student's sentence embeddings and the teacher's; the widths may differ (only dissimilarities are
    compared). Options: ``temperature`` (0.1), ``dissimilarity`` ("euclidean"), ``scale``, ``locality``...

    Example::

        loss = PerceptionCoherenceLoss(student, teacher_dim=384, temperature=0.1, dissimilarity="cosine")
    """

    loss_name = "perception_coherence"


class CosPressLoss(FeatureDistillationLoss):
    """CosPress (Mannix et al., TMLR 2025): learn a map ``h`` of the teacher's embeddings into the student's
    width that preserves their cosine similarities, and pull the student onto ``h(teacher)``.

    Wraps :class:`hf_pcoh.losses.CosPressLoss`; ``h`` is trained with the student and stays on the loss.
    """

    loss_name = "cospress"


class ProcrustesLoss(FeatureDistillationLoss):
    """Squared Procrustes distance ``2 - 2 ||S~^T T~||_*`` between the batch's centred, unit-norm student and
    teacher embeddings: 0 iff they agree up to rotation, translation and scale.

    Wraps :class:`hf_pcoh.losses.ProcrustesLoss` (batch-level; the widths may differ).
    """

    loss_name = "procrustes"


class GramLoss(FeatureDistillationLoss):
    """Gram-matrix distance ``||S~ S~^T - T~ T~^T||_F^2`` between the batch's centred, unit-norm student and
    teacher embeddings (Bhattarai et al., arXiv 2509.25253).

    Wraps :class:`hf_pcoh.losses.GramLoss` (batch-level; the widths may differ).
    """

    loss_name = "gram"


class CKALoss(FeatureDistillationLoss):
    """Linear CKA loss ``1 - CKA(S, T)`` between the batch's student and teacher embeddings (Kornblith et al.,
    ICML 2019).

    Wraps :class:`hf_pcoh.losses.CKALoss` (batch-level; the widths may differ).
    """

    loss_name = "cka"


class ProjectedMSELoss(FeatureDistillationLoss):
    """MSE between a learned linear projection of the student's embeddings and the teacher's (FitNets).

    Wraps :class:`hf_pcoh.losses.ProjectedMSELoss`; the projector is trained with the student and stays on
    the loss. With equal widths this is sentence-transformers' ``MSELoss`` with ``projection_dim`` set.
    """

    loss_name = "projected_mse"


class RKDDistanceLoss(FeatureDistillationLoss):
    """RKD distance loss: Huber loss between the mean-normalised in-batch distances of student and teacher
    (Park et al., CVPR 2019).

    Wraps :class:`hf_pcoh.losses.RKDDistanceLoss` (batch-level; the widths may differ).
    """

    loss_name = "rkd_distance"


SENTENCE_TRANSFORMERS_LOSSES: dict[str, type[FeatureDistillationLoss]] = {
    loss.loss_name: loss
    for loss in (PerceptionCoherenceLoss, CosPressLoss, ProcrustesLoss, GramLoss, CKALoss, ProjectedMSELoss,
                 RKDDistanceLoss)
}

__all__ = [
    "SENTENCE_TRANSFORMERS_LOSSES",
    "CKALoss",
    "CosPressLoss",
    "FeatureDistillationLoss",
    "GramLoss",
    "PerceptionCoherenceLoss",
    "ProcrustesLoss",
    "ProjectedMSELoss",
    "RKDDistanceLoss",
    "add_teacher_embeddings",
    "embedding_dimension",
]
