"""scikit-learn's bundled handwritten digits (1,797 images of 8x8): the fastest real vision data."""

from __future__ import annotations

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features

from .splits import stratified_train_test_split


def load_digits_dataset(test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """Digits as ``[8, 8, 1]`` uint8 images (0..16 scaled to 0..255) with a seeded stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[..., None]
    features = Features({"image": Array3D(shape=(8, 8, 1), dtype="uint8"), "label": ClassLabel(names=[str(d) for d in range(10)])})
    labels = digits.target.astype(np.int64)
    dataset = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return stratified_train_test_split(dataset, labels, test_size, seed)
