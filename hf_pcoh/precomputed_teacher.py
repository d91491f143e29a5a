"""Distil from teacher embeddings computed beforehand (``teacher_embedding_column``), never loading the teacher.

Embeddings made elsewhere (``SentenceTransformer.encode``, an embedding API, an earlier run) are a column of
the data set, one vector per row. The collator hands them to the trainer as it hands the teacher cache's
columns (``cached_teacher_features``, :mod:`hf_pcoh.teacher_cache`), so a training step reads them in place
of the teacher's forward pass; the evaluation compares the student with them. This module checks the column
before anything trains: a list of numbers per row, none missing, all of one width, finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from .data import first_rows, is_streamed
from .data.sources import STREAMED_ROWS_CHECKED


def embedding_width(dataset: Dataset, column: str, where: str) -> int:
    """The width of the embeddings in ``column``; a ``ValueError`` naming ``where``, the column and the bad rows
    when a row has none, or another width than the others, or a NaN/inf."""
    option = f"teacher_embedding_column={column!r}"
    if column not in dataset.column_names:
        raise ValueError(f"{option} is not a column of {where} (columns: {dataset.column_names}): add the teacher's "
                         "embeddings of its rows as a column (one vector per row)")
    values = dataset.data.column(column)  # Arrow: no Python lists are made
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)) or not (
            pa.types.is_floating(values.type.value_type) or pa.types.is_integer(values.type.value_type)):
        raise ValueError(f"{option} of {where} holds {values.type}, not one vector of numbers per row (e.g. the "
                         "float32 arrays SentenceTransformer.encode returns)")
    if values.null_count:
        rows = first_rows_where(pc.is_null(values))
        raise ValueError(f"{option} of {where}: {values.null_count} row(s) have no embedding (None), e.g. rows {rows}")
    lengths = np.asarray(pc.list_value_length(values).to_numpy(zero_copy_only=False))
    if len(lengths) == 0:
        raise ValueError(f"{where} has no rows")
    widths, counts = np.unique(lengths, return_counts=True)
    width = int(widths[np.argmax(counts)])
    if len(widths) > 1:
        odd = np.flatnonzero(lengths != width)[:5].tolist()
        found = ", ".join(f"{count} row(s) of width {int(size)}" for size, count in zip(widths, counts))
        raise ValueError(f"{option} of {where}: the embeddings must all have one width (one model's), found {found}; "
                         f"e.g. rows {odd} differ")
    if width == 0:
        raise ValueError(f"{option} of {where}: the embeddings are empty (width 0)")
    flat = np.asarray(pc.list_flatten(values).to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(lengths), width)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise ValueError(f"{option} of {where}: {int((~finite).sum())} row(s) hold NaN or inf, e.g. rows "
                         f"{np.flatnonzero(~finite)[:5].tolist()}")
    return width


def first_rows_where(mask: Any, count: int = 5) -> list[int]:
    return np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False)))[:count].tolist()


def check_teacher_embeddings(
    column: str, train: Any, evaluation: Dataset | None, train_split: str, eval_split: str, evaluated: bool,
) -> int:
    """The width of the precomputed teacher embeddings, checked in the training split (its first rows when it
    is streamed) and, when the run evaluates, in the evaluation split, which must hold them too."""
    sample = first_rows(train, STREAMED_ROWS_CHECKED) if is_streamed(train) else train
    width = embedding_width(sample, column, f"split {train_split!r}")
    if evaluation is None or not evaluated:
        return width
    if column not in evaluation.column_names:
        raise ValueError(f"teacher_embedding_column={column!r} is not a column of split {eval_split!r}, which the run "
                         "evaluates on (the student is measured against those embeddings): add them to it, or pass "
                         "--evaluate_after_training false and --eval_strategy no")
    eval_width = embedding_width(evaluation, column, f"split {eval_split!r}")
    if eval_width != width:
        raise ValueError(f"teacher_embedding_column={column!r}: the embeddings are {width} wide in split "
                         f"{train_split!r} but {eval_width} wide in split {eval_split!r}; both must come from one model")
    return width


def precomputed_embeddings(dataset: Dataset, column: str) -> np.ndarray:
    """``[N, d]`` float32: the precomputed teacher embeddings of ``dataset``'s rows."""
    return np.asarray(dataset[column], dtype=np.float32)
