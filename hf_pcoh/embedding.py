"""Embed a data set with a model, timed: the input of every evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .collator import process
from .features import FeatureExtractor, pool


@dataclass
class Embeddings:
    """``[N, d]`` float32 embeddings and the throughput they were computed at."""

    values: np.ndarray
    seconds: float

    @property
    def per_second(self) -> float:
        return len(self.values) / self.seconds if self.seconds > 0 else float("inf")


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    processor: Any,
    raw_inputs: list[Any],
    extractor: FeatureExtractor,
    modality: str,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    description: str | None = None,
) -> Embeddings:
    """Embed ``raw_inputs`` (texts or images) in batches; time includes preprocessing, as a user sees it."""
    was_training = model.training
    model.eval().to(device)
    chunks: list[np.ndarray] = []
    start = time.perf_counter()
    batches = range(0, len(raw_inputs), batch_size)
    for first in tqdm(batches, desc=description or "embedding", disable=description is None, leave=False):
        inputs = process(processor, raw_inputs[first : first + batch_size], modality, max_length)
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        outputs = model(**inputs, output_hidden_states=True)
        features = extractor(outputs, inputs.get("attention_mask")).values
        if features.dim() != 2:
            raise ValueError("evaluation needs pooled embeddings; the recipe's pooling is 'none'")
        chunks.append(features.float().cpu().numpy())
    seconds = time.perf_counter() - start
    model.train(was_training)
    return Embeddings(np.concatenate(chunks, axis=0), seconds)


@torch.no_grad()
def embed_every_layer(
    model: torch.nn.Module,
    processor: Any,
    raw_inputs: list[Any],
    pooling: str,
    modality: str,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    description: str | None = None,
) -> dict[int, np.ndarray]:
    """Features of every entry of ``hidden_states``: token layers pooled with ``pooling`` (their lengths
    vary with the text), feature maps ``[B, C, H, W]`` flattened (as the knowledge-quality paper does)."""
    was_training = model.training
    model.eval().to(device)
    chunks: dict[int, list[np.ndarray]] = {}
    batches = range(0, len(raw_inputs), batch_size)
    for first in tqdm(batches, desc=description or "embedding every layer", disable=description is None, leave=False):
        inputs = process(processor, raw_inputs[first : first + batch_size], modality, max_length)
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        hidden_states = model(**inputs, output_hidden_states=True).hidden_states
        for layer, activations in enumerate(hidden_states):
            if activations.dim() == 4:
                features = activations.flatten(1)
            else:
                features = pool(activations, pooling, inputs.get("attention_mask")).values
            chunks.setdefault(layer, []).append(features.float().cpu().numpy())
    model.train(was_training)
    return {layer: np.concatenate(parts, axis=0) for layer, parts in chunks.items()}
