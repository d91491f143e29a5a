"""hf_pcoh's losses as sentence-transformers losses, for ``SentenceTransformerTrainer``.

They follow the contract of sentence-transformers' ``MSELoss``: built on the student ``model``, trained
on a data set with a text column and a ``label`` column holding the teacher's embeddings (computed once,
e.g. with :func:`add_teacher_embeddings`), and called as ``loss(sentence_features, labels)``. One generic
wrapper, :class:`FeatureDistillationLoss`, runs any registered feature loss (``LOSSES``); the classes named
after hf_pcoh's loss classes (``PerceptionCoherenceLoss``, ``CKALoss``...) are made from the registry by
:func:`sentence_transformers_loss`, so a loss registered later, in a file of its own, is one too. Each
takes the options of its hf_pcoh loss, reports them through ``get_config_dict`` and its paper through
``citation`` (sentence-transformers puts both in the model card). Losses with learned parameters (the
projectors of projected MSE and CosPress) keep them on the loss module: ``SentenceTransformerTrainer``
trains them with the student, and they are not saved with it.

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
    # or, for any registered loss: FeatureDistillationLoss(student, teacher_dim=384, loss_name="cka")
    SentenceTransformerTrainer(model=student, train_dataset=train, loss=loss).train()
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .global_batch import global_batch_loss
from .errors import unknown_name_message
from .losses import LOSSES, DistillationLoss, build_loss, get_loss_class


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
    """Any registered hf_pcoh feature loss between the student's sentence embeddings and precomputed teacher
    embeddings.

    Args:
        model: the student ``SentenceTransformer``.
        teacher_dim: the width of the teacher embeddings in ``label`` (default: the student's width).
        loss_name: the registered loss to run (``LOSSES``); the classes made by :func:`sentence_transformers_loss`
            set it themselves.
        **options: the options of the hf_pcoh loss (``python scripts/distill.py --help`` lists them).

    Inputs: one or more text columns and a ``label`` column of teacher embeddings ``[B, teacher_dim]``
    (broadcast to every column) or ``[B, columns, teacher_dim]`` (one per column); the loss is the mean
    over columns. Batch-level losses compare the rows of a batch, so they need batches of at least
    ``min_batch_size`` rows (under several processes, the gathered global batch).

    Example::

        loss = FeatureDistillationLoss(student, teacher_dim=384, loss_name="procrustes")
    """

    loss_name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, teacher_dim: int | None = None, *, loss_name: str | None = None,
                 **options: Any) -> None:
        super().__init__()
        loss_name = loss_name or self.loss_name
        if not loss_name:
            raise ValueError(f"{type(self).__name__} needs loss_name=..., one of {feature_loss_names()}")
        check_feature_loss(loss_name)
        self.loss_name = loss_name
        self.model = model
        student_dim = embedding_dimension(model)
        self.teacher_dim = int(teacher_dim or student_dim)
        self.loss: DistillationLoss = build_loss(loss_name, student_dim=student_dim, teacher_dim=self.teacher_dim,
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
        if self.loss.batch_level:  # compare the points of the global batch, computed once across processes
            return global_batch_loss(self.loss, student, teacher)
        return self.loss(student, teacher)

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's settings (every option, defaults included), as sentence-transformers shows them in the model card."""
        return {"teacher_dim": self.teacher_dim, **self.loss.get_config_dict()}

    @property
    def citation(self) -> str:
        return get_loss_class(self.loss_name).citation


def feature_loss_names() -> list[str]:
    """The registered losses that compare features (logit losses need class logits, not sentence embeddings)."""
    return [name for name, loss_class in LOSSES.items() if loss_class.input_kind == "features"]


def check_feature_loss(name: str) -> None:
    """Fail unless ``name`` is a registered feature loss, naming the ones there are."""
    if name not in LOSSES:
        raise ValueError(unknown_name_message("loss", name, feature_loss_names()))
    if LOSSES[name].input_kind != "features":
        raise ValueError(f"loss {name!r} compares {LOSSES[name].input_kind}, not sentence embeddings; use one of "
                         f"{feature_loss_names()}")


# One class per registered loss, made once: the same class every time, so losses pickle by reference.
_MADE_CLASSES: dict[type[DistillationLoss], type[FeatureDistillationLoss]] = {}


def sentence_transformers_loss(name: str) -> type[FeatureDistillationLoss]:
    """The sentence-transformers loss class of the registered feature loss ``name``.

    It is named after the hf_pcoh class (``CKALoss``), lives in this module (so the model card names it
    ``hf_pcoh.sentence_transformers.CKALoss``) and is called as ``CKALoss(student, teacher_dim=..., **options)``.
    """
    check_feature_loss(name)
    loss_class = LOSSES[name]
    made = _MADE_CLASSES.get(loss_class)
    if made is None:
        documentation = (
            f"{loss_class.__name__} inside ``SentenceTransformerTrainer``: :class:`hf_pcoh.losses.{loss_class.__name__}` "
            "between the student's sentence embeddings and the teacher's in ``label``.\n\n"
            f"Built as ``{loss_class.__name__}(model, teacher_dim=None, **options)``; inputs and behaviour as "
            f":class:`FeatureDistillationLoss`. The hf_pcoh loss:\n\n{inspect.getdoc(loss_class) or ''}"
        )
        made = type(loss_class.__name__, (FeatureDistillationLoss,),
                    {"loss_name": name, "__doc__": documentation, "__module__": __name__,
                     "__qualname__": loss_class.__name__})
        _MADE_CLASSES[loss_class] = made
    return made


class _RegistryLosses(Mapping):
    """``{loss name: sentence-transformers loss class}`` for every registered feature loss, read live from ``LOSSES``."""

    def __getitem__(self, name: str) -> type[FeatureDistillationLoss]:
        if name not in feature_loss_names():
            raise KeyError(name)
        return sentence_transformers_loss(name)

    def __iter__(self) -> Iterator[str]:
        return iter(feature_loss_names())

    def __len__(self) -> int:
        return len(feature_loss_names())

    def __repr__(self) -> str:
        return f"SENTENCE_TRANSFORMERS_LOSSES({feature_loss_names()})"


SENTENCE_TRANSFORMERS_LOSSES: Mapping[str, type[FeatureDistillationLoss]] = _RegistryLosses()


def _class_names() -> dict[str, str]:
    """``{class name: loss name}`` of the registered feature losses."""
    return {LOSSES[name].__name__: name for name in feature_loss_names()}


def __getattr__(name: str) -> type[FeatureDistillationLoss]:
    # ``from hf_pcoh.sentence_transformers import CKALoss``, for every registered feature loss.
    loss_name = _class_names().get(name)
    if loss_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return sentence_transformers_loss(loss_name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_class_names()})


__all__ = [
    "SENTENCE_TRANSFORMERS_LOSSES",
    "FeatureDistillationLoss",
    "add_teacher_embeddings",
    "embedding_dimension",
    "sentence_transformers_loss",
    *_class_names(),
]
