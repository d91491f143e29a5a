"""The knowledge quality ``Q`` of a layer's features: how well a teacher layer would teach a student.

Cooper, Chen, Dwivedy, Gurari, "Logit-Based Losses Limit the Effectiveness of Feature Knowledge
Distillation" (NeurReps 2025, arXiv 2511.14981); the formulas follow the authors' code
(Thegolfingocto/KD_wo_CE: ``Scripts/TrainerUtils.py::TPlotClassificationEfficiency``, the quantity
plotted as "Knowledge Quality", and the statistics it reads from ``Scripts/Arch/Analysis/Analysis.py``).
The paper hand-picks the distilled layers from plots of ``Q``; :mod:`hf_pcoh.layers.selection` chooses
the top-k layers by ``Q`` automatically and pairs them in depth order with the student's layers. This
module computes only; the table and the plot of ``Q`` per layer are drawn by :mod:`hf_pcoh.plots`.

Notation: ``x_i`` the features of sample ``i`` flattened to ``D`` numbers, ``c`` one of ``C``
classes, ``|cos|_ij = |<x_i, x_j>| / (||x_i|| ||x_j||)`` (0 when either vector is zero).

On a stratified sub-sample ``A`` (``floor(max_samples / C)`` points per class, all of a smaller class):

* separation  ``S = mean_c mean_{i != j in c} |cos|_ij  -  mean_{c != c'} mean_{i in c, j in c'} |cos|_ij``;
* ``m_c = min_{i != j in c} |cos|_ij`` (the least aligned pair of a class);
* ``delta_c = min_{i in c, j not in c} ||x_i - x_j||`` (euclidean, raw features) and
  ``nu_c = mean_{i in c} ||x_i||``;
* efficiency  ``E = 2 * (mean_c delta_c) / (mean_c nu_c) * K`` with ``K = (N_train / pi)^(1 / r)``,
  ``N_train`` the size of the training set and ``r = min(|A|, D)`` the number of principal
  components of ``A`` (so ``K`` is close to 1 for wide layers).

On a second stratified sub-sample ``B`` (``min(pca_samples_per_class, floor(N / C))`` per class):

* ``p_{c,1} >= p_{c,2} >= ...`` the explained-variance ratios of class ``c``'s centred features
  (squared singular values over their sum), zero-padded to ``n_max``, the largest class count in ``B``;
* the class's intrinsic dimension ``d_c = min{k : p_{c,1} + ... + p_{c,k} >= 0.95}`` (at most
  ``n_max - 1``); ``intrinsic_dimension = mean_c d_c``;
* ``H_c = -sum_{k <= t} q_{c,k} ln q_{c,k}`` with ``q_{c,k} = p_{c,k} / sum_{l <= t} p_{c,l}``: the
  entropy of the spectrum cut at ``t``. As in the reference code, ``t = min(sum_c d_c, n_max)`` for
  every class (``spectrum_cut="summed"``); ``spectrum_cut="per_class"`` cuts each class at its own
  ``d_c`` instead;
* information  ``I = (1 - mean_c m_c) * (mean_c H_c) / ln 5``.

Knowledge quality ``Q = S + sqrt(I * E)``.

Everything is computed from one ``|A| x |A|`` Gram matrix (float32, ``|A| <= max_samples``) built in
column blocks, and per-class ``n_c x n_c`` Gram matrices for the spectra, so ``D`` can be a flattened
feature map of ~100k numbers: memory is ``O(|A|^2 + |A| * block)``, never ``O(|A| * D)`` beyond the
input itself. The closest inter-class pair of each class is re-measured exactly in float64.
Every component is invariant to a global rescaling of the features (they are divided by their largest
absolute value first, so huge or tiny activations neither overflow nor underflow).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

EXPLAINED_VARIANCE_THRESHOLD = 0.95
# The reference divides the mean class entropy by ln 5 ("all datasets are capped at 500 samples/class").
INFORMATION_NORMALISER = math.log(5.0)
SPECTRUM_CUTS = ("summed", "per_class")

# Elements of one gathered [rows, columns] feature block (float32: 64 MiB) and rows of the Gram
# matrix processed at once when reducing it; both bound the memory whatever D is.
_BLOCK_ELEMENTS = 1 << 24
_GRAM_ROW_CHUNK = 1024

FeatureArray = torch.Tensor | np.ndarray
Layer = Hashable


@dataclass(frozen=True)
class KnowledgeQuality:
    """The components of ``Q = S + sqrt(I * E)`` for one layer (see the module docstring)."""

    separation: float
    information: float
    efficiency: float
    quality: float
    intrinsic_dimension: float


# --------------------------------------------------------------------------------------------------
# inputs


def _flatten_features(features: FeatureArray, name: str = "features") -> torch.Tensor:
    """``[N, ...]`` torch or numpy -> a ``[N, D]`` tensor (a view where the input allows one)."""
    if isinstance(features, np.ndarray):
        if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {features.dtype}")
        features = torch.from_numpy(np.ascontiguousarray(features))
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray [N, ...], got {type(features).__name__}")
    if features.is_complex() or features.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {features.dtype}")
    if features.dim() < 2:
        raise ValueError(f"{name} must be [N, ...] with at least one feature dimension, got shape {tuple(features.shape)}")
    if features.shape[1:].numel() == 0:
        raise ValueError(f"{name} has no feature values per sample: shape {tuple(features.shape)}")
    return features.detach().reshape(features.shape[0], -1)


def _class_index(labels: FeatureArray, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``[N]`` (any integers) or one-hot ``[N, C]`` -> (class values ``[C]``, class of each sample ``[N]`` in 0..C-1)."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() == 2:
        labels = labels.argmax(dim=1)
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N] class ids or [N, C] one-hot, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be integer class ids; got non-integer floats")
    if labels.shape[0] != num_samples:
        raise ValueError(f"labels has {labels.shape[0]} entries but features has {num_samples} samples; they must match")
    classes, inverse = torch.unique(labels.long(), return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(f"labels must name at least 2 classes to measure separation, got {classes.tolist()}")
    return classes, inverse


def _stratified_sample(
    class_of: torch.Tensor, num_classes: int, per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, list[int]]:
    """Up to ``per_class`` random indices of each class, grouped by class: (indices ``[n]``, counts ``[C]``)."""
    chosen, counts = [], []
    for c in range(num_classes):
        members = torch.nonzero(class_of == c).flatten()
        take = min(per_class, members.numel())
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:take]].sort().values)
        counts.append(take)
    return torch.cat(chosen), counts


def _rows_scale(flat: torch.Tensor, rows: torch.Tensor, name: str) -> float:
    """The largest |value| among ``rows`` (1.0 if all are zero); non-finite values are an error."""
    largest = 0.0
    for block in _raw_column_blocks(flat, rows):
        if not torch.isfinite(block).all():
            raise ValueError(f"{name} contain NaN or infinite values; the knowledge quality needs finite features")
        largest = max(largest, float(block.abs().max()))
    return largest if largest > 0 else 1.0


def _raw_column_blocks(flat: torch.Tensor, rows: torch.Tensor) -> Iterator[torch.Tensor]:
    width = max(1, _BLOCK_ELEMENTS // max(1, rows.numel()))
    rows = rows.to(flat.device)
    for start in range(0, flat.shape[1], width):
        yield flat[:, start : start + width].index_select(0, rows)


def _column_blocks(flat: torch.Tensor, rows: torch.Tensor, scale: float) -> Iterator[torch.Tensor]:
    """``flat[rows] / scale`` as float32 ``[len(rows), width]`` blocks covering all D columns."""
    for block in _raw_column_blocks(flat, rows):
        if block.dtype == torch.float64:
            yield (block / scale).float()
        else:
            yield block.float() / scale


# --------------------------------------------------------------------------------------------------
# the statistics


@dataclass
class _PairStatistics:
    separation: float
    mean_min_intra_abs_cos: float
    mean_min_inter_distance: float
    mean_class_norm: float


@dataclass
class _RowExtremes:
    """Per row of the sub-sample: its class's ``|cos|`` sums and its nearest pairs."""

    pair_sums: torch.Tensor  # [C, C] sum of |cos| over ordered pairs of (class of i, class of j), i != j
    min_intra_abs_cos: torch.Tensor  # [n] smallest |cos| to another point of the same class
    min_inter_squared_distance: torch.Tensor  # [n] smallest squared distance to another class (float32)
    nearest_other: torch.Tensor  # [n] the index of that nearest point of another class


