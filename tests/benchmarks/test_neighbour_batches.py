"""The teacher-neighbour order of the registered experiment's arm 5 (benchmarks/neighbour_batches.py), on the
digits of scikit-learn standing in for cached teacher features."""

from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset
from sklearn.datasets import load_digits

from benchmarks.neighbour_batches import (
    NEIGHBOURS_PER_SEED, TeacherNeighbourOrder, nearest_teacher_neighbours, teacher_neighbour_batches,
)
from hf_pcoh.collator import cached_feature_column
from hf_pcoh.trainer import DistillationTrainer


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return load_digits().data[:700].astype(np.float32)


def cosine_nearest(features: np.ndarray, row: int, count: int) -> list[int]:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit[row]
    similarity[row] = -np.inf
    return list(np.argsort(-similarity, kind="stable")[:count])


def test_nearest_neighbours_are_the_cosine_nearest_other_rows(features) -> None:
    nearest = nearest_teacher_neighbours(features, 5, chunk=128)  # several chunks
    for row in (0, 127, 128, 699):
        assert row not in nearest[row]
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        found = unit[nearest[row]] @ unit[row]
        best = unit[cosine_nearest(features, row, 5)] @ unit[row]
        np.testing.assert_allclose(found, best, rtol=1e-5)  # equal similarities (ties may swap indices)


@pytest.mark.parametrize("fraction, groups", [(0.25, 2), (0.5, 4)])
def test_batches_hold_seeds_with_their_nearest_teacher_neighbours(features, fraction, groups) -> None:
    order = TeacherNeighbourOrder(features, batch_size=64, neighbour_fraction=fraction, seed=3)
    assert order.groups == groups and len(order) == len(features) == len(list(order))
    batches = order.batches()
    nearest = nearest_teacher_neighbours(features, 4 * NEIGHBOURS_PER_SEED)
    for batch in batches[:-1]:
        assert len(batch) == 64 and len(set(batch)) == 64  # no row twice in a batch
        for group in range(groups):
            start = group * (NEIGHBOURS_PER_SEED + 1)
            seed_row, neighbours = batch[start], batch[start + 1:start + 1 + NEIGHBOURS_PER_SEED]
            earlier = set(batch[:start + 1])
            expected = [int(row) for row in nearest[seed_row] if int(row) not in earlier]
            chosen: list[int] = []
            for row in expected:  # each next neighbour: the nearest not yet in the batch
                if row not in chosen:
                    chosen.append(row)
            assert neighbours == chosen[:NEIGHBOURS_PER_SEED]
    # seeds and uniform rows: a permutation drawn once per epoch, every row exactly once
    neighbour_slots = {(b, g * (NEIGHBOURS_PER_SEED + 1) + 1 + k) for b in range(len(batches) - 1)
                       for g in range(groups) for k in range(NEIGHBOURS_PER_SEED)}
    drawn = [row for b, batch in enumerate(batches) for position, row in enumerate(batch)
             if (b, position) not in neighbour_slots]
    assert len(drawn) == len(set(drawn))
    assert len(drawn) == len(features) - len(neighbour_slots)
    assert len(neighbour_slots) / (64 * (len(batches) - 1)) == fraction  # the neighbour share of a full batch


def test_the_order_is_fixed_by_seed_and_epoch(features) -> None:
    first = TeacherNeighbourOrder(features, 64, 0.5, seed=0)
    again = TeacherNeighbourOrder(features, 64, 0.5, seed=0)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    assert list(TeacherNeighbourOrder(features, 64, 0.5, seed=1)) != list(again)


def test_a_fraction_that_does_not_fit_is_refused(features) -> None:
    with pytest.raises(ValueError, match="neighbour_fraction"):
        TeacherNeighbourOrder(features, 64, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        TeacherNeighbourOrder(features, 16, 0.9)


def test_the_trainer_orders_rows_inside_the_block_only(features) -> None:
    original = DistillationTrainer._get_train_sampler
    dataset = Dataset.from_dict({cached_feature_column(0): features.tolist(), "text": ["x"] * len(features)})
    trainer = SimpleNamespace(train_dataset=dataset,
                              args=SimpleNamespace(world_size=1, per_device_train_batch_size=32, seed=5))
    with teacher_neighbour_batches(0.5):
        sampler = DistillationTrainer._get_train_sampler(trainer)
        assert isinstance(sampler, TeacherNeighbourOrder)
        assert list(sampler) == list(TeacherNeighbourOrder(features, 32, 0.5, seed=5))
        with pytest.raises(ValueError, match="teacher_cache"):
            DistillationTrainer._get_train_sampler(trainer, Dataset.from_dict({"text": ["x"] * 8}))
    assert DistillationTrainer._get_train_sampler is original
    assert "_get_train_sampler" not in vars(DistillationTrainer)  # inherited again, not overridden
