"""Build the student's and the teacher's inputs from the same raw rows (text or images).

The data set keeps raw columns; each batch is processed once per distinct processor, so a teacher and
a student with different tokenizers or image processors see the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


# Batch keys of teacher features read from the teacher-feature cache instead of running the teacher.
CACHED_FEATURES_KEY = "cached_teacher_features"
CACHED_LOGITS_KEY = "cached_teacher_logits"


def cached_feature_column(pair_index: int) -> str:
    """The data set column holding the cached teacher features of layer pair ``pair_index``."""
    return f"teacher_features_{pair_index}"


CACHED_LOGITS_COLUMN = "teacher_logits"


def as_channels_last_uint8(image: Any) -> np.ndarray:
    """A PIL image, nested list or array -> ``[H, W, C]`` array (grey images get ``C = 1``)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an image of shape [H, W] or [H, W, C], got {array.shape}")
    return array


def process(processor: Any, raw: list[Any], modality: str, max_length: int) -> dict[str, torch.Tensor]:
    if modality == "text":
        return dict(processor(raw, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    images = [as_channels_last_uint8(image) for image in raw]
    return dict(processor(images, return_tensors="pt", input_data_format="channels_last"))


@dataclass
class DistillationCollator:
    """``rows -> {"student_inputs": {...}, "teacher_inputs": {...}?, "labels": [B]?}``.

    ``teacher_inputs`` is present only when the teacher has its own processor; otherwise the teacher
    reads ``student_inputs``. Rows that carry cached teacher features (``teacher_features_<i>`` columns,
    see :mod:`hf_pcoh.teacher_cache`) yield them as ``cached_teacher_features`` and no teacher inputs.
    """

    student_processor: Any
    teacher_processor: Any
    input_column: str
    modality: str  # "text" or "vision"
    label_column: str | None = None
    max_length: int = 128

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raw = [row[self.input_column] for row in rows]
        batch: dict[str, Any] = {"student_inputs": process(self.student_processor, raw, self.modality, self.max_length)}
        if cached_feature_column(0) in rows[0]:
            pairs = sum(1 for column in rows[0] if column.startswith("teacher_features_"))
            batch[CACHED_FEATURES_KEY] = [
                torch.tensor(np.asarray([row[cached_feature_column(i)] for row in rows]), dtype=torch.float32)
                for i in range(pairs)
            ]
            if CACHED_LOGITS_COLUMN in rows[0]:
                batch[CACHED_LOGITS_KEY] = torch.tensor(np.asarray([row[CACHED_LOGITS_COLUMN] for row in rows]), dtype=torch.float32)
        elif self.teacher_processor is not self.student_processor:
            batch["teacher_inputs"] = process(self.teacher_processor, raw, self.modality, self.max_length)
        if self.label_column is not None:
            batch["labels"] = torch.tensor([row[self.label_column] for row in rows], dtype=torch.long)
        return batch
