"""The numerical guards every loss shares: full precision, means over real tokens, and no float32 overflow.

* :func:`as_float`: distances, ranks and set geometry are compared in float32 (float64 when given), also
  under bf16/fp16 autocast, where near-equal values would otherwise be rounding noise.
* :func:`masked_mean`: ``sum_n m_n v_n / sum_n m_n`` over the real (unpadded) positions ``m_n = 1``.
* :func:`divide_by_largest`: ``x / max |x|`` with the maximum detached. Every loss here that uses it is
  invariant to the scale of its input (cosines, normalised distances, ranks of scaled distances, unit-norm
  sets), so the division changes neither value nor gradient, but squares and norms of huge features (1e20)
  no longer overflow float32 (its largest value is ~3.4e38).
"""

from __future__ import annotations

import torch


def as_float(features: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given: the precision losses compare features in, also under autocast."""
    return features if features.dtype in (torch.float32, torch.float64) else features.float()


def divide_by_largest(features: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``features / max |features|`` (the maximum detached), over all entries or along ``dim``.

    All-zero inputs (or slices along ``dim``) are divided by 1, so they stay 0 with a finite gradient.
    Only for scale-invariant uses (module docstring): it is the float32 overflow guard of every loss.
    """
    magnitudes = features.detach().abs()
    largest = magnitudes.amax() if dim is None else magnitudes.amax(dim=dim, keepdim=True)
    return features / torch.where(largest > 0, largest, 1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (all positions when ``mask`` is None).

    ``values`` is ``[B, T, ...]`` (or ``[B, ...]``, or any shape) and ``mask`` covers its leading
    dimensions (``[B, T]``); trailing dimensions are averaged too. With ``dim`` the mean is taken along
    that dimension only (e.g. ``[B, T, d] -> [B, d]``, the mean over each sequence's real tokens).
    ``sum m v / max(sum m, 1)``: a fully masked input gives 0, never NaN.
    """
    if mask is None:
        return values.mean() if dim is None else values.mean(dim=dim)
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    if dim is not None:
        return (values * weights).sum(dim=dim) / weights.sum(dim=dim).clamp_min(1.0)
    per_position = values.numel() // weights.numel()
    return (values * weights).sum() / (weights.sum() * per_position).clamp_min(1.0)
