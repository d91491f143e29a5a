"""Precompute the teacher's features once (``--teacher_cache DIR``) and train without the teacher in the loop.

The features of every layer pair (and the logits, when logit KD needs them) are added to the training
set as columns by a batched ``datasets.map`` and saved as Arrow under ``DIR/<fingerprint>``. The
fingerprint covers the teacher's weights and config, its processor, the layers and pooling, and the
exact training rows, so any change to them computes a new cache instead of reading a stale one.
Cached features are only right when every epoch shows the teacher the same inputs: a data set with an
on-the-fly transform (augmentation) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import datasets
import torch
from datasets import Dataset

from .collator import CACHED_LOGITS_COLUMN, cached_feature_column, process
from .features import FeatureExtractor
from .trainer import run_teacher

logger = logging.getLogger(__name__)


def teacher_fingerprint(
    teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor], dataset: Dataset,
    input_column: str, max_length: int, with_logits: bool,
) -> str:
    """A digest of everything the cached features depend on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    settings = {
        "config": teacher.config.to_json_string() if hasattr(teacher, "config") else type(teacher).__name__,
        "processor": processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor),
        "layers": [(str(e.layer), e.pooling) for e in extractors],
        "rows": dataset._fingerprint,
        "input_column": input_column,
        "max_length": max_length,
        "logits": with_logits,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def refuse_augmented(dataset: Dataset) -> None:
    if dataset.format.get("type") == "custom":
        raise ValueError(
            "teacher_cache: the training set has an on-the-fly transform (set_transform / with_transform), so the "
            "teacher would see different inputs each epoch and cached features would be wrong; drop --teacher_cache "
            "or remove the augmentation"
        )


def add_cached_teacher_features(
    dataset: Dataset,
    cache_dir: str,
    teacher: torch.nn.Module,
    processor: Any,
    extractors: list[FeatureExtractor],
    input_column: str,
    modality: str,
    max_length: int,
    with_logits: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
) -> Dataset:
    """``dataset`` with a ``teacher_features_<i>`` column per layer pair (and ``teacher_logits``), cached on disk."""
    refuse_augmented(dataset)
    fingerprint = teacher_fingerprint(teacher, processor, extractors, dataset, input_column, max_length, with_logits)
    target = os.path.join(cache_dir, fingerprint)
    if os.path.isdir(target):
        logger.info("reading cached teacher features from %s", target)
        return datasets.load_from_disk(target)
    teacher.eval().to(device)

    def teacher_columns(batch: dict[str, list[Any]]) -> dict[str, Any]:
        inputs = process(processor, batch[input_column], modality, max_length)
        features, logits = run_teacher(teacher, {k: v.to(device) for k, v in inputs.items()}, extractors)
        columns: dict[str, Any] = {}
        for index, feature in enumerate(features):
            if feature.values.dim() != 2:
                raise ValueError("teacher_cache stores pooled features; pooling 'none' (tokens) cannot be cached")
            columns[cached_feature_column(index)] = feature.values.float().cpu().numpy()
        if with_logits:
            columns[CACHED_LOGITS_COLUMN] = logits.float().cpu().numpy()
        return columns

    logger.info("computing teacher features for %d rows into %s", len(dataset), target)
    cached = dataset.map(teacher_columns, batched=True, batch_size=batch_size, desc="teacher features",
                         load_from_cache_file=False, new_fingerprint=fingerprint)
    partial = f"{target}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cached.save_to_disk(partial)
    os.replace(partial, target)  # an interrupted run never leaves a half-written cache under the final name
    return datasets.load_from_disk(target)
