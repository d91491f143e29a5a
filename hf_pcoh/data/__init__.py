"""Loaders for the data sets that work offline here, and for any ``datasets`` source."""

from __future__ import annotations

import functools
import os
from typing import Callable

import datasets
from datasets import DatasetDict

from ..errors import unknown_name_message
from .digits import load_digits_dataset
from .fashion_mnist import load_fashion_mnist
from .wordnet import load_wordnet_glosses

# Parsed once per process: the files never change, and a DatasetDict is immutable (shuffle/select copy).
BUILTIN_DATASETS: dict[str, Callable[[], DatasetDict]] = {
    "wordnet_glosses": functools.cache(load_wordnet_glosses),
    "fashion_mnist": functools.cache(load_fashion_mnist),
    "digits": functools.cache(load_digits_dataset),
}


def load_splits(name: str, config_name: str | None = None) -> DatasetDict:
    """A built-in data set by name, a ``save_to_disk`` folder, or a Hub data set, as a ``DatasetDict``."""
    if name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[name]()
    if os.path.isdir(name):
        loaded = datasets.load_from_disk(name)
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if "/" not in name:
        raise ValueError(f"dataset_name: {unknown_name_message('built-in dataset', name, list(BUILTIN_DATASETS))} "
                         "Or give a folder saved with save_to_disk, or a Hub id 'owner/name'.")
    try:
        return datasets.load_dataset(name, config_name)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds; the user needs one message
        raise ValueError(
            f"dataset_name={name!r}: could not load it ({type(error).__name__}: {error}). Offline? Use a built-in "
            f"set ({', '.join(BUILTIN_DATASETS)}) or a local folder saved with save_to_disk."
        ) from None


__all__ = ["BUILTIN_DATASETS", "load_digits_dataset", "load_fashion_mnist", "load_splits", "load_wordnet_glosses"]