def _gram_matrix(flat: torch.Tensor, rows: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 Gram matrix ``[n, n]`` of ``flat[rows] / scale`` and its rows' float64 squared norms ``[n]``."""
    n = rows.numel()
    gram = torch.zeros(n, n, dtype=torch.float32, device=flat.device)  # [n, n]
    squared_norms = torch.zeros(n, dtype=torch.float64, device=flat.device)
    for block in _column_blocks(flat, rows, scale):
        # Only the upper block triangle (half the work); mirrored below once all columns are in.
        for start in range(0, n, _GRAM_ROW_CHUNK):
            stop = min(n, start + _GRAM_ROW_CHUNK)
            gram[start:stop, start:].addmm_(block[start:stop], block[start:].T)
        squared_norms += block.double().square_().sum(dim=1)
    for start in range(_GRAM_ROW_CHUNK, n, _GRAM_ROW_CHUNK):
        gram[start : start + _GRAM_ROW_CHUNK, :start] = gram[:start, start : start + _GRAM_ROW_CHUNK].T
    return gram, squared_norms


def _row_extremes(gram: torch.Tensor, norms: torch.Tensor, squared_norms: torch.Tensor, class_of: torch.Tensor,
                  num_classes: int) -> _RowExtremes:  # fmt: skip
    """Reduce the Gram matrix chunk by chunk of rows, never holding more than ``[chunk, n]`` at once."""
    device, n = gram.device, gram.shape[0]
    inverse_norms = torch.where(norms > 1e-30, 1.0 / norms.clamp_min(1e-30), 0.0).float()
    squared_norms32 = squared_norms.float()
    one_hot = torch.nn.functional.one_hot(class_of, num_classes).float()  # [n, C]
    extremes = _RowExtremes(
        pair_sums=torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device),
        min_intra_abs_cos=torch.empty(n, dtype=torch.float32, device=device),
        min_inter_squared_distance=torch.empty(n, dtype=torch.float32, device=device),
        nearest_other=torch.empty(n, dtype=torch.long, device=device),
    )
    for start in range(0, n, _GRAM_ROW_CHUNK):
        stop = min(n, start + _GRAM_ROW_CHUNK)
        local = torch.arange(stop - start, device=device)
        inner = gram[start:stop]  # [R, n]
        same_class = class_of[start:stop, None] == class_of[None, :]  # [R, n]
        abs_cos = (inner * inverse_norms[start:stop, None] * inverse_norms[None, :]).abs_().clamp_(max=1.0)
        abs_cos[local, local + start] = 0.0  # a point is not its own pair
        extremes.pair_sums.index_add_(0, class_of[start:stop], (abs_cos @ one_hot).double())
        same_class[local, local + start] = False
        extremes.min_intra_abs_cos[start:stop] = torch.where(same_class, abs_cos, torch.inf).amin(dim=1)
        same_class[local, local + start] = True
        squared_distances = (squared_norms32[start:stop, None] + squared_norms32[None, :] - 2.0 * inner).clamp_(min=0.0)
        nearest = torch.where(same_class, torch.inf, squared_distances).min(dim=1)
        extremes.min_inter_squared_distance[start:stop] = nearest.values
        extremes.nearest_other[start:stop] = nearest.indices
    return extremes


