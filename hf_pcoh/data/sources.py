"""Reading a data set from wherever ``datasets`` reads one, and the first rows of a streamed split.

``dataset_name`` is, in the order tried: a built-in offline set (:data:`hf_pcoh.data.BUILTIN_DATASETS`), a
folder written by ``save_to_disk``, a folder of data files (``load_dataset(folder)`` infers csv, json,
parquet, text, images...), a packaged format (``csv``, ``json``, ``parquet``, ``text``, ``imagefolder``...)
with ``data_files``, or a Hub data set (``owner/name`` or ``name``, with an optional configuration). With
``streaming`` every split is an ``IterableDataset``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from itertools import islice
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, DatasetInfo, IterableDataset, IterableDatasetDict
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

from ..errors import unknown_name_message

logger = logging.getLogger(__name__)

# Rows of a streamed training split checked before training (texts, precomputed embeddings); the rest as they come.
STREAMED_ROWS_CHECKED = 256
# The files save_to_disk writes at the top of its folder (a DatasetDict, or a single Dataset).
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")


def parse_data_files(entries: list[str] | None) -> dict[str, list[str]] | None:
    """``["train=a.csv", "b.csv", "test=c.csv"]`` -> ``{"train": ["a.csv", "b.csv"], "test": ["c.csv"]}``; an
    entry without ``SPLIT=`` belongs to the training split, a folder stands for every file under it."""
    if not entries:
        return None
    files: dict[str, list[str]] = {}
    for entry in entries:
        split, separator, path = entry.partition("=")
        if not separator or os.path.exists(entry):  # a path that holds '=' is a path
            split, path = "train", entry
        if not split or not path:
            raise ValueError(f"dataset_files: {entry!r} is not PATH or SPLIT=PATH (e.g. train=data/train.csv)")
        if os.path.isdir(path):
            path = os.path.join(path, "**")
        files.setdefault(split, []).append(path)
    return files


def is_saved_dataset(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in SAVED_DATASET_FILES)


def load_any_dataset(
    name: str,
    config_name: str | None,
    data_files: dict[str, list[str]] | None,
    streaming: bool,
    builtin: dict[str, Callable[[], DatasetDict]],
) -> DatasetDict | IterableDatasetDict:
    """The splits of ``name`` as a ``DatasetDict`` (an ``IterableDatasetDict`` when ``streaming``)."""
    if name in builtin or (os.path.isdir(name) and is_saved_dataset(name)):
        if data_files:
            raise ValueError(f"dataset_files applies to data files or a Hub data set, not to {name!r}: drop it, or give "
                             "--dataset_name csv / json / parquet / text / imagefolder with the files")
        if name in builtin:
            splits = builtin[name]()
        else:
            try:
                splits = load_saved_dataset(name)
            except (OSError, ValueError, KeyError, IndexError) as error:  # a damaged folder (Arrow, JSON)
                raise ValueError(f"dataset_name={name!r}: datasets could not read this save_to_disk folder "
                                 f"({type(error).__name__}: {error}): save the data set again") from None
        return as_streamed(splits) if streaming else splits
    if name in _PACKAGED_DATASETS_MODULES and not data_files and not os.path.isdir(name):
        raise ValueError(f"dataset_name={name!r} reads data files: give them with --dataset_files (e.g. "
                         f"train=data/train.{name if name in ('csv', 'json', 'parquet') else 'txt'})")
    check_data_files(data_files)
    try:
        loaded = datasets.load_dataset(name, config_name, data_files=data_files, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds; the user needs one message
        raise ValueError(load_failure_message(name, error, builtin, data_files)) from None
    if isinstance(loaded, (Dataset, IterableDataset)):  # a split was named inside data_files' single list
        loaded = (IterableDatasetDict if streaming else DatasetDict)({"train": loaded})
    return loaded


def load_saved_dataset(folder: str) -> DatasetDict:
    """The splits of a ``save_to_disk`` folder; a split saved with no rows is an empty ``Dataset`` (datasets
    cannot read one back: it has no Arrow file), so that the caller can say which split is empty."""
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        with open(os.path.join(folder, "dataset_dict.json"), encoding="utf-8") as stream:
            names = json.load(stream).get("splits", [])
        return DatasetDict({name: load_saved_split(os.path.join(folder, name)) for name in names})
    return DatasetDict({"train": load_saved_split(folder)})


def load_saved_split(folder: str) -> Dataset:
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as stream:
        saved_without_rows = not json.load(stream).get("_data_files")
    if saved_without_rows:
        features = DatasetInfo.from_directory(folder).features
        return Dataset.from_dict({column: [] for column in features or {}}, features=features)
    return Dataset.load_from_disk(folder)


def check_data_files(data_files: dict[str, list[str]] | None) -> None:
    """An empty data file (0 bytes) is named before ``datasets`` reads it (it would fail without saying which)."""
    for split, paths in (data_files or {}).items():
        for path in paths:
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                raise ValueError(f"dataset_files: {path} (split {split!r}) is empty: give a file that holds the "
                                 "split's rows (a text file: one example per line)")


def load_failure_message(name: str, error: Exception, builtin: dict[str, Any],
                         data_files: dict[str, list[str]] | None = None) -> str:
    reason = f"{type(error).__name__}: {error}"
    if os.path.exists(name):
        return f"dataset_name={name!r}: datasets could not read it ({reason})"
    if data_files and name in _PACKAGED_DATASETS_MODULES:  # the files were read, not a Hub data set looked up
        empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(error))
        splits = [empty.group(1)] if empty and empty.group(1) in data_files else list(data_files)
        files = ", ".join(f"{split}={path}" for split in splits for path in data_files[split])
        if empty:
            return (f"dataset_files ({files}): the {name} file(s) hold no rows (a header only?): give files that hold "
                    "the split's rows")
        return (f"dataset_name={name!r} could not read dataset_files ({files}) ({reason}): check that the files are "
                f"{name} files, or give the --dataset_name of their format")
    if "/" not in name:  # a name without an owner may be a built-in set mistyped, or an offline Hub id
        return (f"dataset_name: {unknown_name_message('built-in dataset', name, list(builtin))} It is not a folder "
                f"either, and datasets.load_dataset could not load it as a Hub data set ({reason}). Offline? Give a "
                "folder (save_to_disk or data files) or a packaged format (csv, json, parquet, text, imagefolder) "
                "with --dataset_files.")
    return (f"dataset_name={name!r}: could not load it ({reason}). Offline? Use a built-in set ({', '.join(builtin)}), "
            "a local folder (save_to_disk or data files), or a packaged format with --dataset_files.")


def as_streamed(splits: DatasetDict) -> IterableDatasetDict:
    """A ``DatasetDict`` read as a stream, split by split (what ``--streaming`` gives a local or built-in set)."""
    return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in splits.items()})


def is_streamed(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset)


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The columns of a split; a streamed one whose format does not declare them shows them in its first row."""
    names = dataset.column_names
    if names is None:
        first = next(iter(dataset.take(1)), None)
        names = list(first) if first is not None else []
    return list(names)


def resolved_features(dataset: IterableDataset) -> IterableDataset:
    """A streamed split whose features are known (csv and json streams only learn them from their first rows)."""
    return dataset if dataset.features is not None else dataset._resolve_features()


def first_rows(dataset: Dataset | IterableDataset, count: int) -> Dataset:
    """The first ``count`` rows as a map-style ``Dataset``: a slice of a ``Dataset``, read from a stream otherwise
    (what evaluation, the probe and the automatic layer choice work on)."""
    if isinstance(dataset, Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return Dataset.from_list(list(islice(iter(dataset), count)), features=dataset.features)
