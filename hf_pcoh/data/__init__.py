"""Loaders for the data sets that work offline here, and for any ``datasets`` source."""

from __future__ import annotations

import functools
from typing import Callable

from datasets import DatasetDict, IterableDatasetDict

from .digits import load_digits_dataset
from .fashion_mnist import load_fashion_mnist
from .sources import first_rows, is_streamed, load_any_dataset, parse_data_files
from .wordnet import load_wordnet_glosses

# Parsed once per process: the files never change, and a DatasetDict is immutable (shuffle/select copy).
BUILTIN_DATASETS: dict[str, Callable[[], DatasetDict]] = {
    "wordnet_glosses": functools.cache(load_wordnet_glosses),
    "fashion_mnist": functools.cache(load_fashion_mnist),
    "digits": functools.cache(load_digits_dataset),
}


def load_splits(
    name: str, config_name: str | None = None, data_files: list[str] | None = None, streaming: bool = False
) -> DatasetDict | IterableDatasetDict:
    """The splits of a built-in data set, a ``save_to_disk`` folder, a folder of data files, a packaged format
    (``csv``, ``json``, ``parquet``, ``text``, ``imagefolder``...) with ``data_files`` (``PATH`` or
    ``SPLIT=PATH``), or a Hub data set; streamed (an ``IterableDatasetDict``) with ``streaming``."""
    return load_any_dataset(name, config_name, parse_data_files(data_files), streaming, BUILTIN_DATASETS)


__all__ = ["BUILTIN_DATASETS", "first_rows", "is_streamed", "load_digits_dataset", "load_fashion_mnist", "load_splits",
           "load_wordnet_glosses"]
