"""Build the student's and the teacher's inputs from the same raw rows (text or images).

The data set keeps raw columns; each batch is processed once per distinct processor, so a teacher and
a student with different tokenizers or image processors see the same examples. Texts are tokenised once
for the whole training set (:func:`tokenize_once`) and each batch only padded to its longest text.
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

# Prompt/completion data (TRL's columns): a language-model student reads both, and learns the completion only.
PROMPT_COLUMN, COMPLETION_COLUMN = "prompt", "completion"
IGNORE_INDEX = -100  # a label that is no target (transformers' convention)


def as_channels_last_uint8(image: Any) -> np.ndarray:
    """A PIL image, nested list or array -> ``[H, W, C]`` array (grey images get ``C = 1``)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an image of shape [H, W] or [H, W, C], got {array.shape}")
    return array


# Columns of a training set tokenised once (tokenize_once): "<prefix><tokenizer output>", one list per text.
TOKENS_PREFIX = {"student": "student_tokens_", "teacher": "teacher_tokens_"}


def tokenize_once(
    dataset: Any, student_processor: Any, teacher_processor: Any, input_column: str, max_length: int,
    length_column: str | None = None, batch_size: int = 1000, teacher_input_column: str | None = None,
) -> Any:
    """The text data set with each text's tokens as columns, by one batched ``datasets.map``: the student
    tokenizer's outputs as ``student_tokens_<name>`` (``input_ids``, ``attention_mask``...), and the teacher's
    as ``teacher_tokens_<name>`` when it has its own or reads its own column (``teacher_input_column``).
    Unpadded: the collator pads each batch to its longest text, exactly as tokenising the batch would. With ``length_column``, each text's student token count
    too (what ``train_sampling_strategy: group_by_length`` groups by), unless the column already exists."""
    tokenizers = {"student": student_processor}
    columns_read = {"student": input_column, "teacher": teacher_input_column or input_column}
    if teacher_processor is not student_processor or columns_read["teacher"] != input_column:
        tokenizers["teacher"] = teacher_processor
    add_lengths = length_column is not None and length_column not in dataset.column_names

    def token_columns(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {}
        for role, tokenizer in tokenizers.items():
            encoded = tokenizer(batch[columns_read[role]], truncation=True, max_length=max_length)
            columns.update({TOKENS_PREFIX[role] + name: values for name, values in encoded.items()})
        if add_lengths:
            columns[length_column] = [len(ids) for ids in columns[TOKENS_PREFIX["student"] + "input_ids"]]
        return columns

    return dataset.map(token_columns, batched=True, batch_size=batch_size, desc="tokenising")


def pad_tokens(tokenizer: Any, rows: list[dict[str, Any]], prefix: str) -> dict[str, torch.Tensor]:
    """One batch of texts tokenised once (``<prefix><name>`` columns), padded to its longest text as the
    tokenizer pads (its pad token, ``padding_side`` and token type), as ``[B, T]`` int64 tensors."""
    names = [column[len(prefix):] for column in rows[0] if column.startswith(prefix)]
    pad_values = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0,
                  "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}
    if tokenizer.pad_token_id is None or any(name not in pad_values for name in names):
        return dict(tokenizer.pad([{name: row[prefix + name] for name in names} for row in rows], padding=True,
                                  return_tensors="pt"))
    lengths = [len(row[prefix + "input_ids"]) for row in rows]
    longest = max(lengths)
    left = tokenizer.padding_side == "left"
    batch: dict[str, torch.Tensor] = {}
    for name in names:
        values = np.full((len(rows), longest), pad_values[name], dtype=np.int64)  # [B, T]
        for index, (row, length) in enumerate(zip(rows, lengths)):
            if left:
                values[index, longest - length:] = row[prefix + name]
            else:
                values[index, :length] = row[prefix + name]
        batch[name] = torch.from_numpy(values)
    return batch


def prompt_completion_tokens(
    tokenizer: Any, prompts: list[str], completions: list[str], max_length: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(inputs, prompt_lengths)``: each prompt tokenised as a text (its special tokens), its completion appended
    without them and closed by the end-of-sequence token when the tokenizer has one (``eos``, else ``sep``), cut to
    ``max_length`` and padded as the tokenizer pads; ``prompt_lengths`` ``[B]`` counts each row's prompt tokens."""
    prompt_ids = tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    rows = [(prompt + completion + ([end] if end is not None else []))[:max_length]
            for prompt, completion in zip(prompt_ids, completion_ids)]
    padded = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    return dict(padded), torch.tensor([min(len(prompt), max_length) for prompt in prompt_ids])


def next_token_labels(inputs: dict[str, torch.Tensor], prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """A language model's labels ``[B, T]``: its input ids, ``-100`` at padding and at the first ``prompt_lengths``
    real tokens of each row (left or right padding); the objectives shift them (``hf_pcoh.losses.token_kd``)."""
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask", torch.ones_like(input_ids))
    ignored = attention_mask == 0
    if prompt_lengths is not None:
        real_index = attention_mask.long().cumsum(dim=1) - 1  # [B, T]: position among the row's real tokens
        ignored = ignored | (real_index < prompt_lengths.to(input_ids.device)[:, None])
    return input_ids.masked_fill(ignored, IGNORE_INDEX)


def process(processor: Any, raw: list[Any], modality: str, max_length: int) -> dict[str, torch.Tensor]:
    if modality == "text":
        return dict(processor(raw, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    images = [as_channels_last_uint8(image) for image in raw]
    return dict(processor(images, return_tensors="pt", input_data_format="channels_last"))


@dataclass
class DistillationCollator:
    """``rows -> {"student_inputs": {...}, "teacher_inputs": {...}?, "labels": [B]?}``.

    With ``next_token_labels`` (a language-model student, ``task: causal_lm``) ``labels`` are ``[B, T]``: the
    student's input ids with padding, and the ``prompt_column``'s tokens when the rows have one, set to ``-100``.
    ``teacher_inputs`` is present only when the teacher has its own processor or reads its own column
    (``teacher_input_column``, e.g. the English side of a translation pair whose other side the student
    reads); otherwise the teacher reads ``student_inputs``. Rows that carry cached teacher features
    (``teacher_features_<i>`` columns, see :mod:`hf_pcoh.teacher_cache`), or the teacher's precomputed
    embeddings (``teacher_embedding_column``), yield them as ``cached_teacher_features`` and no teacher inputs.
    """

    student_processor: Any
    teacher_processor: Any
    input_column: str  # the column the student reads
    modality: str  # "text" or "vision"
    label_column: str | None = None
    max_length: int = 128
    teacher_input_column: str | None = None  # the column the teacher reads, when not input_column
    teacher_embedding_column: str | None = None  # the teacher's embeddings, computed before the run
    next_token_labels: bool = False  # a language-model student: labels are its next tokens (task causal_lm)
    prompt_column: str | None = None  # with next_token_labels: the prompt that input_column (the completion) follows

    @property
    def teacher_column(self) -> str:
        """The column the teacher reads."""
        return self.teacher_input_column or self.input_column

    @property
    def teacher_reads_own_inputs(self) -> bool:
        """Whether the teacher needs inputs of its own: its own processor, or its own column."""
        return self.teacher_processor is not self.student_processor or self.teacher_column != self.input_column

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"student_inputs": self.inputs(rows, "student", self.student_processor)}
        if self.teacher_embedding_column is not None:  # read as the cache's columns are: one layer pair
            batch[CACHED_FEATURES_KEY] = [torch.tensor(
                np.asarray([row[self.teacher_embedding_column] for row in rows]), dtype=torch.float32)]
        elif cached_feature_column(0) in rows[0]:
            pairs = sum(1 for column in rows[0] if column.startswith("teacher_features_"))
            batch[CACHED_FEATURES_KEY] = [
                torch.tensor(np.asarray([row[cached_feature_column(i)] for row in rows]), dtype=torch.float32)
                for i in range(pairs)
            ]
            if CACHED_LOGITS_COLUMN in rows[0]:
                batch[CACHED_LOGITS_KEY] = torch.tensor(np.asarray([row[CACHED_LOGITS_COLUMN] for row in rows]), dtype=torch.float32)
        elif self.teacher_reads_own_inputs:
            batch["teacher_inputs"] = self.inputs(rows, "teacher", self.teacher_processor)
        if self.next_token_labels:  # the class labels, if any, are left to the evaluation
            prompt_lengths = batch["student_inputs"].pop("prompt_lengths", None)
            if "teacher_inputs" in batch:
                batch["teacher_inputs"].pop("prompt_lengths", None)
            batch["labels"] = next_token_labels(batch["student_inputs"], prompt_lengths)
        elif self.label_column is not None:
            batch["labels"] = torch.tensor([row[self.label_column] for row in rows], dtype=torch.long)
        return batch

    def inputs(self, rows: list[dict[str, Any]], role: str, processor: Any) -> dict[str, torch.Tensor]:
        """The ``role`` model's inputs: the rows' tokens padded when they were tokenised once, else the raw
        column processed now."""
        prefix = TOKENS_PREFIX[role]
        column = self.teacher_column if role == "teacher" else self.input_column
        if self.prompt_column is not None:  # tokenised here: the prompt's length is part of the labels
            inputs, prompt_lengths = prompt_completion_tokens(
                processor, [row[self.prompt_column] for row in rows], [row[column] for row in rows], self.max_length)
            return {**inputs, "prompt_lengths": prompt_lengths}
        if self.modality == "text" and prefix + "input_ids" in rows[0]:
            return pad_tokens(processor, rows, prefix)
        return process(processor, [row[column] for row in rows], self.modality, self.max_length)
