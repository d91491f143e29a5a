"""The teacher-feature caches on disk: the record each one keeps of what it holds, and finding, choosing and removing
them (``hf-pcoh cache list`` / ``hf-pcoh cache clear``).

A cache is a folder named by its 24-hex-digit fingerprint (:func:`hf_pcoh.teacher_cache.teacher_fingerprint`),
written by ``datasets.Dataset.save_to_disk``, under the ``--teacher_cache DIR`` of a run, or under
:func:`auto_cache_dir` (``HF_DATASETS_CACHE/hf_pcoh_teacher_features``) for ``teacher_cache: auto``. Beside its
Arrow files it keeps :data:`RECORD_FILE`: the teacher, the layers, the rows and when it was written. An interrupted
pass may leave ``<fingerprint>.partial`` (a save not finished) or ``<fingerprint>.shards`` (the processes' shares
not merged yet) beside it.

Only folders that are hf_pcoh's are ever listed or removed: a fingerprint-named folder holding a record, or
(caches written before records were kept) a saved data set with a ``teacher_features_0`` column, and the leftovers
named after a fingerprint. Anything else in the folder, like every other entry of the datasets cache, is left alone;
symbolic links are never followed nor removed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import datasets

from .artifacts import write_json
from .version import __version__

logger = logging.getLogger(__name__)

CACHE_FOLDER_NAME = "hf_pcoh_teacher_features"  # under HF_DATASETS_CACHE, for teacher_cache: auto
RECORD_FILE = "hf_pcoh_teacher_cache.json"  # inside each cache folder
FINGERPRINT = re.compile(r"^[0-9a-f]{24}$")
LEFTOVER = re.compile(r"^([0-9a-f]{24})\.(partial|shards)$")
FIRST_FEATURE_COLUMN = "teacher_features_0"  # collator.cached_feature_column(0), the column every cache has


def auto_cache_dir() -> str:
    """Where ``teacher_cache: auto`` keeps the features: beside datasets' own cache (``HF_DATASETS_CACHE``)."""
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), CACHE_FOLDER_NAME)


def cache_record(fingerprint: str, teacher: str, layers: Sequence[Any], poolings: Sequence[Any], rows: int,
                 with_logits: bool) -> dict[str, Any]:
    """What a cache folder records of itself (:data:`RECORD_FILE`)."""
    return {
        "fingerprint": fingerprint,
        "teacher": teacher,
        "layers": [str(layer) for layer in layers],
        "poolings": [str(pooling) for pooling in poolings],
        "rows": rows,
        "logits": with_logits,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hf_pcoh_version": __version__,
    }


def write_record(folder: str, record: dict[str, Any]) -> None:
    write_json(os.path.join(folder, RECORD_FILE), record)


# ---- finding the caches --------------------------------------------------------------------------------------


@dataclass
class TeacherCache:
    """One cached teacher-feature set: its fingerprint and what it holds (``teacher`` None and ``rows`` None when
    not known: a cache written before records were kept, or a pass that never finished), its folders and their size."""

    fingerprint: str
    cache_dir: str
    teacher: str | None = None
    layers: list[str] = field(default_factory=list)
    rows: int | None = None
    created: str | None = None
    complete: bool = True  # False: only leftovers of an interrupted pass
    paths: list[str] = field(default_factory=list)  # the cache folder and any leftovers, all removed together
    size: int = 0  # bytes on disk

    def matches(self, fingerprints: Sequence[str] = (), teacher: str | None = None) -> bool:
        """Whether this cache is chosen by a fingerprint (or its first digits) and a teacher (a name or a pattern)."""
        if fingerprints and not any(self.fingerprint.startswith(given.lower()) for given in fingerprints):
            return False
        return teacher is None or (self.teacher is not None and (self.teacher == teacher
                                                                 or fnmatch.fnmatchcase(self.teacher, teacher)))


def disk_size(path: str) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    if os.path.isfile(path) and not os.path.islink(path):
        return os.path.getsize(path)
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            file = os.path.join(directory, name)
            if not os.path.islink(file):
                total += os.path.getsize(file)
    return total


