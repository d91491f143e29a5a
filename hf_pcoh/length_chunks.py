"""The student's forward in length-sorted chunks, each padded only to its own longest example.

A text batch is padded to its longest member: glosses of 16 tokens on average pad to 48 in a batch of 64 and to
63 in a batch of 1,024, so a large batch spends most of its compute on padding. Transformers' ``group_by_length``
sampler avoids that by putting texts of similar length in one batch, which changes the batch itself, and a
batch-level loss (perception coherence, CKA, Gram, Procrustes, CosPress) is a function of exactly which examples
share a batch. Here the batch stays the one the sampler drew, and only the forward is split:

1. order the examples by length (the attention mask's row sums);
2. cut the order into chunks of ``chunk_size`` examples and trim each chunk's ``[B, T]`` inputs to its longest;
3. run the student on each chunk and pool its features (``[chunk, d]``);
4. put the pooled rows back in the batch's order, so the losses see the batch as the whole forward would.

A padded position changes no real token's output (the attention mask removes it from every softmax and the
pooling skips it), so the features equal the whole-batch forward's up to float rounding; the autograd graph spans
the chunks, so gradients are the whole batch's too. Dropout draws its masks chunk by chunk, a different draw of
the same distribution.

No library does this for a batch-level loss (Transformers' sampler regroups the batch; sentence-transformers'
``CachedMultipleNegativesRankingLoss`` chunks to save memory, not padding, inside one loss), hence our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .features import FeatureExtractor, Features


def length_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """The batch's row indices, shortest first (a stable sort of the mask's row sums)."""
    return torch.sort(attention_mask.sum(dim=1), stable=True).indices


def length_sorted_chunks(attention_mask: torch.Tensor, chunk_size: int) -> list[tuple[torch.Tensor, int]]:
    """``(rows, longest)`` of each chunk: the batch's rows shortest first, cut every ``chunk_size``, with the
    longest length among them (at least 1)."""
    order, lengths = length_order(attention_mask), attention_mask.sum(dim=1)
    chunks = []
    for start in range(0, len(order), chunk_size):
        rows = order[start:start + chunk_size]
        chunks.append((rows, max(int(lengths[rows].max()), 1)))
    return chunks


def check_right_padded(attention_mask: torch.Tensor) -> None:
    """Trimming a chunk to its longest keeps its first columns: every row's real tokens must come first."""
    lengths = attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    if not torch.equal(attention_mask.bool(), positions < lengths):
        raise ValueError("student_forward_chunk_size trims each chunk's padding from the right, but this batch is "
                         "left-padded (or its mask has holes): set padding_side: right, or leave "
                         "student_forward_chunk_size unset")


def chunk_inputs(inputs: dict[str, Any], rows: torch.Tensor, length: int, batch: int, width: int) -> dict[str, Any]:
    """``inputs`` for the batch rows ``rows``: ``[B, T]`` tensors trimmed to ``length`` columns, other batch-first
    tensors indexed, anything else passed on as it is."""
    chunk = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            value = value[rows]
            if value.dim() >= 2 and value.shape[1] == width:
                value = value[:, :length]
        chunk[name] = value
    return chunk


def chunked_features(
    forward: Callable[..., Any],
    extractors: Sequence[FeatureExtractor],
    inputs: dict[str, Any],
    chunk_size: int,
) -> list[Features]:
    """Pooled features of every extractor for the batch ``inputs``, the model run as ``forward(**chunk_inputs)`` on
    length-sorted chunks of ``chunk_size`` examples (module docstring), rows back in the batch's order.

    Raises ``ValueError`` for token features (``pooling: none``: their widths differ between chunks) and for a
    left-padded batch. A batch without an ``attention_mask`` (images) has nothing to trim and runs whole.
    """
    if chunk_size < 1:
        raise ValueError(f"student_forward_chunk_size={chunk_size}: give a number of examples >= 1, or leave it unset")
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        outputs = forward(**inputs)
        return [extractor(outputs, mask) for extractor in extractors]
    check_right_padded(mask)
    batch, width = mask.shape
    chunks = length_sorted_chunks(mask, chunk_size)
    pieces: list[list[torch.Tensor]] = [[] for _ in extractors]
    for rows, length in chunks:
        chunk = chunk_inputs(inputs, rows, length, batch, width)
        outputs = forward(**chunk)
        for index, extractor in enumerate(extractors):
            features = extractor(outputs, chunk["attention_mask"])
            if features.mask is not None:
                raise ValueError("student_forward_chunk_size works with pooled features only: a layer read with "
                                 "pooling 'none' keeps its tokens, whose width differs from chunk to chunk; pool the "
                                 "student's layers, or leave student_forward_chunk_size unset")
            pieces[index].append(features.values)
    order = torch.cat([rows for rows, _ in chunks])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch, device=order.device)
    return [Features(torch.cat(values)[inverse]) for values in pieces]
