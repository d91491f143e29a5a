"""Fit a student's classification head by a linear probe on its frozen features.

Feature-only distillation (Cooper et al., NeurReps 2025, arXiv 2511.14981) trains the backbone with
feature losses alone; the classifier is fitted afterwards on the frozen features, so no
cross-entropy gradient reaches the backbone. We capture the exact input of the head's last linear
layer (whatever the architecture pools before it), fit a multinomial logistic regression on it, and
write the weights into that layer, so the saved student is a working classifier.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from .evaluation import batched_forward


def head_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of the model's ``classifier`` module."""
    classifier = getattr(model, "classifier", None)
    linears = [module for module in classifier.modules() if isinstance(module, nn.Linear)] if classifier is not None else []
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no classification head (a `classifier` with a Linear layer): load the "
            "student with a head (e.g. AutoModelForImageClassification) to fit it by a probe"
        )
    return linears[-1]


def head_inputs_and_logits(
    model: nn.Module, processor: Any, raw_inputs: list[Any], modality: str, batch_size: int = 128,
    max_length: int = 128, device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The features entering the head's last linear layer, and the model's logits, for ``raw_inputs``."""
    captured: list[torch.Tensor] = []
    hook = head_linear(model).register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    logits: list[torch.Tensor] = []
    try:
        for _, outputs in batched_forward(model, processor, raw_inputs, modality, batch_size, max_length, device):
            logits.append(outputs.logits.float().cpu())
    finally:
        hook.remove()
    return torch.cat(captured).float().cpu().numpy(), torch.cat(logits).numpy()


def fit_head_by_probe(
    model: nn.Module, processor: Any, raw_inputs: list[Any], labels: np.ndarray, modality: str,
    max_length: int = 128, device: torch.device | str = "cpu", max_iter: int = 1000, seed: int = 0,
) -> None:
    """Replace the head's last linear layer by a logistic regression fitted on the frozen features.

    The probe is fitted on standardised features ``z = (x - mu) / sigma``; its ``W z + b`` is folded
    back into the layer as ``W' = W / sigma``, ``b' = b - W' mu``, so the model needs no scaler.
    """
    features, _ = head_inputs_and_logits(model, processor, raw_inputs, modality, max_length=max_length, device=device)
    scaler = StandardScaler().fit(features)
    probe = LogisticRegression(max_iter=max_iter, random_state=seed).fit(scaler.transform(features), labels)
    linear = head_linear(model)
    if len(probe.classes_) != linear.out_features or not np.array_equal(probe.classes_, np.arange(linear.out_features)):
        raise ValueError(
            f"the probe saw classes {probe.classes_.tolist()} but the head has {linear.out_features} outputs: "
            "use a training sample that contains every class"
        )
    weight = probe.coef_ / scaler.scale_[None, :]
    bias = probe.intercept_ - weight @ scaler.mean_
    linear.weight.data.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
    if linear.bias is None:
        raise ValueError("the head's last linear layer has no bias to hold the probe's intercept")
    linear.bias.data.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def head_accuracy(
    model: nn.Module, processor: Any, raw_inputs: list[Any], labels: np.ndarray, modality: str,
    max_length: int = 128, device: torch.device | str = "cpu",
) -> float:
    """Accuracy of the model's own classification head (argmax of its logits)."""
    _, logits = head_inputs_and_logits(model, processor, raw_inputs, modality, max_length=max_length, device=device)
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean())
