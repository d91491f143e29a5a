"""Checks of the inputs of the public metric functions: arrays, labels, ``k`` and counts.

Every metric validates at its boundary with these and raises an error that names the argument, the
value received and what would work; inside the package the checked arrays are trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]]
LabelsLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]


def as_matrix(name: str, value: ArrayLike) -> np.ndarray:
    """``value`` as a finite float64 ``[N, d]`` array, or an error naming the argument."""
    if isinstance(value, torch.Tensor):
        array = value.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be a [N, d] array of numbers with rows of equal length ({error})") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, d] with N, d >= 1, got shape {tuple(array.shape)}")
    non_finite = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if non_finite:
        raise ValueError(f"{name} contains {non_finite} non-finite values (NaN or inf); embed again without overflow")
    return array


def as_labels(name: str, value: LabelsLike, num_rows: int, rows_name: str) -> np.ndarray:
    """``value`` as a 1-D array with one label per row of ``rows_name``."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1 or len(array) != num_rows:
        raise ValueError(
            f"{name} must hold one label per row of {rows_name} ({num_rows}), got shape {tuple(array.shape)}"
        )
    return array


def check_same_rows(first_name: str, first: np.ndarray, second_name: str, second: np.ndarray) -> None:
    """Both arrays embed the same points: as many rows."""
    if len(first) != len(second):
        raise ValueError(
            f"{first_name} has {len(first)} rows but {second_name} has {len(second)}: "
            "both must embed the same points in the same order"
        )


def check_same_width(first_name: str, first: np.ndarray, second_name: str, second: np.ndarray) -> None:
    """Both arrays come from one model: as many columns."""
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{first_name} has width {first.shape[1]} but {second_name} has width {second.shape[1]}: "
            "both must come from the same model"
        )


def labelled_splits(
    train_embeddings: ArrayLike, train_labels: LabelsLike, test_embeddings: ArrayLike, test_labels: LabelsLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A labelled reference and labelled queries, checked alike for every classifier: ``(train, train_y, test, test_y)``."""
    train = as_matrix("train_embeddings", train_embeddings)
    test = as_matrix("test_embeddings", test_embeddings)
    check_same_width("test_embeddings", test, "train_embeddings", train)
    train_y = as_labels("train_labels", train_labels, len(train), "train_embeddings")
    test_y = as_labels("test_labels", test_labels, len(test), "test_embeddings")
    return train, train_y, test, test_y


def check_k(name: str, k: int, limit: int, what: str) -> None:
    """``1 <= k <= limit``, else an error saying what ``limit`` counts."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= limit:
        raise ValueError(f"{name}={k!r} but {what} ({limit}): use an integer 1 <= {name} <= {limit}")


def check_positive_int(name: str, value: int, minimum: int = 1, hint: str = "") -> None:
    """An integer ``>= minimum``, else an error naming the argument."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}; use an integer >= {minimum}{hint}")


def check_ks(ks: Sequence[int] | int, limit: int | None = None, what: str = "") -> tuple[int, ...]:
    """``ks`` as a tuple of distinct positive ints, each ``<= limit`` when a limit is given."""
    if isinstance(ks, (int, np.integer)):
        ks = (int(ks),)
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty; give at least one k, e.g. ks=(1, 10)")
    for k in ks:
        if limit is None:
            check_positive_int("k in ks", k, 1, ", e.g. ks=(1, 10)")
        else:
            check_k("k", k, limit, what)
    return tuple(dict.fromkeys(int(k) for k in ks))


def encode_labels(*label_arrays: np.ndarray) -> list[np.ndarray]:
    """Integer codes of the labels, shared across the arrays (equal labels -> equal codes)."""
    _, codes = np.unique(np.concatenate(label_arrays), return_inverse=True)
    boundaries = np.cumsum([len(labels) for labels in label_arrays])[:-1]
    return np.split(codes.reshape(-1), boundaries)