def _separation(pair_sums: torch.Tensor, counts: list[int]) -> float:
    """``S``: the mean within-class ``|cos|`` minus the mean between-class ``|cos|``, each averaged over classes."""
    num_classes = len(counts)
    sizes = torch.tensor(counts, dtype=torch.float64, device=pair_sums.device)
    pair_counts = sizes[:, None] * sizes[None, :] - torch.diag(sizes)  # ordered pairs, self excluded
    pair_means = pair_sums / pair_counts
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool, device=pair_sums.device)
    return float(pair_means.diagonal().mean() - pair_means[off_diagonal].mean())


def _pair_statistics(flat: torch.Tensor, rows: torch.Tensor, counts: list[int]) -> _PairStatistics:
    """S, mean_c m_c, mean_c delta_c and mean_c nu_c on the sub-sample ``rows`` (grouped by class)."""
    device, num_classes = flat.device, len(counts)
    scale = _rows_scale(flat, rows, "features")
    gram, squared_norms = _gram_matrix(flat, rows, scale)
    norms = squared_norms.sqrt()
    class_of = torch.repeat_interleave(torch.arange(num_classes, device=device), torch.tensor(counts, device=device))
    extremes = _row_extremes(gram, norms, squared_norms, class_of, num_classes)

    min_intra, min_inter, class_norms = [], [], []
    offsets = [0, *np.cumsum(counts).tolist()]
    for c in range(num_classes):
        members = slice(offsets[c], offsets[c + 1])
        min_intra.append(float(extremes.min_intra_abs_cos[members].min()))
        class_norms.append(float(norms[members].mean()))
        # The closest pair found in float32 is re-measured exactly: duplicates across classes give 0.
        first = offsets[c] + int(extremes.min_inter_squared_distance[members].argmin())
        second = int(extremes.nearest_other[first])
        difference = flat[rows[first]].double() / scale - flat[rows[second]].double() / scale
        min_inter.append(float(torch.linalg.vector_norm(difference)))
    return _PairStatistics(
        separation=_separation(extremes.pair_sums, counts),
        mean_min_intra_abs_cos=float(np.mean(min_intra)),
        mean_min_inter_distance=float(np.mean(min_inter)),
        mean_class_norm=float(np.mean(class_norms)),
    )


