"""``--teacher_cache auto``: whether a run caches the teacher's features, decided by the main process for all and
logged in one line saying what it chose and why (:func:`resolve_cache_dir`).

It caches, under ``HF_DATASETS_CACHE``, only when that is sure to be right, to fit and to pay: a map-style training
set without an on-the-fly transform, pooled features, features that take at most half the free memory and half the
free disk, a run that passes over the training set at least once (a ``max_steps`` run shorter than an epoch costs
less with the teacher live on the rows it draws; from one pass on, the cached pass, length-sorted, costs less than
the live teacher's epochs, as measured in docs/benchmarks.md, and training then runs without the teacher), and,
with several processes, a pass whose share per process is estimated to take less than half of ``ddp_timeout``
(:class:`PassEstimate`: about 2 x parameters x tokens FLOPs, at the rate the teacher ran a batch of training rows):
the pass is split between the processes (:mod:`hf_pcoh.teacher_cache`), but a process still waits for the slowest
share. Otherwise the teacher runs live, as without the option.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .collator import process
from .distributed import world_size
from .features import FeatureExtractor
from .frozen_teacher import run_teacher
from .models import count_parameters
from .teacher_cache import CacheWorkers, cache_workers, from_main_process, teacher_is_whole
from .teacher_cache_store import auto_cache_dir

logger = logging.getLogger(__name__)

AUTO_CACHE = "auto"  # teacher_cache: auto
SAFE_TIMEOUT_FRACTION = 0.5  # auto caches when a process's share of the pass takes less than this x ddp_timeout
PROBE_ROWS = 16  # rows of the batch the teacher's rate is timed on
TOKEN_SAMPLE_ROWS = 1000  # rows whose tokens are counted to estimate the training set's


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


@dataclass(frozen=True)
class PassEstimate:
    """The cost of one pass of the teacher over the training set: about ``2 * parameters * tokens`` FLOPs (a
    forward costs 2 FLOPs per parameter per token), at the rate the teacher ran a batch of training rows.

    ``tokens`` counts the texts' tokens after truncation at ``max_length`` (a sample's mean times the rows); an
    image counts as one, its cost per "token" then being timed whole on the batch, so the seconds hold either way."""

    parameters: int
    tokens: int
    flops_per_second: float

    @property
    def flops(self) -> float:
        return 2.0 * self.parameters * self.tokens

    @property
    def seconds(self) -> float:
        """One process running the whole pass."""
        return self.flops / self.flops_per_second

    def describe(self, processes: int) -> str:
        return (f"one pass, 2 x {self.parameters:.3g} parameters x {self.tokens:.3g} tokens = {self.flops:.2g} FLOPs "
                f"at the {self.flops_per_second:.2g} FLOP/s timed on a batch, takes about "
                f"{format_seconds(self.seconds / processes)} per process on {processes}")


def format_seconds(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def format_bytes(size: float) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if size >= 2**power:
            return f"{size / 2**power:.3g} {unit}"
    return f"{size / 2**10:.3g} KiB"


def count_tokens(dataset: Dataset, processor: Any, input_column: str, modality: str, max_length: int) -> int:
    """The training set's tokens after truncation (texts: counted on up to ``TOKEN_SAMPLE_ROWS`` evenly spaced
    rows, scaled to all), or its images."""
    if modality != "text":
        return len(dataset)
    picked = np.linspace(0, len(dataset) - 1, num=min(len(dataset), TOKEN_SAMPLE_ROWS)).round().astype(int)
    texts = list(dataset.select(np.unique(picked))[input_column])
    lengths = [len(ids) for ids in processor(texts, truncation=True, max_length=max_length)["input_ids"]]
    return max(1, round(float(np.mean(lengths)) * len(dataset)))


def probe_teacher(
    dataset: Dataset, teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor], input_column: str,
    modality: str, max_length: int, device: torch.device | str, autocast_dtype: torch.dtype | None,
) -> tuple[list[Any], torch.Tensor | None, float, int]:
    """``(features, logits, seconds, tokens)`` of the teacher on a batch of training rows, as the cached pass runs it:
    run once to warm up, then timed."""
    teacher.eval().to(device)
    rows = list(dataset.select(range(min(PROBE_ROWS, len(dataset))))[input_column])
    inputs = process(processor, rows, modality, max_length)
    weights_dtype = next(teacher.parameters()).dtype
    inputs = {name: tensor.to(device=device, dtype=weights_dtype if tensor.is_floating_point() else None)
              for name, tensor in inputs.items()}
    tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else len(rows)
    device_type = torch.device(device).type
    timings = []
    for _ in range(2):
        precision = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
                     else contextlib.nullcontext())
        began = time.perf_counter()
        with precision:
            features, logits = run_teacher(teacher, inputs, extractors)
        if device_type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - began)
    return features, logits, max(timings[-1], 1e-6), tokens


@dataclass(frozen=True)
class AutoCacheDecision:
    """What ``teacher_cache: auto`` chose for a run, and why (the line it logs)."""

    cache: bool
    reason: str


def auto_cache_decision(
    dataset: Any, teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor], input_column: str,
    modality: str, max_length: int, with_logits: bool, cache_dir: str, passes: float | None = None,
    processes: int = 1, timeout_seconds: float | None = None, device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> AutoCacheDecision:
    """Whether ``teacher_cache: auto`` caches the teacher's features of this run, and why.

    ``passes``: how many times the run goes over the training set (its epochs; examples drawn / rows for a
    ``max_steps`` run), when known. ``processes``: how many processes share the pass (those whose teacher is
    whole). ``timeout_seconds``: ``ddp_timeout`` when other processes wait for the pass (None on one process): a
    process's share must take less than ``SAFE_TIMEOUT_FRACTION`` of it.
    """
    def live(reason: str) -> AutoCacheDecision:
        return AutoCacheDecision(False, reason)

    if not isinstance(dataset, Dataset):
        return live("the training set is streamed")
    if dataset.format.get("type") == "custom":
        return live("the training set has an on-the-fly transform (augmentation): the teacher must see each epoch's "
                    "inputs")
    if len(dataset) < 2:
        return live("the training set has fewer than 2 rows")
    if passes is not None and passes < 1:
        return live(f"the run passes over the training set {passes:.3g} times, less than once: the teacher on the rows "
                    f"drawn costs less than on all {len(dataset)}")
    if not teacher_is_whole(teacher):
        return live("the main process does not hold the teacher's whole weights (left partitioned by FSDP or ZeRO-3)")
    device = device if device is not None else next(teacher.parameters()).device
    features, logits, seconds, batch_tokens = probe_teacher(dataset, teacher, processor, extractors, input_column,
                                                            modality, max_length, device, autocast_dtype)
    if any(feature.values.dim() != 2 for feature in features):
        return live("pooling 'none' gives tokens, and only pooled features are cached")
    width = sum(feature.dim for feature in features) + (logits.shape[-1] if with_logits and logits is not None else 0)
    needed = len(dataset) * width * 4  # float32
    memory, disk = available_memory(), free_disk(cache_dir)
    if memory is not None and needed > memory / 2:
        return live(f"the features ({needed / 2**30:.2f} GiB) would take more than half the free memory")
    if needed > disk / 2:
        return live(f"the features ({needed / 2**30:.2f} GiB) would take more than half the free disk at {cache_dir}")
    parameters = count_parameters(teacher)
    estimate = PassEstimate(parameters, count_tokens(dataset, processor, input_column, modality, max_length),
                            2.0 * parameters * batch_tokens / seconds)
    per_process = estimate.seconds / processes
    if timeout_seconds and per_process > SAFE_TIMEOUT_FRACTION * timeout_seconds:
        return live(f"{estimate.describe(processes)}, more than {SAFE_TIMEOUT_FRACTION:g} x the ddp_timeout "
                    f"({format_seconds(timeout_seconds)}) a process may wait for the others: raise --ddp_timeout or "
                    "give --teacher_cache DIR to cache anyway")
    how_often = "an unknown number of" if passes is None else f"{passes:.3g}"
    within = f", within {SAFE_TIMEOUT_FRACTION:g} x ddp_timeout" if timeout_seconds else ""
    return AutoCacheDecision(True, f"the run passes over the training set {how_often} times and "
                             f"{estimate.describe(processes)}{within}; the features take {format_bytes(needed)}")


def resolve_cache_dir(
    cache_dir: str | None, dataset: Any, teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor],
    input_column: str, modality: str, max_length: int, with_logits: bool, passes: float | None = None,
    timeout_seconds: float | None = None, device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None, workers: CacheWorkers | None = None,
) -> str | None:
    """The folder of the teacher-feature cache of a run, or None when the teacher runs live: ``cache_dir`` as
    given, and for ``auto`` :func:`auto_cache_dir` when :func:`auto_cache_decision`, taken by the main process
    for all, says so (one log line: what it chose and why). Every process calls it."""
    if cache_dir != AUTO_CACHE:
        return cache_dir
    workers = workers if workers is not None else cache_workers(teacher)
    folder = auto_cache_dir()
    decision = from_main_process(lambda: auto_cache_decision(
        dataset, teacher, processor, extractors, input_column, modality, max_length, with_logits, folder, passes,
        max(1, len(workers.computing)), timeout_seconds if world_size() > 1 else None, device, autocast_dtype))
    if workers.rank == 0:
        if decision.cache:
            logger.info("teacher_cache auto: the teacher's features are computed once, into %s: %s", folder,
                        decision.reason)
        else:
            logger.info("teacher_cache auto: the teacher runs live, as %s", decision.reason)
    return folder if decision.cache else None
