"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from the Debian package ``dataset-fashion-mnist``.

The package ships the original IDX files (gzip); images become ``[28, 28, 1]`` uint8 arrays, so any
``transformers`` image processor can take them with ``input_data_format="channels_last"``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read a gzip'd IDX file (big-endian header: magic, sizes) into a uint8 array."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install Fashion-MNIST with `apt-get install dataset-fashion-mnist`")
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {magic}, expected {expected_magic})")
    dimensions = (magic & 0xFF)
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def load_fashion_mnist(data_dir: Path = FASHION_MNIST_DIR) -> DatasetDict:
    """The official 60,000/10,000 split; columns ``image`` (``[28, 28, 1]`` uint8) and ``label``."""
    features = Features({"image": Array3D(shape=(28, 28, 1), dtype="uint8"), "label": ClassLabel(names=list(CLASS_NAMES))})
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)[..., None]
        labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
        splits[split] = Dataset.from_dict({"image": images, "label": labels.astype(np.int64)}, features=features)
    return DatasetDict(splits)