def _class_spectra(flat: torch.Tensor, rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Each class's explained-variance ratios (descending, float64, length n_c; all zero if the class has no variance)."""
    scale = _rows_scale(flat, rows, "features")
    spectra, start = [], 0
    for count in counts:
        members = rows[start : start + count]
        start += count
        gram = torch.zeros(count, count, dtype=torch.float32, device=flat.device)  # [n_c, n_c]
        for block in _column_blocks(flat, members, scale):
            block = block - block.mean(dim=0, keepdim=True)
            gram.addmm_(block, block.T)
        # Squared singular values of the centred class = eigenvalues of its Gram matrix.
        variances = torch.linalg.eigvalsh(gram.double()).flip(0).clamp_(min=0.0).cpu()
        total = variances.sum()
        spectra.append(variances / total if total > 0 else torch.zeros_like(variances))
    return spectra


def _intrinsic_dimension(ratios: torch.Tensor, width: int) -> int:
    """``min{k : p_1 + ... + p_k >= 0.95}``, at most ``width - 1`` (the reference's loop bound); 0 for a zero spectrum."""
    if ratios.numel() == 0 or float(ratios.sum()) == 0.0:
        return 0
    cumulative = ratios.cumsum(0)
    reached = torch.nonzero(cumulative >= EXPLAINED_VARIANCE_THRESHOLD).flatten()
    count = int(reached[0]) + 1 if reached.numel() else ratios.numel()
    return min(count, width - 1)


def _spectrum_entropy(ratios: torch.Tensor, cut: int) -> float:
    """Entropy of ``ratios[:cut]`` renormalised to sum 1 (``0 ln 0 = 0``; 0 for an empty or zero spectrum)."""
    kept = ratios[:cut]
    total = float(kept.sum())
    if total <= 0.0:
        return 0.0
    probabilities = kept[kept > 0] / total
    return float(-(probabilities * probabilities.log()).sum())


# --------------------------------------------------------------------------------------------------
# public API


def knowledge_quality(
    features: FeatureArray,
    labels: FeatureArray,
    max_samples: int = 5000,
    pca_samples_per_class: int = 500,
    seed: int = 0,
    num_train_samples: int | None = None,
    *,
    spectrum_cut: Literal["summed", "per_class"] = "summed",
) -> KnowledgeQuality:
    """The knowledge quality ``Q = S + sqrt(I * E)`` of one layer's features (Cooper et al. 2025).

    With ``|cos|`` the absolute cosine, ``m_c`` a class's smallest within-class ``|cos|``,
    ``delta_c`` its smallest euclidean distance to another class, ``nu_c`` its mean norm, ``d_c`` the
    number of principal components explaining 95 % of its centred variance and ``H_c`` the entropy
    of its explained-variance spectrum cut at ``t`` (see the module docstring):

        S = mean_c mean_{i != j in c} |cos|_ij - mean_{c != c'} mean_{i in c, j in c'} |cos|_ij
        I = (1 - mean_c m_c) * mean_c H_c / ln 5
        E = 2 * mean_c delta_c / mean_c nu_c * (N_train / pi)^(1 / min(n_A, D))
        Q = S + sqrt(I * E),        intrinsic_dimension = mean_c d_c

    Args:
        features: ``[N, ...]`` torch tensor (any device; the work runs there) or numpy array,
            flattened to ``[N, D]``. Must be finite.
        labels: ``[N]`` integer class ids (any values) or ``[N, C]`` one-hot; at least 2 classes.
        max_samples: size of the stratified sub-sample ``A`` for S, I's ``m_c`` and E:
            ``floor(max_samples / C)`` per class (at least 2 needed).
        pca_samples_per_class: per-class size of the stratified sub-sample ``B`` for the spectra:
            ``min(pca_samples_per_class, floor(N / C))``.
        seed: seeds both sub-samples; the same labels and seed give the same samples for every layer.
        num_train_samples: ``N_train`` in ``K``; the size of the training set the features come from
            (default: ``N``, the number of rows given).
        spectrum_cut: ``"summed"`` (the reference code: every class's spectrum is cut at
            ``sum_c d_c``) or ``"per_class"`` (each class at its own ``d_c``).
    """
    flat = _flatten_features(features)
    num_samples = flat.shape[0]
    classes, class_of = _class_index(labels, num_samples)
    num_classes = classes.numel()
    if num_train_samples is None:
        num_train_samples = num_samples
    _check_options(max_samples, pca_samples_per_class, num_train_samples, spectrum_cut, num_classes)
    _check_class_sizes(classes, class_of)

    generator = torch.Generator().manual_seed(seed)  # draws A, then B: the same samples for every layer
    rows, counts = _stratified_sample(class_of, num_classes, max_samples // num_classes, generator)
    pair_stats = _pair_statistics(flat, rows, counts)
    pca_per_class = min(pca_samples_per_class, num_samples // num_classes)
    pca_rows, pca_counts = _stratified_sample(class_of, num_classes, pca_per_class, generator)
    mean_entropy, intrinsic_dimension = _spectrum_statistics(flat, pca_rows, pca_counts, spectrum_cut)

    separation = pair_stats.separation
    information = (1.0 - pair_stats.mean_min_intra_abs_cos) * mean_entropy / INFORMATION_NORMALISER
    efficiency = _efficiency(pair_stats, num_train_samples, components=min(rows.numel(), flat.shape[1]))
    quality = separation + math.sqrt(max(information * efficiency, 0.0))
    logger.debug(
        "knowledge quality of [%d, %d] features, %d classes (%d + %d sampled): S=%.4f I=%.4f E=%.4f Q=%.4f ID=%.2f",
        num_samples, flat.shape[1], num_classes, rows.numel(), pca_rows.numel(),
        separation, information, efficiency, quality, intrinsic_dimension,
    )  # fmt: skip
    return KnowledgeQuality(
        separation=separation,
        information=information,
        efficiency=efficiency,
        quality=quality,
        intrinsic_dimension=intrinsic_dimension,
    )


def _check_options(max_samples: int, pca_samples_per_class: int, num_train_samples: int, spectrum_cut: str,
                   num_classes: int) -> None:  # fmt: skip
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples // num_classes < 2:
        raise ValueError(
            f"max_samples={max_samples!r} gives fewer than 2 samples to each of the {num_classes} classes; "
            f"use an integer >= {2 * num_classes} (default 5000)"
        )
    if isinstance(pca_samples_per_class, bool) or not isinstance(pca_samples_per_class, int) or pca_samples_per_class < 2:
        raise ValueError(f"pca_samples_per_class={pca_samples_per_class!r} must be an integer >= 2 (default 500)")
    if isinstance(num_train_samples, bool) or not isinstance(num_train_samples, int) or num_train_samples < 1:
        raise ValueError(f"num_train_samples={num_train_samples!r} must be a positive integer (the training-set size) or None")
    if spectrum_cut not in SPECTRUM_CUTS:
        raise ValueError(f"spectrum_cut={spectrum_cut!r} is not one of {SPECTRUM_CUTS}")


def _check_class_sizes(classes: torch.Tensor, class_of: torch.Tensor) -> None:
    class_sizes = torch.bincount(class_of, minlength=classes.numel())
    if int(class_sizes.min()) < 2:
        too_small = classes[class_sizes < 2].tolist()
        raise ValueError(f"labels: classes {too_small} have fewer than 2 samples; every class needs at least 2")


def _spectrum_statistics(flat: torch.Tensor, rows: torch.Tensor, counts: list[int], spectrum_cut: str) -> tuple[float, float]:
    """(``mean_c H_c``, ``mean_c d_c``) on the sub-sample ``rows`` (grouped by class)."""
    spectra = _class_spectra(flat, rows, counts)
    width = max(counts)
    dimensions = [_intrinsic_dimension(ratios, width) for ratios in spectra]
    if spectrum_cut == "summed":
        cuts = [min(sum(dimensions), width)] * len(counts)
    else:
        cuts = dimensions
    mean_entropy = float(np.mean([_spectrum_entropy(r, t) for r, t in zip(spectra, cuts)]))
    return mean_entropy, float(np.mean(dimensions))


def _efficiency(pair_stats: _PairStatistics, num_train_samples: int, components: int) -> float:
    """``E = 2 * mean_c delta_c / mean_c nu_c * (N_train / pi)^(1 / components)``."""
    if not pair_stats.mean_class_norm > 0:
        return 0.0  # all-zero features: no distance to spend
    packing = (num_train_samples / math.pi) ** (1.0 / components)
    return 2.0 * pair_stats.mean_min_inter_distance / pair_stats.mean_class_norm * packing


def layer_qualities(
    features_by_layer: Mapping[Layer, FeatureArray], labels: FeatureArray, **kwargs
) -> dict[Layer, KnowledgeQuality]:
    """``{layer: knowledge_quality(features, labels, **kwargs)}`` in the mapping's (depth) order.

    The same ``labels`` and ``seed`` draw the same sub-samples for every layer, so the layers are
    compared on the same points.
    """
    if not features_by_layer:
        raise ValueError("features_by_layer is empty; pass {layer: [N, ...] features} for at least one layer")
    qualities = {}
    for layer, features in features_by_layer.items():
        qualities[layer] = knowledge_quality(features, labels, **kwargs)
        logger.info("layer %s: %s", layer, qualities[layer])
    return qualities
