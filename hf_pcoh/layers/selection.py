"""``teacher_layers: auto``: pick the teacher layers to distil by their knowledge quality ``Q``.

Embeds a stratified sample of the training data with the teacher, scores every hidden layer with
:func:`hf_pcoh.layers.quality.knowledge_quality` (Cooper et al., NeurReps 2025, arXiv 2511.14981),
keeps the top-k by ``Q`` (:func:`select_layers`, k = the number of student layers), sorted by depth,
so that they pair one-to-one with the student's layers in order (:func:`map_layers_one_to_one`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ..embedding import embed_every_layer
from ..plots import format_quality_table, plot_qualities
from .quality import KnowledgeQuality, Layer, layer_qualities

logger = logging.getLogger(__name__)


def select_layers(qualities: Mapping[Layer, KnowledgeQuality], top_k: int) -> list[Layer]:
    """The ``top_k`` layers of highest ``Q``, returned in depth order (the mapping's order).

    Ties in ``Q`` go to the shallower layer.
    """
    layers = list(qualities)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(layers):
        raise ValueError(
            f"top_k={top_k!r} but there are {len(layers)} layers to choose from ({layers}); "
            f"use an integer in 1..{len(layers)} (the number of student hook points)"
        )
    by_quality = sorted(range(len(layers)), key=lambda position: -qualities[layers[position]].quality)
    return [layers[position] for position in sorted(by_quality[:top_k])]


def map_layers_one_to_one(teacher_layers: Sequence[Layer], student_layers: Sequence[Layer]) -> list[tuple[Layer, Layer]]:
    """Pair the i-th student layer with the i-th teacher layer, both in depth order: ``[(student, teacher), ...]``."""
    teacher_layers, student_layers = list(teacher_layers), list(student_layers)
    if len(teacher_layers) != len(student_layers):
        raise ValueError(
            f"teacher_layers has {len(teacher_layers)} layers ({teacher_layers}) but student_layers has "
            f"{len(student_layers)} ({student_layers}); they must have the same length: select "
            f"top_k={len(student_layers)} teacher layers"
        )
    return list(zip(student_layers, teacher_layers))


@dataclass
class LayerChoice:
    """The chosen teacher layers and the quality of every layer they were chosen from."""

    selected: list[int]
    qualities: dict[int, KnowledgeQuality]

    def table(self) -> str:
        return format_quality_table(self.qualities, self.selected)

    def plot(self, path: str) -> None:
        plot_qualities(self.qualities, path, self.selected)

    def to_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "qualities": {str(layer): asdict(q) for layer, q in self.qualities.items()}}


def stratified_rows(labels: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Up to ``num_samples`` row indices with every class as equally represented as its size allows."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, num_samples // len(classes))
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(rows))


def choose_teacher_layers(
    teacher: torch.nn.Module,
    processor: Any,
    dataset: Dataset,
    input_column: str,
    label_column: str | None,
    modality: str,
    pooling: str,
    top_k: int,
    num_samples: int = 2000,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> LayerChoice:
    """Score every teacher layer on a labelled sample of ``dataset``; return the top ``top_k`` by ``Q``."""
    if label_column is None:
        raise ValueError("teacher_layers=auto needs class labels to score layers: set label_column")
    labels = np.asarray(dataset[label_column])
    rows = stratified_rows(labels, num_samples, seed)
    sample = dataset.select(rows)
    features = embed_every_layer(teacher, processor, sample[input_column], "mean" if pooling == "none" else pooling,
                                 modality, max_length=max_length, device=device, description="teacher: every layer")
    # hidden_states[0] is the input embedding: not a layer the teacher computed from the data's structure.
    candidates = {layer: values for layer, values in features.items() if layer > 0}
    if top_k > len(candidates):
        raise ValueError(f"teacher_layers=auto with {top_k} student layers, but the teacher has {len(candidates)} layers")
    qualities = layer_qualities(candidates, labels[rows], seed=seed, num_train_samples=len(dataset))
    selected = select_layers(qualities, top_k)
    logger.info("knowledge quality per teacher layer:\n%s", format_quality_table(qualities, selected))
    return LayerChoice([int(layer) for layer in selected], dict(qualities))
