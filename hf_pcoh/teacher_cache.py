"""Precompute the teacher's features once (``--teacher_cache DIR``) and train without the teacher in the loop.

The features of every layer pair (and the logits, when logit KD needs them) are added to the training
set as columns by a batched ``datasets.map`` and saved as Arrow under ``DIR/<fingerprint>``. The
fingerprint covers the teacher's weights and config, its processor, the layers, pooling and post-pooling
(Dense, Normalize), and the exact training rows, so any change to them computes a new cache instead of
reading a stale one. A cache that cannot be read whole (a truncated Arrow file, rows or columns missing) is
computed again, with a warning.
Cached features are only right when every epoch shows the teacher the same inputs: a data set with an
on-the-fly transform (augmentation) is refused.
Texts are embedded in order of length (as sentence-transformers' ``encode`` does), so that each batch is
padded to about its own texts' length; the rows are stored in the training set's order.

``--teacher_cache auto`` caches, under ``HF_DATASETS_CACHE``, only when that is sure to be right and to fit:
a map-style training set without an on-the-fly transform, pooled features, features that take at most
half the free memory and half the free disk, and a run that draws at least as many examples as the set
has rows (with ``max_steps`` shorter than one epoch, computing every row's features costs more than
running the teacher live on the rows drawn); otherwise the teacher runs live, as without the option
(:func:`resolve_cache_dir` logs why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset

from .collator import CACHED_LOGITS_COLUMN, cached_feature_column, process
from .features import FeatureExtractor
from .frozen_teacher import run_teacher

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
        "layers": [extractor.fingerprint() for extractor in extractors],
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
    columns = [cached_feature_column(index) for index in range(len(extractors))]
    columns += [CACHED_LOGITS_COLUMN] if with_logits else []
    if os.path.lexists(target):
        cached, problem = read_cache(target, len(dataset), columns)
        if cached is not None:
            logger.info("reading cached teacher features from %s", target)
            return cached
        logger.warning("the teacher-feature cache %s is damaged (%s), perhaps by a run killed or a disk filled while "
                       "it was written: computing it again", target, problem)
        remove_cache(target)
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
    order = np.argsort([len(text) for text in dataset[input_column]], kind="stable") if modality == "text" else None
    source = dataset if order is None else dataset.select(order)  # texts of similar length share a batch
    cached = source.map(teacher_columns, batched=True, batch_size=batch_size, desc="teacher features",
                        load_from_cache_file=False, new_fingerprint=fingerprint)
    if order is not None:
        cached = cached.select(np.argsort(order))  # back to the training set's order
    partial = f"{target}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cached.save_to_disk(partial)
    os.replace(partial, target)  # an interrupted run never leaves a half-written cache under the final name
    return datasets.load_from_disk(target)


def read_cache(target: str, rows: int, columns: list[str]) -> tuple[Dataset | None, str | None]:
    """``(the cached training set, None)``, or ``(None, what is wrong)`` when the folder cannot be read whole: a
    truncated or missing Arrow file, broken metadata, fewer rows than the training set, a feature column missing."""
    try:
        cached = datasets.load_from_disk(target)  # maps every Arrow file and reads its record batches' headers
    except (OSError, ValueError, IndexError, KeyError, pa.ArrowException) as error:  # ArrowInvalid, JSON errors
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(cached, Dataset):
        return None, f"it holds a {type(cached).__name__}, not one training set"
    if len(cached) != rows:
        return None, f"it holds {len(cached)} rows, the training set {rows}"
    missing = [column for column in columns if column not in cached.column_names]
    if missing:
        return None, f"it lacks the column(s) {', '.join(missing)}"
    return cached, None


def remove_cache(target: str) -> None:
    """Remove a cache folder (or whatever else lies under its name) so that it can be written again."""
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    else:
        os.remove(target)


AUTO_CACHE = "auto"  # teacher_cache: auto


def auto_cache_dir() -> str:
    """Where ``teacher_cache: auto`` keeps the features: beside datasets' own cache (``HF_DATASETS_CACHE``)."""
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "hf_pcoh_teacher_features")


def available_memory() -> int | None:
    """Bytes of memory free for this process now (Linux), or None where that cannot be read."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: str) -> int:
    """Bytes free on the file system that ``folder`` is (or would be created) on."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    return shutil.disk_usage(existing).free


def auto_cache_refusal(
    dataset: Any, teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor], input_column: str,
    modality: str, max_length: int, with_logits: bool, cache_dir: str, examples_drawn: int | None = None,
) -> str | None:
    """Why ``teacher_cache: auto`` leaves the teacher live on this run, or None when its features are cached.

    ``examples_drawn``: how many training examples the run will draw (steps x global batch), when known.
    """
    if not isinstance(dataset, Dataset):
        return "the training set is streamed"
    if dataset.format.get("type") == "custom":
        return "the training set has an on-the-fly transform (augmentation): the teacher must see each epoch's inputs"
    if len(dataset) < 2:
        return "the training set has fewer than 2 rows"
    if examples_drawn is not None and examples_drawn < len(dataset):
        return (f"the run draws {examples_drawn} examples, fewer than the training set's {len(dataset)} rows: the "
                "teacher on those alone costs less than on every row")
    device = next(teacher.parameters()).device
    inputs = process(processor, list(dataset.select(range(2))[input_column]), modality, max_length)
    features, logits = run_teacher(teacher, {name: tensor.to(device) for name, tensor in inputs.items()}, extractors)
    if any(feature.values.dim() != 2 for feature in features):
        return "pooling 'none' gives tokens, and only pooled features are cached"
    width = sum(feature.dim for feature in features) + (logits.shape[-1] if with_logits and logits is not None else 0)
    needed = len(dataset) * width * 4  # float32
    memory, disk = available_memory(), free_disk(cache_dir)
    if memory is not None and needed > memory / 2:
        return f"the features ({needed / 2**30:.2f} GiB) would take more than half the free memory"
    if needed > disk / 2:
        return f"the features ({needed / 2**30:.2f} GiB) would take more than half the free disk at {cache_dir}"
    return None


def resolve_cache_dir(
    cache_dir: str | None, dataset: Any, teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor],
    input_column: str, modality: str, max_length: int, with_logits: bool, examples_drawn: int | None = None,
) -> str | None:
    """The folder of the teacher-feature cache of a run, or None when the teacher runs live: ``cache_dir`` as
    given, and for ``auto`` :func:`auto_cache_dir` unless :func:`auto_cache_refusal` finds a reason not to."""
    if cache_dir != AUTO_CACHE:
        return cache_dir
    folder = auto_cache_dir()
    reason = auto_cache_refusal(dataset, teacher, processor, extractors, input_column, modality, max_length,
                                with_logits, folder, examples_drawn)
    if reason is not None:
        logger.info("teacher_cache auto: the teacher runs live, as %s", reason)
        return None
    logger.info("teacher_cache auto: the teacher's features are computed once, into %s", folder)
    return folder
