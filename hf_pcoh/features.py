"""From a ``transformers`` model's outputs to the features a loss compares.

``FeatureExtractor(layer, pooling)`` picks one layer of ``hidden_states`` (or ``last_hidden_state`` /
``pooler_output``) and pools it to one vector per example, aware of the attention mask:

* ``cls``: the first token (BERT's [CLS], ViT's class token);
* ``mean``: the mean over non-padding tokens (sentence-transformers' pooling);
* ``max``: the largest value of each dimension over the non-padding tokens (sentence-transformers' max pooling);
* ``last_token``: the last non-padding token, for decoders (OPT), whichever side the padding is on;
* ``gap``: global average pooling of vision feature maps ``[B, C, H, W] -> [B, C]`` (or of all tokens);
* ``none``: no pooling: tokens ``[B, T, d]`` with their mask, for token-level losses.

After pooling, an extractor may apply a ``projection`` (a sentence-transformers teacher's Dense layers)
and L2-normalise (``normalize``, sentence-transformers' Normalize): see :mod:`hf_pcoh.sentence_embedding`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

POOLINGS = ("cls", "mean", "max", "last_token", "gap", "none")
NAMED_LAYERS = ("last", "pooler")  # layers named rather than indexed: last_hidden_state, pooler_output


@dataclass
class Features:
    """Pooled ``[B, d]`` features, or tokens ``[B, T, d]`` with their ``mask`` ``[B, T]``."""

    values: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.values.shape[-1]


def number_of_hidden_states(outputs: ModelOutput) -> int:
    hidden_states = getattr(outputs, "hidden_states", None)
    return len(hidden_states) if hidden_states is not None else 0


def select_layer(outputs: ModelOutput, layer: int | str, model_name: str = "model") -> torch.Tensor:
    """The raw activations of ``layer``: an index into ``hidden_states``, ``"last"`` or ``"pooler"``."""
    if layer == "last":
        last = getattr(outputs, "last_hidden_state", None)
        if last is not None:
            return last
        layer = -1
    if layer == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"{model_name} has no pooler_output; use 'last' or a layer index instead of 'pooler'")
        return pooled
    hidden_states = getattr(outputs, "hidden_states", None)
    if hidden_states is None:
        raise ValueError(f"{model_name} returned no hidden_states; it must accept output_hidden_states=True")
    count = len(hidden_states)
    if not -count <= int(layer) < count:
        raise ValueError(
            f"layer {layer} does not exist in the {model_name}: it has {count} hidden states (0..{count - 1}, "
            f"0 = embeddings; or -{count}..-1 from the end; or one of {NAMED_LAYERS})"
        )
    return hidden_states[int(layer)]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token of each row, for left or right padding: ``[B]``."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions[None, :] * attention_mask.long()).argmax(dim=1)


def pool(activations: torch.Tensor, pooling: str, attention_mask: torch.Tensor | None = None) -> Features:
    """Pool ``[B, T, d]`` tokens, ``[B, C, H, W]`` maps or ``[B, d]`` vectors as ``pooling`` says."""
    if activations.dim() == 2:
        return Features(activations)
    if activations.dim() == 4:  # vision feature maps [B, C, H, W]
        if pooling in ("gap", "mean"):
            return Features(activations.mean(dim=(2, 3)))
        if pooling == "none":  # tokens = spatial positions, channels last
            return Features(activations.flatten(2).transpose(1, 2))
        raise ValueError(f"pooling={pooling!r} does not apply to feature maps [B, C, H, W]; use 'gap' or 'none'")
    if activations.dim() != 3:
        raise ValueError(f"cannot pool activations of shape {tuple(activations.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones(activations.shape[:2], dtype=torch.long, device=activations.device)
    if pooling == "cls":
        return Features(activations[:, 0])
    if pooling in ("mean", "gap"):
        weights = attention_mask.to(activations.dtype).unsqueeze(-1)
        return Features((activations * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0))
    if pooling == "max":
        padding = (attention_mask == 0).unsqueeze(-1)
        return Features(activations.masked_fill(padding, torch.finfo(activations.dtype).min).max(dim=1).values)
    if pooling == "last_token":
        rows = torch.arange(activations.shape[0], device=activations.device)
        return Features(activations[rows, last_token_index(attention_mask)])
    if pooling == "none":
        return Features(activations, attention_mask)
    raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")


@dataclass(frozen=True)
class FeatureExtractor:
    """Pick ``layer`` of a model's outputs and pool it: ``extractor(outputs, attention_mask) -> Features``.

    ``projection`` (a frozen module ``[B, d] -> [B, d']``, e.g. a sentence-transformers teacher's Dense
    layers) is applied to the pooled features, then ``normalize`` scales each row to unit L2 norm. Frozen:
    a run's extractors are resolved once (:class:`hf_pcoh.readout.FeatureReadout`) and shared; another
    reading is ``dataclasses.replace(extractor, ...)``.
    """

    layer: int | str = "last"
    pooling: str = "mean"
    model_name: str = "model"
    normalize: bool = False
    projection: nn.Module | None = field(default=None, compare=False, repr=False)

    def __call__(self, outputs: ModelOutput, attention_mask: torch.Tensor | None = None) -> Features:
        activations = select_layer(outputs, self.layer, self.model_name)
        if activations.dim() == 3 and attention_mask is not None and activations.shape[1] != attention_mask.shape[1]:
            attention_mask = None  # e.g. ViT tokens: no padding, the mask belongs to something else
        features = pool(activations, self.pooling, attention_mask)
        if features.mask is not None or (self.projection is None and not self.normalize):
            return features  # tokens (pooling 'none') are compared as they are
        values = features.values
        if self.projection is not None:
            values = self.projection.to(device=values.device, dtype=values.dtype)(values)
        if self.normalize:
            values = nn.functional.normalize(values, p=2, dim=-1)
        return Features(values)

    def fingerprint(self) -> list[Any]:
        """What the features depend on besides the model: ``[layer, pooling]``, plus the normalisation and a
        digest of the projection's weights when there are any (the teacher-feature cache is keyed on it)."""
        settings: list[Any] = [str(self.layer), self.pooling]
        if self.normalize:
            settings.append("normalize")
        if self.projection is not None:
            digest = hashlib.sha256(repr(self.projection).encode())
            for name, tensor in sorted(self.projection.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            settings.append(f"projection:{digest.hexdigest()[:16]}")
        return settings
