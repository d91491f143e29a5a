"""The teacher's evaluation embeddings computed by the sharded teacher itself, never gathered whole.

Under FSDP or DeepSpeed ZeRO-3 the teacher is split across the processes, because it does not fit one device,
and it runs only when all of them call it together. After training, :func:`sharded_teacher_embeddings` has every
process embed a contiguous share of the rows the final evaluation reads (the reference sample of the training
split and the held-out split, as :func:`~hf_pcoh.evaluation.compare_teacher_and_student` takes them) with the
prepared teacher, through :func:`~hf_pcoh.frozen_teacher.run_teacher` (a teacher cut after the deepest layer the
run reads runs only that deep). The last shares are padded with copies of the first row, so that every process
runs the same number of batches; the embeddings are gathered in row order onto the main process, which measures
the student against them (``teacher_embeddings`` of ``compare_teacher_and_student``).

The student is not embedded this way: it is the small model, gathered whole onto the main process to be saved
(and to fit its probe head), and measured there as in a one-process run, its speed included.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .collator import process
from .data import first_rows
from .embedding import Embeddings, longest_first
from .evaluation.student_report import EMBEDDING_BATCH_SIZE, REFERENCE_SAMPLES
from .features import FeatureExtractor
from .frozen_teacher import run_teacher

if TYPE_CHECKING:
    from .setup import DistillationSetup


def embed_sharded(
    teacher: nn.Module,
    processor: Any,
    raw_inputs: Sequence[Any],
    extractor: FeatureExtractor,
    modality: str,
    batch_size: int = EMBEDDING_BATCH_SIZE,
    max_length: int = 128,
    device: torch.device | str = "cpu",
) -> Embeddings | None:
    """``raw_inputs`` embedded by a ``teacher`` sharded across the processes: ``[N, d]`` float32 on the main
    process (with the wall time of the whole sharded pass), None on the others.

    Every process must call it with the same rows: each runs the teacher over its contiguous share of them, padded
    to the same number of batches (texts longest first, as :func:`~hf_pcoh.embedding.embed` batches them).
    ``extractor`` reads the teacher as in a training step (its layer counted in the whole teacher when the prepared
    teacher is a cut view)."""
    if len(raw_inputs) == 0:
        raise ValueError("embed_sharded: no rows to embed")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    share = -(-len(raw_inputs) // world_size)  # rows per process
    rows = list(raw_inputs[rank * share : (rank + 1) * share])
    rows += [raw_inputs[0]] * (share - len(rows))  # the padding: dropped once gathered
    start = time.perf_counter()
    rows, order = longest_first(rows, modality)  # as embed() batches them: little padding
    chunks = []
    for first in range(0, share, batch_size):
        inputs = process(processor, rows[first : first + batch_size], modality, max_length)
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        (features,), _ = run_teacher(teacher, inputs, [extractor])
        if features.values.dim() != 2:
            raise ValueError("evaluation needs pooled embeddings; the recipe's pooling is 'none'")
        chunks.append(features.values.float())
    own = torch.cat(chunks)  # [share, d], longest first
    if order is not None:  # back in the share's own order
        own = own[torch.as_tensor(np.argsort(order), device=own.device)]
    shares = [torch.empty_like(own) for _ in range(world_size)] if rank == 0 else None
    dist.gather(own, shares, dst=0)
    if rank != 0:
        return None
    values = torch.cat(shares)[: len(raw_inputs)]  # [N, d]: shares in rank order are the rows in order
    return Embeddings(values.cpu().numpy(), time.perf_counter() - start)


def sharded_teacher_embeddings(
    setup: DistillationSetup, teacher: nn.Module, device: torch.device | str
) -> dict[str, Embeddings] | None:
    """The prepared (sharded) ``teacher``'s embeddings of the rows the final evaluation reads, ``{"train": the
    reference sample's, "test": the eval split's}``, on the main process; None on the others. Every process calls it."""
    collator = setup.collator
    column = collator.teacher_input_column or collator.input_column
    reference = first_rows(setup.train_dataset, REFERENCE_SAMPLES)
    embeddings = {
        split: embed_sharded(teacher, collator.teacher_processor, rows[column], setup.readout.teacher_embedding,
                             setup.modality, max_length=setup.config.max_length, device=device)
        for split, rows in (("train", reference), ("test", setup.eval_dataset))
    }
    return None if embeddings["test"] is None else embeddings
