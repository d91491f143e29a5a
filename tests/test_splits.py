"""The stratified split that reads labels as one array gives exactly datasets' train_test_split rows."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from hf_pcoh.data import load_splits
from hf_pcoh.data.splits import stratified_train_test_split


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("test_size", [0.1, 0.25])
def test_the_same_rows_as_datasets_stratified_train_test_split(seed: int, test_size: float) -> None:
    generator = np.random.default_rng(3)
    labels = generator.choice(5, size=503, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    features = Features({"text": Value("string"), "label": ClassLabel(num_classes=5)})
    dataset = Dataset.from_dict({"text": [f"row {index}" for index in range(503)], "label": labels}, features=features)
    ours = stratified_train_test_split(dataset, labels, test_size, seed)
    theirs = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    for split in ("train", "test"):
        assert ours[split]["text"] == theirs[split]["text"]


def test_wordnet_and_digits_splits_keep_every_row_once_and_stratify() -> None:
    digits = load_splits("digits")
    assert len(digits["train"]) + len(digits["test"]) == 1797
    fractions = [np.bincount(np.asarray(digits[split]["label"]), minlength=10) / len(digits[split]) for split in ("train", "test")]
    assert np.abs(fractions[0] - fractions[1]).max() < 0.02


def test_labels_must_match_the_rows() -> None:
    dataset = Dataset.from_dict({"label": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match=r"one label per row \(4,\)"):
        stratified_train_test_split(dataset, [0, 1], 0.5, 0)
    with pytest.raises(ValueError, match="test_size=1.5"):
        stratified_train_test_split(dataset, [0, 1, 0, 1], 1.5, 0)
