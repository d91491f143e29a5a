"""Teacher-neighbour batches: arm 5 of the experiment registered in docs/study.md (study only, not in the library).

Perception coherence ranks the points *of a batch*; in a uniformly drawn batch of 64 glosses from 45 classes, a
point's nearest teacher neighbours in the corpus are rarely there, so the ranks it learns are coarse ones. This
order of the training rows makes part of every batch a few *seeds* together with their nearest neighbours under
the teacher (cosine between the cached, pooled teacher features), the rest uniform:

    batch = {s_1, N_k(s_1), ..., s_g, N_k(s_g)}  U  {B - g (k + 1) uniform rows},   g = round(f B / k),

where ``N_k(s)`` are the k nearest teacher neighbours of seed s not already in the batch and f the *neighbour
fraction* (the registration's {0.25, 0.5}). Seeds and uniform rows come from a fresh permutation each epoch, no
row twice; an epoch yields as many rows as the data set (the runs keep their 250 steps), so a share f of the
permutation waits for the next epoch while neighbours are visited again.

The registration ships this sampler in the library only if the arm gains on test over 3 seeds; until then it is
applied to a run by :func:`teacher_neighbour_batches`, which replaces ``DistillationTrainer._get_train_sampler``
for the duration of that run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from hf_pcoh.collator import cached_feature_column
from hf_pcoh.trainer import DistillationTrainer

NEIGHBOURS_PER_SEED = 8  # recall@10 looks at about this many neighbours of each point
CANDIDATES_PER_SEED = 4 * NEIGHBOURS_PER_SEED  # nearest rows kept per seed, to skip those already in the batch


def nearest_teacher_neighbours(features: np.ndarray, count: int, chunk: int = 2048) -> np.ndarray:
    """``[n, count]`` indices of each row's nearest other rows by cosine similarity, nearest first."""
    vectors = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=1)
    rows = vectors.shape[0]
    count = min(count, rows - 1)
    nearest = np.empty((rows, count), dtype=np.int64)
    for start in range(0, rows, chunk):
        similarity = vectors[start:start + chunk] @ vectors.T
        similarity[torch.arange(similarity.shape[0]), torch.arange(start, start + similarity.shape[0])] = -np.inf
        nearest[start:start + chunk] = similarity.topk(count, dim=1).indices.numpy()
    return nearest


class TeacherNeighbourOrder(Sampler[int]):
    """Row indices whose consecutive chunks of ``batch_size`` are teacher-neighbour batches (module docstring)."""

    def __init__(self, features: np.ndarray, batch_size: int, neighbour_fraction: float, seed: int = 0,
                 neighbours_per_seed: int = NEIGHBOURS_PER_SEED) -> None:
        if not 0.0 < neighbour_fraction < 1.0:
            raise ValueError(f"neighbour_fraction must lie in (0, 1), got {neighbour_fraction}")
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.neighbours_per_seed = neighbours_per_seed
        self.groups = max(1, round(neighbour_fraction * batch_size / neighbours_per_seed))
        if self.groups * (neighbours_per_seed + 1) > batch_size:
            raise ValueError(f"{self.groups} seeds with {neighbours_per_seed} neighbours each do not fit a batch of "
                             f"{batch_size}: lower neighbour_fraction")
        self.nearest = nearest_teacher_neighbours(features, CANDIDATES_PER_SEED)
        self.rows = len(self.nearest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rows

    def batches(self) -> list[list[int]]:
        """The epoch's batches. Seeds and uniform rows come from one permutation per epoch, each row at most once;
        a row drawn while it is in the batch already (as a neighbour) waits for a later batch."""
        permutation = iter(np.random.default_rng((self.seed, self.epoch)).permutation(self.rows).tolist())
        waiting: list[int] = []

        def draw(chosen: set[int]) -> int:
            for position, row in enumerate(waiting):
                if row not in chosen:
                    return waiting.pop(position)
            for row in permutation:
                if row not in chosen:
                    return row
                waiting.append(row)
            raise RuntimeError("the permutation ran out before the epoch was full")  # cannot happen: rows >= drawn

        batches: list[list[int]] = []
        emitted = 0
        while emitted < self.rows:
            size = min(self.batch_size, self.rows - emitted)
            batch: list[int] = []
            chosen: set[int] = set()
            for _ in range(self.groups if size == self.batch_size else 0):
                seed_row = draw(chosen)
                batch.append(seed_row)
                chosen.add(seed_row)
                fresh = [int(row) for row in self.nearest[seed_row] if int(row) not in chosen]
                for row in fresh[:self.neighbours_per_seed]:
                    batch.append(row)
                    chosen.add(row)
            while len(batch) < size:
                row = draw(chosen)
                batch.append(row)
                chosen.add(row)
            batches.append(batch)
            emitted += len(batch)
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


@contextlib.contextmanager
def teacher_neighbour_batches(neighbour_fraction: float) -> Iterator[None]:
    """Within the block, every ``DistillationTrainer`` orders its training rows by :class:`TeacherNeighbourOrder`,
    from the cached teacher features of its training set (``teacher_cache`` must be on)."""
    own = vars(DistillationTrainer).get("_get_train_sampler")  # None: the Trainer's, inherited

    def sampler(trainer: DistillationTrainer, train_dataset: Any = None) -> Sampler[int]:
        dataset = trainer.train_dataset if train_dataset is None else train_dataset
        column = cached_feature_column(0)
        if column not in getattr(dataset, "column_names", []):
            raise ValueError("teacher-neighbour batches read the cached teacher features: run with a teacher_cache")
        if trainer.args.world_size > 1:
            raise ValueError("teacher-neighbour batches are written for one process (the study's runs)")
        return TeacherNeighbourOrder(np.asarray(dataset[column]), trainer.args.per_device_train_batch_size,
                                     neighbour_fraction, seed=trainer.args.seed)

    DistillationTrainer._get_train_sampler = sampler  # type: ignore[method-assign]
    try:
        yield
    finally:  # the class as it was: inheriting the Trainer's sampler again, not holding a copy of it
        if own is None:
            del DistillationTrainer._get_train_sampler
        else:
            DistillationTrainer._get_train_sampler = own  # type: ignore[method-assign]
