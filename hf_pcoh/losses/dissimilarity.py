"""Pluggable dissimilarities between the rows of a feature matrix.

A ``Dissimilarity`` maps features ``x`` of shape ``[B, d]`` to a ``[B, B]`` matrix ``D`` with
``D[i, j] = d(x_i, x_j)``. Perception coherence and the teacher-agreement metrics take one of these
objects rather than a string switch, so a user can plug in their own (subclass and implement
``pairwise``). All computations run in float32 (or float64 if the input is float64), also under
bf16/fp16 autocast: ranks of near-equal distances are meaningless in half precision.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import unknown_name_message
from .numerics import as_float


class Dissimilarity:
    """Base class: ``pairwise(x) -> [B, B]``, symmetric, zero on the diagonal, non-negative."""

    name: str = ""

    def pairwise(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2:
            raise ValueError(f"{type(self).__name__} expects features of shape [B, d], got {tuple(features.shape)}")
        features = as_float(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.pairwise(features)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def centred(features: torch.Tensor) -> torch.Tensor:
    """Rows minus their mean: distances do not change, and the Gram-matrix formula below stays accurate
    when the features sit far from the origin."""
    return features - features.mean(dim=0, keepdim=True)


class SquaredEuclidean(Dissimilarity):
    """``d(x, y) = ||x - y||^2``, from the Gram matrix, clamped at 0 against round-off."""

    name = "squared_euclidean"

    def pairwise(self, features: torch.Tensor) -> torch.Tensor:
        points = centred(features)
        squared_norms = (points * points).sum(dim=1)
        # ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j> in one addmm; few ops matter: this runs on every batch.
        squared = torch.addmm(squared_norms[:, None] + squared_norms[None, :], points, points.T, alpha=-2.0)
        return squared.clamp_min(0.0).fill_diagonal_(0.0)


class Euclidean(Dissimilarity):
    """``d(x, y) = ||x - y||``; the gradient at ``x = y`` (duplicate rows) is defined as 0, never NaN."""

    name = "euclidean"

    def pairwise(self, features: torch.Tensor) -> torch.Tensor:
        # torch.cdist computes through the Gram matrix too, and its own backward (0 where a distance
        # is 0) costs half of autograd through the written-out formula.
        points = centred(features)
        distances = torch.cdist(points, points)
        return distances.masked_fill(torch.eye(len(features), dtype=torch.bool, device=features.device), 0.0)


class Cosine(Dissimilarity):
    """``d(x, y) = 1 - cos(x, y)`` in [0, 2]; a zero vector is treated as orthogonal to everything."""

    name = "cosine"

    def pairwise(self, features: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(features, dim=1, eps=1e-12)
        dissimilarity = (1.0 - unit @ unit.T).clamp(0.0, 2.0)
        return dissimilarity * (1.0 - torch.eye(len(features), device=features.device, dtype=features.dtype))


DISSIMILARITIES: dict[str, type[Dissimilarity]] = {
    cls.name: cls for cls in (Euclidean, SquaredEuclidean, Cosine)
}


def get_dissimilarity(dissimilarity: str | Dissimilarity) -> Dissimilarity:
    """Return a ``Dissimilarity`` from an instance or one of the names in ``DISSIMILARITIES``."""
    if isinstance(dissimilarity, Dissimilarity):
        return dissimilarity
    try:
        return DISSIMILARITIES[dissimilarity]()
    except KeyError:
        raise ValueError(unknown_name_message("dissimilarity", str(dissimilarity), list(DISSIMILARITIES))) from None
