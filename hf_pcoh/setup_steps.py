"""The optional steps of a run's setup: choosing the teacher layers by knowledge quality (``teacher_layers: auto``)
and adding the cached teacher features to the training set (``teacher_cache``).

:func:`hf_pcoh.setup.build_setup` runs them once its data, models and collator are built; ``hf-pcoh
select-layers`` runs the first one alone.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from .collator import DistillationCollator
from .config import DistillationConfig
from .data import first_rows, is_streamed
from .features import FeatureExtractor
from .layers import LayerChoice, choose_teacher_layers
from .models import release_weights
from .teacher_cache import add_cached_teacher_features, cache_workers
from .teacher_cache_auto import resolve_cache_dir

logger = logging.getLogger(__name__)


def choose_layers_by_quality(
    config: DistillationConfig, teacher: PreTrainedModel, collator: DistillationCollator, train_dataset: Any,
    teacher_pooling: str, top_k: int,
) -> LayerChoice:
    """Score every teacher layer by knowledge quality on the training set, its features pooled with
    ``teacher_pooling``; the top ``top_k`` are chosen."""
    dataset = train_dataset
    if is_streamed(dataset):  # the layers are scored on a sample: the stream's first rows
        dataset = first_rows(dataset, config.layer_selection_samples)
    return choose_teacher_layers(
        teacher, collator.teacher_processor, dataset, collator.teacher_column, collator.label_column,
        collator.modality, teacher_pooling, top_k=top_k, num_samples=config.layer_selection_samples,
        max_length=config.max_length, device=config.device, seed=config.seed,
    )


def examples_drawn(config: DistillationConfig) -> int | None:
    """Training examples a ``max_steps`` run draws (steps x batch per device x accumulation x processes), or
    None for a run counted in epochs (each row is then drawn about ``num_train_epochs`` times)."""
    if config.max_steps is None or config.max_steps <= 0:
        return None
    return (config.max_steps * config.per_device_train_batch_size * config.gradient_accumulation_steps
            * max(1, config.world_size))


def training_passes(config: DistillationConfig, train_dataset: Any) -> float | None:
    """How many times the run goes over the training set: examples drawn / rows for a ``max_steps`` run, else
    ``num_train_epochs``; None for a streamed set."""
    if not isinstance(train_dataset, Dataset) or len(train_dataset) == 0:
        return None
    drawn = examples_drawn(config)
    return drawn / len(train_dataset) if drawn is not None else float(config.num_train_epochs)


def mixed_precision(config: DistillationConfig) -> torch.dtype | None:
    """The dtype the Trainer autocasts to (``--bf16`` / ``--fp16``), which a training step runs the teacher under."""
    return torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None


def evaluation_needs_teacher(config: DistillationConfig) -> bool:
    """Whether the run embeds held-out rows with the teacher: at each evaluation during training
    (``eval_strategy``), or after it (``evaluate_after_training``)."""
    return config.evaluate_after_training or config.eval_strategy != "no"


def with_cached_teacher_features(
    config: DistillationConfig, teacher: PreTrainedModel, collator: DistillationCollator, train_dataset: Dataset,
    teacher_extractors: Sequence[FeatureExtractor],
) -> Dataset:
    """The training set with the teacher's features of every layer pair as columns, read from or written to the cache.

    Every process runs this: with several, each computes its share of the rows and one merges them
    (:mod:`hf_pcoh.teacher_cache`; the processes of each node share a cache of their own when the nodes do not
    share storage, as ``save_on_each_node`` says).

    Once cached, the teacher's weights are freed (:func:`hf_pcoh.models.release_weights`: ``setup.teacher`` keeps
    its config and size, on the meta device) unless an evaluation needs the live teacher: the held-out rows are
    not cached, so with ``evaluate_after_training`` (the default) or an ``eval_strategy`` the teacher is kept
    (``--evaluate_after_training false`` and ``hf-pcoh evaluate`` afterwards frees it for training).
    """
    if collator.next_token_labels and config.logit_kd_weight > 0:
        logger.info("teacher_cache auto: logit KD over the vocabulary reads the teacher's [T, V] logits of every row, "
                    "too large to cache: the teacher runs live")
        return train_dataset
    extractors = list(teacher_extractors)
    with_logits = config.logit_kd_weight > 0
    autocast_dtype = mixed_precision(config)
    workers = cache_workers(teacher, socket.gethostname() if config.save_on_each_node else "")
    cache_dir = resolve_cache_dir(
        config.teacher_cache, train_dataset, teacher, collator.teacher_processor, extractors, collator.teacher_column,
        collator.modality, config.max_length, with_logits, passes=training_passes(config, train_dataset),
        timeout_seconds=config.ddp_timeout, device=config.device, autocast_dtype=autocast_dtype, workers=workers,
    )
    if cache_dir is None:  # teacher_cache auto, and the teacher stays live
        return train_dataset
    cached = add_cached_teacher_features(
        train_dataset, cache_dir, teacher, collator.teacher_processor, extractors, collator.teacher_column,
        collator.modality, config.max_length, with_logits=with_logits, device=config.device,
        autocast_dtype=autocast_dtype, workers=workers,
    )
    if not evaluation_needs_teacher(config):
        release_weights(teacher)
        logger.info("teacher_cache: every training step reads the cached features and no evaluation runs the teacher, "
                    "so its weights are freed")
    return cached
