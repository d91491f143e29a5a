"""Precompute the teacher's features once (``--teacher_cache DIR``) and train without the teacher in the loop.

The features of every layer pair (and the logits, when logit KD needs them) are added to the training
set as columns by a batched ``datasets.map`` and saved as Arrow under ``DIR/<fingerprint>``. The
fingerprint covers the teacher's weights and config, its processor, the layers, pooling and post-pooling
(Dense, Normalize), the exact training rows and the mixed precision the teacher ran under, so any change to
them computes a new cache instead of reading a stale one. It is computed once, by the main process (the
weights are hashed once), and broadcast to the others. A cache that cannot be read whole (a truncated Arrow
file, rows or columns missing) is computed again, with a warning.
Cached features are only right when every epoch shows the teacher the same inputs: a data set with an
on-the-fly transform (augmentation) is refused.
Texts are embedded in order of length (as sentence-transformers' ``encode`` does), so that each batch is
padded to about its own texts' length; the rows are stored in the training set's order. Under ``--bf16`` /
``--fp16`` the teacher runs under the same autocast as in a training step; the features are stored in float32.

**Several processes share the pass** (:class:`CacheWorkers`): each runs the teacher over its contiguous share of
the training rows and writes it under ``DIR/<fingerprint>.shards/``; once the last share is written, one process
merges them, in order, into the very cache one process would have written (same fingerprint, rows and columns),
which every process then reads. A process waits only for the slowest share and the merge, never for a whole
pass, so a long pass no longer runs into ``ddp_timeout``. The processes that share a folder are all of them, or
each node's with ``save_on_each_node`` (nodes without shared storage). A process whose teacher is not whole (left
on the meta device by FSDP's ``cpu_ram_efficient_loading``, partitioned by ZeRO-3) computes no share.

``--teacher_cache auto`` decides whether a run caches: :mod:`hf_pcoh.teacher_cache_auto`. Each cache keeps a record
of its teacher, layers, rows and date, which ``hf-pcoh cache list`` shows and ``hf-pcoh cache clear`` chooses by
(:mod:`hf_pcoh.teacher_cache_store`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import datasets
import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from datasets import Dataset

from .collator import CACHED_LOGITS_COLUMN, cached_feature_column, process
from .distributed import world_size
from .features import FeatureExtractor
from .frozen_teacher import run_teacher
from .run_sources import model_label
from .teacher_cache_store import cache_record, write_record

logger = logging.getLogger(__name__)

Value = TypeVar("Value")

# ---- the fingerprint -------------------------------------------------------------------------------------


def teacher_fingerprint(
    teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor], dataset: Dataset,
    input_column: str, max_length: int, with_logits: bool, autocast_dtype: torch.dtype | None = None,
) -> str:
    """A digest of everything the cached features depend on (the teacher's weights hashed whole: call it on one
    process, :func:`from_main_process`)."""
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
    if autocast_dtype is not None:  # (absent in full precision: the caches written before this key stay valid)
        settings["autocast"] = str(autocast_dtype)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


# ---- the processes that share the pass -------------------------------------------------------------------


@dataclass(frozen=True)
class CacheWorkers:
    """The processes that write one cache folder, and which of them run the teacher over a share of the rows."""

    rank: int = 0  # this process
    group: tuple[int, ...] = (0,)  # the processes that share this cache folder (its storage), in rank order
    computing: tuple[int, ...] = (0,)  # those of them whose teacher is whole: each computes a contiguous share

    @property
    def merger(self) -> int:
        """The process that merges the group's shares into the cache."""
        return self.group[0]

    @property
    def alone(self) -> bool:
        """One process computes every row and writes the cache itself, with no shares to merge."""
        return self.computing == (self.merger,)

    def share(self, rows: int) -> range:
        """This process's contiguous share of ``rows`` training rows (empty when it computes none)."""
        if self.rank not in self.computing:
            return range(0)
        index, count = self.computing.index(self.rank), len(self.computing)
        return range(rows * index // count, rows * (index + 1) // count)


def teacher_is_whole(teacher: torch.nn.Module) -> bool:
    """Whether this process holds all of the teacher's weights (none left on the meta device, none partitioned)."""
    return not any(parameter.is_meta or hasattr(parameter, "ds_id") for parameter in teacher.parameters())


def cache_workers(teacher: torch.nn.Module, storage: str = "") -> CacheWorkers:
    """Who computes which rows: every process whose teacher is whole, among those on the same ``storage`` (one
    gather of a flag per process; on one process, itself)."""
    if world_size() == 1:
        return CacheWorkers()
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, (storage, teacher_is_whole(teacher)))
    group = tuple(rank for rank, (shared, _) in enumerate(gathered) if shared == storage)
    return CacheWorkers(dist.get_rank(), group, tuple(rank for rank in group if gathered[rank][1]))


