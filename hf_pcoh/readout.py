"""How a run reads features from both models, resolved once: :class:`FeatureReadout`.

Which layers are paired (``teacher_layers: auto`` chosen by knowledge quality, :mod:`hf_pcoh.layers`), how
each side pools them (``pooling: auto`` follows a sentence-transformers teacher's own pipeline,
:mod:`hf_pcoh.sentence_embedding`), the extractors that read every pair, and the embedding measured after
training (the deepest pair, pooled) are decided by :func:`resolve_readout` from the config and the teacher,
and stored in one frozen value that the setup hands to the trainer, the teacher cache, the evaluation and the
run's provenance. The config itself is never changed: ``teacher_layers: auto`` stays ``auto`` there and the
chosen layers live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .config import AUTO_POOLING, DistillationConfig
from .features import FeatureExtractor
from .layers import LayerChoice
from .sentence_embedding import SENTENCE_TRANSFORMERS_POOLING, SentencePipeline, read_sentence_pipeline, teacher_source

Layer = int | str


@dataclass(frozen=True)
class FeatureReadout:
    """The layers each pair reads on each side, how each side pools them, and the extractors that do it.

    ``student_extractors`` / ``teacher_extractors`` read every layer pair (the teacher's Dense layers apply on
    its ``last`` layer only, the one they were trained on); ``student_embedding`` / ``teacher_embedding`` read
    the deepest pair as the run's embedding is measured (token-level ``pooling: none`` measured as ``mean``).
    """

    student_layers: tuple[Layer, ...]
    teacher_layers: tuple[Layer, ...]
    student_pooling: str
    teacher_pooling: str
    normalize: bool
    teacher_projection: nn.Module | None = field(default=None, compare=False, repr=False)  # its Dense layers
    teacher_pipeline: SentencePipeline | None = field(default=None, compare=False, repr=False)
    follows_teacher_pipeline: bool = False  # the teacher's features are its own sentence embedding
    layer_choice: LayerChoice | None = field(default=None, compare=False, repr=False)  # teacher_layers: auto
    student_extractors: tuple[FeatureExtractor, ...] = field(init=False, compare=False, repr=False)
    teacher_extractors: tuple[FeatureExtractor, ...] = field(init=False, compare=False, repr=False)
    student_embedding: FeatureExtractor = field(init=False, compare=False, repr=False)
    teacher_embedding: FeatureExtractor = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.student_layers) != len(self.teacher_layers) or not self.student_layers:
            raise ValueError(f"student_layers={list(self.student_layers)} and teacher_layers="
                             f"{list(self.teacher_layers)} must pair one-to-one (the same number, at least one)")
        student = tuple(FeatureExtractor(layer, self.student_pooling, "student", self.normalize)
                        for layer in self.student_layers)
        teacher = tuple(FeatureExtractor(layer, self.teacher_pooling, "teacher", self.normalize,
                                         self.teacher_projection if layer == "last" else None)
                        for layer in self.teacher_layers)
        # The embedding measured after training is the deepest pair, pooled even in a token-level recipe.
        pooled = {"pooling": "mean"}
        for name, value in (("student_extractors", student), ("teacher_extractors", teacher),
                            ("student_embedding", replace(student[-1], **pooled) if student[-1].pooling == "none"
                             else student[-1]),
                            ("teacher_embedding", replace(teacher[-1], **pooled) if teacher[-1].pooling == "none"
                             else teacher[-1])):
            object.__setattr__(self, name, value)

    @property
    def teacher_extractors_read(self) -> tuple[FeatureExtractor, ...]:
        """Every way the run reads the teacher: each pair's extractor, then the embedding measured (a sharded
        teacher is prepared for all of them, :func:`hf_pcoh.frozen_teacher.cut_for_layers`)."""
        return (*self.teacher_extractors, self.teacher_embedding)

    def describe(self) -> dict[str, Any]:
        """The ``embedding`` entry of ``distillation_config.json``: the embedding measured and how it is made."""
        return {
            "student_layer": self.student_embedding.layer,
            "teacher_layer": self.teacher_embedding.layer,
            "pooling": self.student_embedding.pooling,
            "teacher_pooling": self.teacher_embedding.pooling,
            "normalize": self.normalize,
            "teacher_sentence_transformers": self.teacher_pipeline is not None,
            "teacher_pipeline_followed": self.follows_teacher_pipeline,
            "teacher_dense_layers": self.teacher_pipeline.dense_layers if self.follows_teacher_pipeline else 0,
        }

    def sentence_transformers_pooling(self, modality: str, padding_side: str | None) -> str | None:
        """The Pooling mode the student is saved with as a sentence-transformers model, or None when it cannot
        be one: the teacher is not one, the student is not a text model, its embedding is not its ``last``
        layer, or its pooling has no sentence-transformers equivalent."""
        if self.teacher_pipeline is None or modality != "text" or str(self.student_layers[-1]) != "last":
            return None
        mode = SENTENCE_TRANSFORMERS_POOLING.get(self.student_embedding.pooling)
        if mode == "cls" and padding_side == "left":
            return None  # sentence-transformers takes the first real token, hf_pcoh the first position
        return mode


def resolve_readout(
    config: DistillationConfig,
    teacher: Any = None,
    choose_teacher_layers: Callable[[str], LayerChoice] | None = None,
) -> FeatureReadout:
    """The run's :class:`FeatureReadout`, from its config and its teacher (a model, or None to read the
    teacher's files from ``teacher_model_name_or_path``).

    Poolings: ``pooling: auto`` follows a sentence-transformers teacher's own pipeline (its Pooling mode, its
    Dense layers on ``last``, its Normalize), else ``mean``; an explicit ``pooling`` / ``teacher_pooling`` /
    ``normalize`` wins. Layers: the config's, or with ``teacher_layers: auto`` those
    ``choose_teacher_layers(teacher_pooling)`` returns (``build_setup`` scores them on the training data).
    """
    source = teacher_source(config, teacher)
    pipeline = read_sentence_pipeline(source) if source else None
    auto = config.pooling == AUTO_POOLING
    follow = auto and config.teacher_pooling is None and pipeline is not None
    if follow and pipeline.unsupported:
        raise ValueError(
            f"pooling=auto: the teacher {source} is a sentence-transformers model, but {pipeline.unsupported}, which "
            "hf_pcoh does not reproduce; set --pooling (cls, mean, max, last_token) to distil a pooling of its layers"
        )
    student_pooling = ((pipeline.pooling if pipeline is not None else None) or "mean") if auto else config.pooling
    teacher_pooling = config.teacher_pooling or student_pooling
    normalize = config.normalize if config.normalize is not None else bool(follow and pipeline.normalize)
    layer_choice = None
    teacher_layers = config.teacher_layers
    if config.teacher_layers_auto:
        if choose_teacher_layers is None:
            raise ValueError("teacher_layers=auto: the layers are chosen on the labelled training data by "
                             "hf_pcoh.setup.build_setup; pass readout=setup.readout to DistillationTrainer, or give "
                             "the layers (--teacher_layers)")
        layer_choice = choose_teacher_layers(teacher_pooling)
        teacher_layers = layer_choice.selected
    return FeatureReadout(
        student_layers=tuple(config.student_layers),
        teacher_layers=tuple(teacher_layers),
        student_pooling=student_pooling,
        teacher_pooling=teacher_pooling,
        normalize=bool(normalize),
        teacher_projection=pipeline.projection if follow else None,
        teacher_pipeline=pipeline,
        follows_teacher_pipeline=follow,
        layer_choice=layer_choice,
    )