def read_record(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, RECORD_FILE), encoding="utf-8") as stream:
            record = json.load(stream)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def saved_feature_columns(folder: str) -> list[str]:
    """The columns of a ``save_to_disk`` folder (its ``dataset_info.json``), or none when it is not one."""
    try:
        with open(os.path.join(folder, "dataset_info.json"), encoding="utf-8") as stream:
            features = json.load(stream).get("features")
    except (OSError, ValueError, AttributeError):
        return []
    return list(features) if isinstance(features, dict) else []


def describe_folder(cache: TeacherCache, folder: str) -> bool:
    """Fill ``cache`` from a fingerprint-named folder; False when the folder is not a teacher-feature cache."""
    record = read_record(folder)
    columns = saved_feature_columns(folder)
    if record is None and FIRST_FEATURE_COLUMN not in columns:
        return False
    if record is not None:
        cache.teacher, cache.rows, cache.created = record.get("teacher"), record.get("rows"), record.get("created")
        cache.layers = [str(layer) for layer in record.get("layers") or []]
    else:  # written before records were kept: its layers by their columns, its rows by reading it
        cache.layers = [f"{len([name for name in columns if name.startswith('teacher_features_')])} layer(s)"]
        try:
            cache.rows = datasets.load_from_disk(folder).num_rows
        except Exception as error:  # a damaged cache is listed (and can be cleared), never raised here
            logger.warning("the teacher-feature cache %s cannot be read (%s)", folder, error)
    if cache.created is None:
        cache.created = datetime.fromtimestamp(os.path.getmtime(folder), timezone.utc).isoformat(timespec="seconds")
    return True


def find_caches(cache_dirs: Iterable[str]) -> list[TeacherCache]:
    """The teacher-feature caches under each of ``cache_dirs`` (missing folders have none), oldest first."""
    found: list[TeacherCache] = []
    for cache_dir in dict.fromkeys(os.path.abspath(os.path.expanduser(folder)) for folder in cache_dirs):
        if not os.path.isdir(cache_dir):
            continue
        caches: dict[str, TeacherCache] = {}
        for name in sorted(os.listdir(cache_dir)):
            path = os.path.join(cache_dir, name)
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            leftover = LEFTOVER.match(name)
            fingerprint = name if FINGERPRINT.match(name) else leftover.group(1) if leftover else None
            if fingerprint is None:
                continue
            cache = caches.setdefault(fingerprint, TeacherCache(fingerprint, cache_dir, complete=False))
            if leftover is None:
                if not describe_folder(cache, path):
                    continue
                cache.complete = True
            cache.paths.append(path)
            cache.size += disk_size(path)
        found += [cache for cache in caches.values() if cache.paths]
    for cache in found:
        if cache.created is None:  # leftovers only
            cache.created = datetime.fromtimestamp(min(os.path.getmtime(path) for path in cache.paths),
                                                   timezone.utc).isoformat(timespec="seconds")
    return sorted(found, key=lambda cache: (cache.created or "", cache.fingerprint))


def remove_caches(caches: Iterable[TeacherCache]) -> list[TeacherCache]:
    """Remove each cache's folders (the cache and its leftovers); returns those removed."""
    removed = []
    for cache in caches:
        for path in cache.paths:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
        removed.append(cache)
    return removed


def format_bytes(size: float) -> str:
    """``1.2 MB``: a size on disk in decimal units."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def describe_cache(cache: TeacherCache) -> str:
    """One line: fingerprint, teacher, layers, rows, size on disk, created, folder."""
    teacher = cache.teacher or "unknown teacher (cached before hf_pcoh recorded it)"
    rows = f"{cache.rows:,} rows" if cache.rows is not None else "rows unknown"
    state = "" if cache.complete else "  [incomplete: an interrupted pass]"
    leftovers = len(cache.paths) - 1
    state += f"  (+{leftovers} leftover folder(s) of an interrupted pass)" if leftovers and cache.complete else ""
    return (f"{cache.fingerprint}  {teacher}  layers {','.join(cache.layers) or '?'}  {rows}  "
            f"{format_bytes(cache.size)}  created {cache.created}  {cache.paths[0]}{state}")