def from_main_process(compute: Callable[[], Value]) -> Value:
    """``compute()`` run by the main process alone, its result handed to every process (one broadcast); an
    error there is raised on every process rather than leaving the others waiting."""
    if world_size() == 1:
        return compute()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, compute())]
        except Exception as error:
            dist.broadcast_object_list([(False, f"{type(error).__name__}: {error}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    done, value = box[0]
    if not done:
        raise RuntimeError(f"the main process failed while preparing the teacher cache: {value}")
    return value


def every_process(value: Value) -> list[Value]:
    """``value`` of every process, in rank order (a gather, so every process waits here for the slowest)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


# ---- computing and storing the features ------------------------------------------------------------------


def teacher_feature_rows(
    dataset: Dataset, teacher: torch.nn.Module, processor: Any, extractors: list[FeatureExtractor], input_column: str,
    modality: str, max_length: int, with_logits: bool, device: torch.device | str, batch_size: int,
    autocast_dtype: torch.dtype | None, fingerprint: str,
) -> Dataset:
    """``dataset`` with the teacher's feature columns (float32), computed in order of length, rows in its own order."""
    teacher.eval().to(device)
    weights_dtype = next(teacher.parameters()).dtype
    device_type = torch.device(device).type

    def teacher_columns(batch: dict[str, list[Any]]) -> dict[str, Any]:
        inputs = process(processor, batch[input_column], modality, max_length)
        # floating inputs (pixel_values) in the teacher's own dtype, as a training step gives them (teacher_dtype)
        inputs = {name: tensor.to(device=device, dtype=weights_dtype if tensor.is_floating_point() else None)
                  for name, tensor in inputs.items()}
        precision = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
                     else contextlib.nullcontext())
        with precision:
            features, logits = run_teacher(teacher, inputs, extractors)
        columns: dict[str, Any] = {}
        for index, feature in enumerate(features):
            if feature.values.dim() != 2:
                raise ValueError("teacher_cache stores pooled features; pooling 'none' (tokens) cannot be cached")
            columns[cached_feature_column(index)] = feature.values.float().cpu().numpy()
        if with_logits:
            columns[CACHED_LOGITS_COLUMN] = logits.float().cpu().numpy()
        return columns

    order = np.argsort([len(text) for text in dataset[input_column]], kind="stable") if modality == "text" else None
    source = dataset if order is None else dataset.select(order)  # texts of similar length share a batch
    cached = source.map(teacher_columns, batched=True, batch_size=batch_size, desc="teacher features",
                        load_from_cache_file=False, new_fingerprint=fingerprint)
    return cached if order is None else cached.select(np.argsort(order))  # back to the dataset's order


def save_atomically(dataset: Dataset, target: str, record: dict[str, Any] | None = None) -> None:
    """``dataset`` saved as ``target`` (with the cache's ``record`` inside), replacing whatever was there; an
    interrupted save never leaves a half-written folder under that name."""
    partial = f"{target}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    dataset.save_to_disk(partial)
    if record is not None:
        write_record(partial, record)
    if os.path.lexists(target):
        remove_cache(target)
    os.replace(partial, target)


def shard_folder(target: str, index: int, count: int) -> str:
    return os.path.join(f"{target}.shards", f"{index:05d}-of-{count:05d}")


def merge_shards(target: str, count: int, record: dict[str, Any] | None = None) -> None:
    """The ``count`` shares of the rows, in order, saved as the cache ``target``; the shares then removed."""
    shares = [datasets.load_from_disk(shard_folder(target, index, count)) for index in range(count)]
    save_atomically(datasets.concatenate_datasets(shares), target, record)
    del shares
    shutil.rmtree(f"{target}.shards", ignore_errors=True)


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
    autocast_dtype: torch.dtype | None = None,
    workers: CacheWorkers | None = None,
) -> Dataset:
    """``dataset`` with a ``teacher_features_<i>`` column per layer pair (and ``teacher_logits``), cached on disk.

    Every process calls it; each computes its share of the rows (``workers``, default :func:`cache_workers`), one
    merges the shares, all read the cache. ``autocast_dtype``: the mixed precision the teacher runs under."""
    refuse_augmented(dataset)
    workers = workers if workers is not None else cache_workers(teacher)
    fingerprint = from_main_process(lambda: teacher_fingerprint(  # the module's own name: benchmarks time it
        teacher, processor, extractors, dataset, input_column, max_length, with_logits, autocast_dtype))
    target = os.path.join(cache_dir, fingerprint)
    columns = [cached_feature_column(index) for index in range(len(extractors))]
    columns += [CACHED_LOGITS_COLUMN] if with_logits else []
    cached, problem = read_cache(target, len(dataset), columns) if os.path.lexists(target) else (None, "missing")
    problems = every_process(problem)
    if not any(problems):
        logger.info("reading cached teacher features from %s", target)
        return cached
    if problem not in (None, "missing") and workers.rank == workers.merger:
        logger.warning("the teacher-feature cache %s is damaged (%s), perhaps by a run killed or a disk filled while "
                       "it was written: computing it again", target, problem)
    del cached
    if not workers.computing:
        raise ValueError("teacher_cache: no process holds the teacher's whole weights (FSDP's cpu_ram_efficient_loading "
                         "or ZeRO-3 left them partitioned), so none can run it over the training rows: drop "
                         "--teacher_cache, or load the teacher whole on at least one process")
    share = workers.share(len(dataset))
    record = cache_record(fingerprint, model_label(teacher), [extractor.layer for extractor in extractors],
                          [extractor.pooling for extractor in extractors], len(dataset), with_logits)
    if workers.alone and world_size() > 1 and workers.rank == workers.merger:
        logger.warning("teacher_cache: only process %d holds the teacher's whole weights, so it computes every row "
                       "while the others wait (under ddp_timeout)", workers.rank)

    def compute_share() -> None:  # this process's rows; the whole cache when it computes alone
        if not len(share):
            return
        rows = dataset if len(share) == len(dataset) else dataset.select(share)
        features = teacher_feature_rows(rows, teacher, processor, extractors, input_column, modality, max_length,
                                        with_logits, device, batch_size, autocast_dtype,
                                        f"{fingerprint}-{share.start}-{share.stop}")
        index, count = workers.computing.index(workers.rank), len(workers.computing)
        if workers.alone:
            save_atomically(features, target, record)
        else:
            save_atomically(features, shard_folder(target, index, count))

    began = time.perf_counter()
    computed = run_then_wait(compute_share, "computing a share of the teacher's features")  # the pass's only wait
    logger.info("teacher features: process %d ran the teacher over %d rows (%d to %d of %d) in %.1f s, then waited "
                "%.1f s for the other shares, into %s", workers.rank, len(share), share.start, share.stop - 1,
                len(dataset), computed, time.perf_counter() - began - computed, target)
    merges = not workers.alone and workers.rank == workers.merger
    run_then_wait(lambda: merge_shards(target, len(workers.computing), record) if merges else None, "merging the shares")
    cached, problem = read_cache(target, len(dataset), columns)
    if cached is None:
        raise RuntimeError(f"teacher_cache: the cache {target} just written cannot be read ({problem})")
    return cached


def run_then_wait(work: Callable[[], None], what: str) -> float:
    """``work()`` on this process, then a wait for every process to finish its own; a failure anywhere is raised on
    every process (the failing one raises its own error), none is left waiting. Returns the seconds ``work`` took."""
    began, failure = time.perf_counter(), None
    try:
        work()
    except Exception as error:
        if world_size() == 1:
            raise
        failure = error
    seconds = time.perf_counter() - began
    errors = every_process(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = [(rank, error) for rank, error in enumerate(errors) if error is not None]
    if failed:
        raise RuntimeError(f"teacher_cache: {what} failed on process {failed[0][0]}: {failed[0][1]}")
    return seconds


def refuse_augmented(dataset: Dataset) -> None:
    if dataset.format.get("type") == "custom":
        raise ValueError(
            "teacher_cache: the training set has an on-the-fly transform (set_transform / with_transform), so the "
            "teacher would see different inputs each epoch and cached features would be wrong; drop --teacher_cache "
            "or remove the augmentation"
        )


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
