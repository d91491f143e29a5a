"""Train a vision teacher here (the Fashion-MNIST recipe needs one; no Hub download is possible offline).

A small ``transformers`` ResNet classifier trained with the plain ``Trainer`` and saved with its image
processor, so the distillation recipes load it like any Hub checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments, ViTImageProcessor

from .collator import process
from .data import load_splits

logger = logging.getLogger(__name__)


@dataclass
class TeacherTrainingArguments(TrainingArguments):
    """Training arguments plus the teacher's data and size."""

    dataset_name: str = field(default="fashion_mnist", metadata={"help": "A built-in vision set: fashion_mnist or digits."})
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "ResNet stage widths."})
    depths: list[int] = field(default_factory=lambda: [1, 1, 1], metadata={"help": "Residual blocks per stage."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training images."})
    output_dir: str = field(default="outputs/fashion-mnist-teacher", metadata={"help": "Where the teacher is saved."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training images."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Images per training batch."})
    per_device_eval_batch_size: int = field(default=512, metadata={"help": "Images per evaluation batch."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the raw image column."})


@dataclass
class ImageClassificationCollator:
    processor: Any

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = process(self.processor, [row["image"] for row in rows], "vision", 0)
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        return batch


def grey_image_processor(images: np.ndarray) -> ViTImageProcessor:
    """Rescale to [0, 1] and standardise with the training images' own mean and std; no resizing."""
    scaled = images.astype(np.float32) / 255.0
    return ViTImageProcessor(do_resize=False, image_mean=[float(scaled.mean())], image_std=[float(scaled.std())])


def train_vision_teacher(args: TeacherTrainingArguments) -> dict[str, float]:
    """Train a ResNet classifier on ``args.dataset_name``, save it with its processor; return test accuracy."""
    splits = load_splits(args.dataset_name)
    train = splits["train"].shuffle(seed=args.seed)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    sample = np.asarray(train.select(range(min(2000, len(train))))["image"])
    processor = grey_image_processor(sample)
    labels = train.features["label"]
    config = ResNetConfig(
        num_channels=sample.shape[-1], embedding_size=args.hidden_sizes[0], hidden_sizes=args.hidden_sizes,
        depths=args.depths, layer_type="basic", num_labels=labels.num_classes,
        id2label=dict(enumerate(labels.names)), label2id={name: i for i, name in enumerate(labels.names)},
    )
    model = ResNetForImageClassification(config)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=ImageClassificationCollator(processor))
    trainer.train()
    trainer.save_model()
    processor.save_pretrained(args.output_dir)
    test = splits["test"]
    predictions = trainer.predict(test)
    accuracy = float((predictions.predictions.argmax(-1) == np.asarray(test["label"])).mean())
    logger.info("teacher test accuracy on %s: %.4f", args.dataset_name, accuracy)
    return {"test_accuracy": accuracy, "parameters": float(sum(p.numel() for p in model.parameters()))}
