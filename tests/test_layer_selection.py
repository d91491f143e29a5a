"""Knowledge quality Q = S + sqrt(I * E) (Cooper et al. 2025) and the automatic teacher-layer choice."""

from __future__ import annotations

import math
import resource
import sys
import time

import numpy as np
import pytest
import torch

from hf_pcoh.layers import (
    KnowledgeQuality,
    format_quality_table,
    knowledge_quality,
    layer_qualities,
    map_layers_one_to_one,
    plot_qualities,
    select_layers,
)
from hf_pcoh.layers import quality


def clusters(num_classes: int, per_class: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c around 10 * e_c (orthogonal centres) with isotropic gaussian spread."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(dim)[:num_classes]
    features = np.concatenate([centres[c] + spread * rng.standard_normal((per_class, dim)) for c in range(num_classes)])
    return features, np.repeat(np.arange(num_classes), per_class)


def brute_force_quality(features: np.ndarray, labels: np.ndarray, num_train: int) -> dict[str, float]:
    """The reference formulas written directly in float64 numpy, on all samples (no sub-sampling)."""
    x = features.reshape(len(features), -1).astype(np.float64)
    classes = np.unique(labels)
    norms = np.linalg.norm(x, axis=1)
    abs_cos = np.abs(x @ x.T) / np.outer(norms, norms)
    distances = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    intra_mean, intra_min, inter_mean, inter_min_distance, class_norm = [], [], [], [], []
    for c in classes:
        inside, outside = labels == c, labels != c
        block = abs_cos[np.ix_(inside, inside)]
        upper = block[np.triu_indices(inside.sum(), k=1)]
        intra_mean.append(upper.mean())
        intra_min.append(upper.min())
        inter_min_distance.append(distances[np.ix_(inside, outside)].min())
        class_norm.append(norms[inside].mean())
        inter_mean += [abs_cos[np.ix_(inside, labels == other)].mean() for other in classes if other != c]
    spectra, dimensions = [], []
    for c in classes:
        centred = x[labels == c] - x[labels == c].mean(axis=0)
        ratios = np.linalg.svd(centred, compute_uv=False) ** 2
        ratios = np.pad(ratios / ratios.sum(), (0, (labels == c).sum() - len(ratios)))
        dimensions.append(int(np.argmax(np.cumsum(ratios) >= 0.95)) + 1)
        spectra.append(ratios)
    cut = min(sum(dimensions), len(spectra[0]))
    entropies = []
    for ratios in spectra:
        q = ratios[:cut] / ratios[:cut].sum()
        q = q[q > 0]
        entropies.append(-(q * np.log(q)).sum())
    separation = np.mean(intra_mean) - np.mean(inter_mean)
    information = (1 - np.mean(intra_min)) * np.mean(entropies) / np.log(5)
    packing = (num_train / np.pi) ** (1 / min(len(x), x.shape[1]))
    efficiency = 2 * np.mean(inter_min_distance) / np.mean(class_norm) * packing
    return {
        "separation": separation,
        "information": information,
        "efficiency": efficiency,
        "quality": separation + np.sqrt(information * efficiency),
        "intrinsic_dimension": float(np.mean(dimensions)),
    }


def low_rank_classes(num_classes: int, per_class: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c spread over its own random 3-d subspace (scales 3, 2, 1) around a random mean, plus slight noise."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(num_classes):
        basis = np.linalg.qr(rng.standard_normal((dim, 3)))[0].T  # [3, dim]
        coefficients = rng.standard_normal((per_class, 3)) * [3.0, 2.0, 1.0]
        blocks.append(2.0 * rng.standard_normal(dim) + coefficients @ basis + 0.05 * rng.standard_normal((per_class, dim)))
    return np.concatenate(blocks), np.repeat(np.arange(num_classes), per_class)


@pytest.mark.parametrize("data", ["isotropic", "low_rank"])
def test_matches_the_reference_formulas_computed_directly_and_does_not_depend_on_the_chunking(monkeypatch, data):
    if data == "isotropic":  # sum of class dimensions > samples per class: the entropy cut is the whole spectrum
        features, labels = clusters(num_classes=3, per_class=40, dim=24, spread=3.0)
        features += np.random.default_rng(1).standard_normal(24)  # a shared offset: cosines are not translation invariant
    else:  # ~3 dimensions per class: the spectra are cut at their sum, ~9 of 40 components
        features, labels = low_rank_classes(num_classes=3, per_class=40, dim=24)
    expected = brute_force_quality(features, labels, num_train=50_000)
    default = knowledge_quality(features, labels, num_train_samples=50_000)
    monkeypatch.setattr(quality, "_BLOCK_ELEMENTS", 7 * 120)  # 7-column blocks
    monkeypatch.setattr(quality, "_GRAM_ROW_CHUNK", 13)
    chunked = knowledge_quality(features, labels, num_train_samples=50_000)
    for result in (default, chunked):
        for field, value in expected.items():
            assert getattr(result, field) == pytest.approx(value, rel=1e-4, abs=1e-5), field


def test_separated_tight_clusters_beat_the_same_points_with_mixed_labels():
    features, labels = clusters(num_classes=4, per_class=60, dim=32, spread=0.3)
    separated = knowledge_quality(features, labels)
    mixed = knowledge_quality(features, np.random.default_rng(0).permutation(labels))
    assert separated.separation > 0.9
    assert abs(mixed.separation) < 0.05
    assert separated.quality > mixed.quality + 0.5


def test_clusters_along_one_direction_have_no_separation_and_no_information():
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(16)
    features = rng.uniform(1.0, 3.0, size=(200, 1)) * direction  # every |cos| is 1
    labels = np.repeat(np.arange(4), 50)
    result = knowledge_quality(features, labels)
    assert abs(result.separation) < 1e-5
    assert result.information == pytest.approx(0.0, abs=1e-5)  # min within-class |cos| = 1
    assert result.quality == pytest.approx(0.0, abs=3e-3)


def test_intrinsic_dimension_counts_the_dimensions_of_each_class_subspace():
    rng = np.random.default_rng(0)
    dim, per_class, class_dimensions = 64, 200, [2, 4, 6]
    blocks = []
    for k in class_dimensions:
        basis = np.linalg.qr(rng.standard_normal((dim, k)))[0].T  # [k, dim], orthonormal rows
        blocks.append(rng.standard_normal(dim) + rng.standard_normal((per_class, k)) @ basis
                      + 1e-4 * rng.standard_normal((per_class, dim)))  # fmt: skip
    labels = np.repeat(np.arange(3), per_class)
    result = knowledge_quality(np.concatenate(blocks), labels)
    assert result.intrinsic_dimension == pytest.approx(np.mean(class_dimensions))  # (2 + 4 + 6) / 3


def test_efficiency_grows_as_classes_move_apart_at_fixed_norm():
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal((200, 16))
    labels = np.repeat([0, 1], 100)
    efficiencies = []
    for angle in (20, 60, 120):
        theta = math.radians(angle)
        centres = np.zeros((2, 16))
        centres[0, 0], centres[1, 0], centres[1, 1] = 1.0, math.cos(theta), math.sin(theta)
        points = centres[labels] + noise
        points /= np.linalg.norm(points, axis=1, keepdims=True)  # every point on the unit sphere
        efficiencies.append(knowledge_quality(points, labels).efficiency)
    assert efficiencies[0] < efficiencies[1] < efficiencies[2]


def test_select_layers_picks_the_separated_layer_and_returns_depth_order():
    separated, labels = clusters(num_classes=4, per_class=50, dim=32, spread=1.0)
    rng = np.random.default_rng(0)
    layers = {
        0: rng.standard_normal(separated.shape),  # random noise
        1: separated[rng.permutation(len(labels))],  # the same clusters, unrelated to the labels
        2: separated,
    }
    qualities = layer_qualities(layers, labels)
    assert list(qualities) == [0, 1, 2]
    assert select_layers(qualities, top_k=1) == [2]
    # Isotropic noise scores high I and E (Q rewards spread), so it outranks the label-shuffled clusters.
    assert select_layers(qualities, top_k=2) == [0, 2]

    def quality(q: float) -> KnowledgeQuality:
        return KnowledgeQuality(separation=q, information=0.0, efficiency=0.0, quality=q, intrinsic_dimension=1.0)

    made_up = {"embed": quality(0.5), "block1": quality(0.1), "block2": quality(0.9), "head": quality(0.3)}
    assert select_layers(made_up, top_k=2) == ["embed", "block2"]  # best two, shallower first
    assert select_layers(made_up, top_k=4) == list(made_up)


def test_layer_qualities_measures_every_layer_on_the_same_samples():
    features, labels = clusters(num_classes=5, per_class=80, dim=20, spread=2.0)
    both = layer_qualities({"a": features, "b": features * 7.0}, labels, max_samples=100, pca_samples_per_class=10)
    alone = knowledge_quality(features, labels, max_samples=100, pca_samples_per_class=10)
    for result in both.values():  # scaling changes nothing and the same seed draws the same points
        for field in ("separation", "information", "efficiency", "quality", "intrinsic_dimension"):
            assert getattr(result, field) == pytest.approx(getattr(alone, field), rel=1e-5, abs=1e-6)
    other_seed = knowledge_quality(features, labels, max_samples=100, pca_samples_per_class=10, seed=1)
    assert other_seed.quality != alone.quality


def test_stratified_sample_takes_the_same_count_from_each_class_or_all_of_a_small_one():
    class_of = torch.cat([torch.zeros(1000, dtype=torch.long), torch.ones(20, dtype=torch.long), torch.full((300,), 2)])
    rows, counts = quality._stratified_sample(class_of, 3, 50, torch.Generator().manual_seed(0))
    assert counts == [50, 20, 50]
    assert class_of[rows].tolist() == [0] * 50 + [1] * 20 + [2] * 50
    assert len(set(rows.tolist())) == 120


def test_conv_maps_in_torch_equal_their_flattened_numpy_version():
    features, labels = clusters(num_classes=3, per_class=30, dim=48, spread=1.0)
    maps = torch.from_numpy(features).float().reshape(90, 3, 4, 4)
    from_torch = knowledge_quality(maps, torch.from_numpy(labels))
    from_numpy = knowledge_quality(features.astype(np.float32), labels)
    assert from_torch == from_numpy


def test_duplicates_zeros_and_huge_values_give_finite_answers():
    features, labels = clusters(num_classes=3, per_class=30, dim=16, spread=1.0)
    reference = knowledge_quality(features, labels)
    huge = knowledge_quality(features * 1e200, labels)
    tiny = knowledge_quality((features * 1e-30).astype(np.float32), labels)
    for result in (huge, tiny):
        assert result.quality == pytest.approx(reference.quality, rel=1e-4)

    duplicated = features.copy()
    duplicated[0] = duplicated[40]  # a point of class 0 equal to one of class 1 ...
    duplicated[70] = duplicated[41]  # ... and one of class 2 equal to another of class 1: every delta_c = 0
    assert knowledge_quality(duplicated, labels).efficiency == 0.0

    with_zeros = features.copy()
    with_zeros[:5] = 0.0
    for result in (knowledge_quality(with_zeros, labels), knowledge_quality(np.zeros_like(features), labels)):
        assert all(math.isfinite(v) for v in (result.separation, result.information, result.efficiency, result.quality))

    features[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        knowledge_quality(features, labels)


@pytest.mark.slow  # large maps by design
def test_large_flattened_maps_run_in_seconds_with_bounded_memory():
    features = np.random.default_rng(0).standard_normal((3000, 20000), dtype=np.float32)  # 240 MB
    labels = np.repeat(np.arange(10), 300)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = knowledge_quality(features, labels)
    elapsed = time.perf_counter() - start
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    peak_growth_bytes = peak_growth if sys.platform == "darwin" else peak_growth * 1024
    assert math.isfinite(result.quality)
    assert elapsed < 20.0  # ~3 s on 2 CPU cores
    assert peak_growth_bytes < 2**30  # ~0.35 GB measured


def test_errors_name_the_argument_the_value_and_what_works():
    made_up = {layer: KnowledgeQuality(0.0, 0.0, 0.0, float(layer), 1.0) for layer in range(3)}
    for bad in (0, 4, -1, 1.5):
        with pytest.raises(ValueError, match=rf"top_k={bad}.*3 layers.*1\.\.3"):
            select_layers(made_up, top_k=bad)
    with pytest.raises(ValueError, match=r"teacher_layers has 3 layers.*student_layers has 2.*top_k=2"):
        map_layers_one_to_one([1, 5, 9], ["s0", "s1"])
    assert map_layers_one_to_one([1, 5, 9], ["s0", "s1", "s2"]) == [("s0", 1), ("s1", 5), ("s2", 9)]

    features, labels = clusters(num_classes=4, per_class=10, dim=8, spread=1.0)
    with pytest.raises(ValueError, match=r"labels has 39 entries but features has 40"):
        knowledge_quality(features, labels[:-1])
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        knowledge_quality(features, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match=r"max_samples=7 .* 4 classes.*>= 8"):
        knowledge_quality(features, labels, max_samples=7)
    with pytest.raises(ValueError, match=r"classes \[9\] have fewer than 2 samples"):
        knowledge_quality(features, np.r_[labels[:-1], 9])
    with pytest.raises(ValueError, match=r"spectrum_cut='median'"):
        knowledge_quality(features, labels, spectrum_cut="median")


def test_per_class_spectrum_cut_is_an_option():
    features, labels = clusters(num_classes=3, per_class=40, dim=24, spread=1.0)
    summed = knowledge_quality(features, labels)
    per_class = knowledge_quality(features, labels, spectrum_cut="per_class")
    assert per_class.separation == summed.separation and per_class.efficiency == summed.efficiency
    assert per_class.information < summed.information  # a shorter spectrum has less entropy


def test_table_and_plot(tmp_path):
    made_up = {layer: KnowledgeQuality(0.1 * layer, 0.2, 0.3, 0.5 * layer, 4.0) for layer in range(4)}
    table = format_quality_table(made_up, selected=[1, 3])
    lines = table.splitlines()
    assert lines[0] == "| layer | S | I | E | Q | intrinsic dim |"
    assert lines[3].startswith("| 1 * | 0.1000 | 0.2000 | 0.3000 | 0.5000 | 4.0 |")
    assert lines[2].startswith("| 0 |") and lines[4].startswith("| 2 |") and lines[5].startswith("| 3 * |")
    assert "*" not in format_quality_table(made_up)
    with pytest.raises(ValueError, match=r"selected names layers \[7\]"):
        format_quality_table(made_up, selected=[7])

    path = plot_qualities(made_up, tmp_path / "plots" / "quality.png", selected=[3])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
