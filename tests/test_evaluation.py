"""Embedding metrics: values worked out by hand on a few points, the properties a reader relies on
(identical embeddings agree perfectly, reversed orderings score 0, invariances, and what each of the
cosine and euclidean geometries ignores), input validation, and the local ``evaluate`` metric modules
loading from disk with the network cut off.

Most hand examples put points on a line, embedded as ``[[x], ...]`` (1-D) so that euclidean distances
are the differences of the coordinates; the derivations are in the comments.
"""

from __future__ import annotations

import json
import math
import re
import socket

import numpy as np
import pytest
import torch

from hf_pcoh.evaluation import (
    GEOMETRIES,
    METRICS,
    EmbeddingEvaluation,
    dissimilarity_spearman,
    empirical_perception_coherence,
    evaluate_embeddings,
    format_comparison_table,
    knn_accuracy,
    linear_probe_accuracy,
    metric_path,
    neighbour_search,
    retrieval_metrics,
    teacher_neighbour_recall,
    without_aliases,
)
from hf_pcoh.losses.dissimilarity import Dissimilarity, Euclidean


def line(*positions: float) -> np.ndarray:
    """Points on a line as a ``[N, 1]`` embedding."""
    return np.asarray(positions, dtype=np.float64)[:, None]


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


# --------------------------------------------------------------------------- kNN accuracy

KNN_TRAIN = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
KNN_TRAIN_LABELS = np.array([0, 0, 1, 1])
KNN_TEST = np.array([[0.1, 0.0], [0.0, 0.4], [0.0, 0.6], [5.0, 4.0]])
KNN_TEST_LABELS = np.array([0, 0, 1, 0])


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # nearest: (0,0)->0 ok; (0,0)->0 ok; (0,1)->1 ok; (5,5)->1 but the truth is 0.
        (1, 3 / 4),
        # q2 (0,.4): (0,0)[0] at .4, (0,1)[1] at .6 -> 1-1 tie -> nearest's class 0, right;
        # q3 (0,.6): (0,1)[1] at .4, (0,0)[0] at .6 -> tie -> 1, right (a smallest-label rule says 0);
        # q4 (5,4): (5,5)[1] at 1, (1,0)[0] at 5.66 -> tie -> 1, wrong.
        (2, 3 / 4),
        # q3: (0,1)[1] .4, (0,0)[0] .6, (1,0)[0] 1.17 -> 0 wins 2-1, wrong;
        # q4: (5,5)[1], (1,0)[0] 5.66, (0,1)[1] 5.83 -> 1, wrong. q1, q2 -> 0, right.
        (3, 2 / 4),
    ],
)
def test_knn_accuracy_matches_hand_counted_votes(k: int, expected: float) -> None:
    accuracy = knn_accuracy(KNN_TRAIN, KNN_TRAIN_LABELS, KNN_TEST, KNN_TEST_LABELS, k=k, metric="euclidean")
    assert accuracy == pytest.approx(expected)


def test_knn_tie_goes_to_the_nearest_neighbour_not_the_smallest_label() -> None:
    # (0, .6): its 2 neighbours are (0,1) labelled "b" (nearer) and (0,0) labelled "a".
    assert knn_accuracy(KNN_TRAIN, ["a", "a", "b", "b"], [[0.0, 0.6]], ["b"], k=2, metric="euclidean") == 1.0
    assert knn_accuracy(KNN_TRAIN, ["a", "a", "b", "b"], [[0.0, 0.4]], ["a"], k=2, metric="euclidean") == 1.0


def test_distance_ties_go_to_the_earlier_training_point() -> None:
    # Ten training points sit on the query (distance 0): the 5 nearest are the first five of them,
    # indices 5, 6, 7, 8, 23, voting a, a, b, b, a -> "a". (numpy's argpartition alone picks index 27,
    # a "b", instead of 23, which would flip the vote.)
    positions = [3, 2, 2, 1, 1, 0, 0, 0, 0, 3, 2, 3, 2, 2, 3, 2, 2, 2, 2, 3,
                 1, 3, 2, 0, 1, 3, 2, 0, 3, 2, 3, 0, 0, 3, 0, 2, 0, 1, 1, 1]
    labels = ["c"] * len(positions)
    for index, label in ((5, "a"), (6, "a"), (7, "b"), (8, "b"), (23, "a"), (27, "b")):
        labels[index] = label
    assert knn_accuracy(line(*positions), labels, [[0.0]], ["a"], k=5, metric="euclidean") == 1.0


def test_knn_accuracy_uses_the_metric_asked_for() -> None:
    # (8, 6.5) is nearer (10, 0) in euclidean distance (6.8 vs 8.8) but nearer (1, 1.2) in angle
    # (11 vs 39 degrees).
    train, labels = [[10.0, 0.0], [1.0, 1.2]], [0, 1]
    assert knn_accuracy(train, labels, [[8.0, 6.5]], [1], k=1, metric="cosine") == 1.0
    assert knn_accuracy(train, labels, [[8.0, 6.5]], [1], k=1, metric="euclidean") == 0.0


def test_knn_accuracy_accepts_tensors_and_string_labels() -> None:
    as_numbers = knn_accuracy(KNN_TRAIN, KNN_TRAIN_LABELS, KNN_TEST, KNN_TEST_LABELS, k=1, metric="euclidean")
    as_tensors = knn_accuracy(torch.tensor(KNN_TRAIN, dtype=torch.bfloat16), ["x", "x", "y", "y"],
                              torch.tensor(KNN_TEST, dtype=torch.float32), ["x", "x", "y", "x"], k=1, metric="euclidean")
    assert as_numbers == as_tensors == 3 / 4


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_accuracy_on_symmetric_classes() -> None:
    # Classes at -3..-1 and 1..3: by symmetry the boundary is 0, so -2 -> 0, 2 -> 1 (right) and
    # .5 -> 1, -.5 -> 0 (both wrong): 2 of 4.
    train, train_labels = line(-3, -2, -1, 1, 2, 3), [0, 0, 0, 1, 1, 1]
    test, test_labels = line(-2, 2, 0.5, -0.5), [0, 1, 0, 1]
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == 0.5


def test_linear_probe_accuracy_is_invariant_to_rescaling_features() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=120)
    features = rng.normal(size=(120, 6)) + labels[:, None] * np.array([1.0, 0.5, 0, 0, 0, 0])
    scale, shift = np.array([1e3, 1e-3, 5.0, 1.0, 2.0, 1.0]), 7.0
    plain = linear_probe_accuracy(features[:80], labels[:80], features[80:], labels[80:])
    rescaled = linear_probe_accuracy(features[:80] * scale + shift, labels[:80], features[80:] * scale + shift, labels[80:])
    assert plain == rescaled
    assert plain > 0.6  # well above chance (1/3) on these separated classes


# --------------------------------------------------------------------------- retrieval

# Positions and labels; each query's other points sorted by distance, its R, rel(1..R) and the counts:
#   0.0 a: 1.2b 2a 4.5a 7.2b 11b      R=2 [0,1] AP=(1/2)/2=.25  hit@1 no  hit@3 yes
#   1.2 b: 2a 0a 4.5a 7.2b 11b        R=2 [0,0] AP=0             no         no
#   2.0 a: 1.2b 0a 4.5a 7.2b 11b      R=2 [0,1] AP=.25           no         yes
#   4.5 a: 2a 7.2b 1.2b 0a 11b        R=2 [1,0] AP=(1/1)/2=.5    yes        yes
#   7.2 b: 4.5a 11b 2a 1.2b 0a        R=2 [0,1] AP=.25           no         yes
#  11.0 b: 7.2b 4.5a 2a 1.2b 0a       R=2 [1,0] AP=.5            yes        yes
RETRIEVAL_POINTS = line(0.0, 1.2, 2.0, 4.5, 7.2, 11.0)
RETRIEVAL_LABELS = ["a", "b", "a", "a", "b", "b"]
RETRIEVAL_EXPECTED = {"map_at_r": 1.75 / 6, "recall_at_1": 2 / 6, "recall_at_3": 5 / 6}


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_retrieval_metrics_match_hand_computed_values(chunk_size: int | None) -> None:
    results = retrieval_metrics(RETRIEVAL_POINTS, RETRIEVAL_LABELS, ks=(1, 3), metric="euclidean", chunk_size=chunk_size)
    assert results == pytest.approx(RETRIEVAL_EXPECTED)


def test_retrieval_leaves_out_queries_whose_label_is_alone() -> None:
    # A far point of its own class: it cannot be retrieved and, being last in every list, changes no
    # other query's first R or 3 neighbours, so the figures stay those of the 6 points.
    points = np.vstack([RETRIEVAL_POINTS, [[1000.0]]])
    results = retrieval_metrics(points, [*RETRIEVAL_LABELS, "c"], ks=(1, 3), metric="euclidean")
    assert results == pytest.approx(RETRIEVAL_EXPECTED)


def test_retrieval_metrics_never_build_the_full_distance_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    points, labels = rng.normal(size=(600, 8)), rng.integers(0, 5, size=600)
    whole = retrieval_metrics(points, labels, chunk_size=600)
    chunk_shapes = []
    original = neighbour_search.pairwise_distances

    def recording(queries, references, **kwargs):
        distances = original(queries, references, **kwargs)
        chunk_shapes.append(distances.shape)
        return distances

    monkeypatch.setattr(neighbour_search, "pairwise_distances", recording)
    monkeypatch.setattr(neighbour_search, "NEIGHBOUR_CHUNK_ENTRIES", 600 * 50)
    assert retrieval_metrics(points, labels) == pytest.approx(whole)
    assert len(chunk_shapes) == 12 and max(rows * cols for rows, cols in chunk_shapes) <= 600 * 50


# --------------------------------------------------------------------------- teacher-neighbour recall

# Teacher on a line at 0, 1, 3, 7, 15; the student swaps the last two (0, 1, 3, 15, 7).
NEIGHBOUR_TEACHER = line(0, 1, 3, 7, 15)
NEIGHBOUR_STUDENT = line(0, 1, 3, 15, 7)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # teacher 1-NN: 0->1 1->0 2->1 3->2 4->3; student: 0->1 1->0 2->1 3->4 4->2: 3 of 5 kept.
        (1, 3 / 5),
        # teacher 2-NN: {1,2} {0,2} {1,0} {2,1} {3,2}; student: {1,2} {0,2} {1,0} {4,2} {2,1}:
        # overlaps 2+2+2+1+1 = 8 of 10.
        (2, 8 / 10),
    ],
)
def test_teacher_neighbour_recall_matches_hand_counted_overlaps(k: int, expected: float) -> None:
    assert teacher_neighbour_recall(NEIGHBOUR_STUDENT, NEIGHBOUR_TEACHER, k=k, metric="euclidean") == pytest.approx(expected)


def test_teacher_neighbour_recall_is_one_for_the_teacher_itself() -> None:
    teacher = np.random.default_rng(0).normal(size=(80, 6))
    assert teacher_neighbour_recall(teacher, teacher, k=10) == 1.0
    # cosine neighbours ignore norms; euclidean ones ignore rotations and translations
    assert teacher_neighbour_recall(teacher * np.linspace(0.5, 3, 80)[:, None], teacher, k=10) == 1.0
    moved = teacher @ random_rotation(6, 1) + 3.0
    assert teacher_neighbour_recall(moved, teacher, k=10, metric="euclidean") == 1.0


# --------------------------------------------------------------------------- dissimilarity Spearman

# Teacher 0, 1, 3, 7 and student 0, 2, 3, 7. Pairs (01, 02, 03, 12, 13, 23):
# teacher distances 1 3 7 2 6 4 -> ranks 1 3 6 2 5 4; student 2 3 7 1 5 4 -> ranks 2 3 6 1 5 4.
# Rank differences 1 0 0 -1 0 0: rho = 1 - 6 * 2 / (6 * (36 - 1)) = 33/35.
LINE_TEACHER = line(0, 1, 3, 7)
LINE_STUDENT = line(0, 2, 3, 7)


def test_dissimilarity_spearman_matches_the_rank_formula() -> None:
    assert dissimilarity_spearman(LINE_STUDENT, LINE_TEACHER) == pytest.approx(33 / 35)


def test_dissimilarity_spearman_is_one_for_identical_or_monotone_related_embeddings() -> None:
    teacher = np.random.default_rng(0).normal(size=(60, 5))
    assert dissimilarity_spearman(teacher, teacher) == pytest.approx(1.0)
    # subsampling picks the same points on both sides
    assert dissimilarity_spearman(teacher, teacher, max_points=20, seed=3) == pytest.approx(1.0)
    # scaled, rotated, translated student; and squared distances are an increasing transform
    moved = 1e3 * teacher @ random_rotation(5, 2) - 4.0
    assert dissimilarity_spearman(moved, teacher) == pytest.approx(1.0)
    assert dissimilarity_spearman(teacher, teacher, dissimilarity="squared_euclidean", teacher_dissimilarity=Euclidean()) == pytest.approx(1.0)


def test_dissimilarity_spearman_of_a_collapsed_student_is_nan_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hf_pcoh.evaluation"):
        value = dissimilarity_spearman(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 3)))
    assert math.isnan(value)
    assert "collapsed" in caplog.text


# --------------------------------------------------------------------------- perception coherence


class ReversedEuclidean(Dissimilarity):
    """A plug-in dissimilarity that reverses every euclidean comparison: ``d = 1000 - ||x - y||``."""

    name = "reversed_euclidean"

    def pairwise(self, features: torch.Tensor) -> torch.Tensor:
        euclidean = Euclidean().pairwise(features)
        return (1000.0 - euclidean) * (1.0 - torch.eye(len(features), dtype=features.dtype))


def test_perception_coherence_counts_agreeing_triples_by_hand() -> None:
    # Same points as the Spearman example. Per anchor, the 3 pairs of the other points:
    # anchor 0: teacher 1<3, 1<7, 3<7; student 2<3, 2<7, 3<7 -> 3 agree.
    # anchor 1: teacher d10=1 < d12=2 but student d10=2 > d12=1 -> 1 disagrees; (0,3) and (2,3) agree.
    # anchor 2: teacher (3, 2, 4) and student (3, 1, 4) order all 3 pairs alike; anchor 3: (7, 6, 4)
    # and (7, 5, 4) too. 11 of 12.
    assert empirical_perception_coherence(LINE_STUDENT, LINE_TEACHER) == pytest.approx(11 / 12)


def test_perception_coherence_counts_teacher_ties_as_half() -> None:
    # Teacher -1, 0, 1: anchor 0 sees its two others at distance 1 and 1, a tie -> 1/2 whatever the
    # student (-1, 0, 2) says. Anchor -1: 1 < 2 and student 1 < 3 -> 1. Anchor 1: 2 > 1 and 3 > 2 -> 1.
    assert empirical_perception_coherence(line(-1, 0, 2), line(-1, 0, 1)) == pytest.approx((1 + 0.5 + 1) / 3)


def test_perception_coherence_is_zero_for_a_reversed_ordering() -> None:
    # Teacher 0, 1, 3: d01=1 < d02=3, d10=1 < d12=2, d20=3 > d21=2. Student 0, 3, 1 (points 1 and 2
    # moved): d01=3 > d02=1, d10=3 > d12=2, d20=1 < d21=2: every comparison reversed.
    assert empirical_perception_coherence(line(0, 3, 1), line(0, 1, 3)) == 0.0
    # sampled triples (5 < the 6 ordered triples) must still be of distinct points
    assert empirical_perception_coherence(line(0, 3, 1), line(0, 1, 3), num_triples=5) == 0.0
    assert empirical_perception_coherence(line(0, 1, 3), line(0, 1, 3), num_triples=5) == 1.0
    # a plug-in dissimilarity that reverses every order, on many points
    points = np.random.default_rng(0).normal(size=(40, 4))
    assert empirical_perception_coherence(points, points, dissimilarity=ReversedEuclidean(),
                                          teacher_dissimilarity="euclidean", num_triples=5000) == 0.0


def test_perception_coherence_is_one_for_the_teacher_and_half_for_a_collapsed_student() -> None:
    teacher = np.random.default_rng(0).normal(size=(100, 8))
    assert empirical_perception_coherence(teacher, teacher, num_triples=20_000) == 1.0
    assert empirical_perception_coherence(np.zeros((100, 8)), teacher, num_triples=20_000) == 0.5


def test_perception_coherence_invariances() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(50, 6))
    student = teacher @ rng.normal(size=(6, 3))  # a lossy student, coherence strictly between 0.5 and 1
    reference = empirical_perception_coherence(student, teacher, num_triples=30_000)
    assert 0.6 < reference < 0.99
    for moved in (student * 1e3, student * 1e-3, student @ random_rotation(3, 4) + 10.0):
        assert empirical_perception_coherence(moved, teacher, num_triples=30_000) == pytest.approx(reference, abs=1e-12)
    # on unit vectors 1 - cos = ||u - v||^2 / 2: cosine and euclidean order every pair alike
    unit_student = student / np.linalg.norm(student, axis=1, keepdims=True)
    unit_teacher = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    assert empirical_perception_coherence(unit_student, unit_teacher, "cosine", num_triples=30_000) == pytest.approx(
        empirical_perception_coherence(unit_student, unit_teacher, "euclidean", num_triples=30_000), abs=1e-12)


def test_sampled_perception_coherence_estimates_the_exact_value() -> None:
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(30, 4))
    student = teacher + 0.7 * rng.normal(size=(30, 4))
    all_triples = 30 * 29 * 28
    exact = empirical_perception_coherence(student, teacher, num_triples=all_triples)
    sampled = empirical_perception_coherence(student, teacher, num_triples=all_triples - 1)
    assert exact != sampled  # the second one really sampled
    assert abs(sampled - exact) < 4 * 0.5 / math.sqrt(all_triples)  # four standard errors at most


def test_duplicates_zeros_and_huge_values_give_finite_metrics() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(20, 4))
    student = teacher.copy()
    student[1] = student[0]  # a duplicate
    student[2] = 0.0  # a zero vector (cosine treats it as orthogonal to everything)
    student[3] *= 1e30
    for dissimilarity in ("euclidean", "squared_euclidean", "cosine"):
        assert np.isfinite(empirical_perception_coherence(student, teacher, dissimilarity, num_triples=5000))
        assert np.isfinite(dissimilarity_spearman(student, teacher, dissimilarity))
    assert 0.0 <= teacher_neighbour_recall(student, teacher, k=3) <= 1.0


# --------------------------------------------------------------------------- evaluate_embeddings and the table


def _split_with_classes(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=90)
    teacher = rng.normal(size=(90, 8)) + 2.0 * np.eye(8)[labels]
    student = teacher[:, :5] + 0.3 * rng.normal(size=(90, 5))
    return student[:60], student[60:], labels[:60], labels[60:], teacher[:60], teacher[60:]


# The unsuffixed names of before, then each metric per geometry (see hf_pcoh.evaluation.report).
OLD_KEYS = [
    "knn_accuracy@1", "knn_accuracy@10", "linear_probe_accuracy", "map_at_r", "recall_at_1", "recall_at_10",
    "teacher_neighbour_recall@10", "dissimilarity_spearman", "perception_coherence",
]
GEOMETRY_METRICS = [
    "knn_accuracy@1", "knn_accuracy@10", "map_at_r", "recall_at_1", "recall_at_10", "teacher_neighbour_recall@10",
    "dissimilarity_spearman", "perception_coherence",
]


def test_evaluate_embeddings_computes_what_applies_with_the_functions_values() -> None:
    student_train, student_test, train_labels, test_labels, teacher_train, teacher_test = _split_with_classes()
    everything = evaluate_embeddings(student_train, student_test, train_labels, test_labels, teacher_train, teacher_test)
    assert list(everything) == OLD_KEYS + [f"{name}/{geometry}" for geometry in GEOMETRIES for name in GEOMETRY_METRICS]
    for geometry in ("cosine", "euclidean"):
        assert everything[f"knn_accuracy@10/{geometry}"] == knn_accuracy(
            student_train, train_labels, student_test, test_labels, 10, geometry)
        assert everything[f"map_at_r/{geometry}"] == retrieval_metrics(student_test, test_labels, metric=geometry)["map_at_r"]
        assert everything[f"teacher_neighbour_recall@10/{geometry}"] == teacher_neighbour_recall(
            student_test, teacher_test, 10, geometry)
        assert everything[f"dissimilarity_spearman/{geometry}"] == dissimilarity_spearman(student_test, teacher_test, geometry)
        assert everything[f"perception_coherence/{geometry}"] == empirical_perception_coherence(
            student_test, teacher_test, geometry)
    # the old keys are aliases of the geometry they were measured in: cosine neighbours, euclidean agreement
    for name in ("knn_accuracy@1", "knn_accuracy@10", "map_at_r", "recall_at_1", "recall_at_10", "teacher_neighbour_recall@10"):
        assert everything[name] == everything[f"{name}/cosine"], name
    for name in ("dissimilarity_spearman", "perception_coherence"):
        assert everything[name] == everything[f"{name}/euclidean"], name
    assert everything["knn_accuracy@10"] == knn_accuracy(student_train, train_labels, student_test, test_labels, 10)
    assert everything["perception_coherence"] == empirical_perception_coherence(student_test, teacher_test)

    label_free = evaluate_embeddings(student_train, student_test, teacher_test=teacher_test, geometries=("euclidean",))
    assert list(label_free) == [
        "dissimilarity_spearman", "perception_coherence",  # no cosine measured: no neighbour aliases
        "teacher_neighbour_recall@10/euclidean", "dissimilarity_spearman/euclidean", "perception_coherence/euclidean",
    ]
    class_only = evaluate_embeddings(student_train, student_test, train_labels, test_labels, ks=(5,), geometries="cosine")
    assert list(class_only) == [
        "knn_accuracy@5", "linear_probe_accuracy", "map_at_r", "recall_at_5",
        "knn_accuracy@5/cosine", "map_at_r/cosine", "recall_at_5/cosine",
    ]


def test_evaluate_embeddings_gives_json_with_both_geometries_of_every_geometric_metric() -> None:
    metrics = evaluate_embeddings(*_split_with_classes())
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    per_geometry = {geometry: {key.split("/")[0] for key in metrics if key.endswith(f"/{geometry}")}
                    for geometry in GEOMETRIES}
    assert per_geometry["cosine"] == per_geometry["euclidean"] == set(GEOMETRY_METRICS)
    assert all(isinstance(value, float) for value in metrics.values())
    # for a table: every metric once, per geometry, the probe (no geometry) unsuffixed
    assert list(without_aliases(metrics)) == ["linear_probe_accuracy"] + [
        f"{name}/{geometry}" for geometry in GEOMETRIES for name in GEOMETRY_METRICS]


def _by_geometry(metrics: dict[str, float], geometry: str) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key.endswith(f"/{geometry}")}


def _student_metrics_after(transform) -> dict[str, float]:
    """Every metric of the student, with ``transform`` applied to both of its splits (not the teacher)."""
    student_train, student_test, train_labels, test_labels, teacher_train, teacher_test = _split_with_classes()
    return EmbeddingEvaluation(ks=(1, 5), num_triples=20_000).evaluate(
        transform(student_train), transform(student_test), train_labels, test_labels, teacher_train, teacher_test)


def test_cosine_metrics_ignore_rescaling_each_row_and_euclidean_ones_do_not() -> None:
    factors = np.exp(np.random.default_rng(7).uniform(-3, 3, size=(60, 1)))  # one positive factor per row
    plain = _student_metrics_after(lambda points: points)
    rescaled = _student_metrics_after(lambda points: points * factors[: len(points)])
    assert _by_geometry(rescaled, "cosine") == pytest.approx(_by_geometry(plain, "cosine"), abs=1e-12)
    euclidean_changes = {key for key, value in _by_geometry(rescaled, "euclidean").items() if value != plain[key]}
    assert {"teacher_neighbour_recall@5/euclidean", "perception_coherence/euclidean",
            "dissimilarity_spearman/euclidean"} <= euclidean_changes


def test_euclidean_metrics_ignore_a_common_translation_and_cosine_ones_do_not() -> None:
    shift = np.random.default_rng(8).normal(size=5) * 4.0
    plain = _student_metrics_after(lambda points: points)
    translated = _student_metrics_after(lambda points: points + shift)
    assert _by_geometry(translated, "euclidean") == pytest.approx(_by_geometry(plain, "euclidean"), abs=1e-9)
    cosine_changes = {key for key, value in _by_geometry(translated, "cosine").items() if value != plain[key]}
    assert {"teacher_neighbour_recall@5/cosine", "perception_coherence/cosine",
            "dissimilarity_spearman/cosine"} <= cosine_changes


def test_both_geometries_ignore_a_rotation() -> None:
    rotation = random_rotation(5, 9)
    plain = _student_metrics_after(lambda points: points)
    rotated = _student_metrics_after(lambda points: points @ rotation)
    for geometry in GEOMETRIES:
        assert _by_geometry(rotated, geometry) == pytest.approx(_by_geometry(plain, geometry), abs=1e-9)


def test_evaluate_embeddings_skips_inapplicable_class_metrics_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    student_train, student_test, _, _, _, _ = _split_with_classes()
    one_class, all_distinct = np.zeros(60), np.arange(30)  # no probe to fit, nothing to retrieve
    with caplog.at_level("WARNING", logger="hf_pcoh.evaluation"):
        metrics = evaluate_embeddings(student_train, student_test, one_class, all_distinct)
    assert set(metrics) == {"knn_accuracy@1", "knn_accuracy@10", "knn_accuracy@1/cosine", "knn_accuracy@10/cosine",
                            "knn_accuracy@1/euclidean", "knn_accuracy@10/euclidean"}
    assert "linear probe skipped" in caplog.text and "retrieval metrics skipped" in caplog.text


def test_evaluate_embeddings_of_the_teacher_against_itself_agrees_perfectly() -> None:
    _, _, train_labels, test_labels, teacher_train, teacher_test = _split_with_classes()
    metrics = EmbeddingEvaluation(ks=(1, 5), num_triples=20_000).evaluate(
        teacher_train, teacher_test, train_labels, test_labels, teacher_train, teacher_test)
    for suffix in ("", "/cosine", "/euclidean"):
        assert metrics[f"teacher_neighbour_recall@5{suffix}"] == 1.0
        assert metrics[f"dissimilarity_spearman{suffix}"] == pytest.approx(1.0)
        assert metrics[f"perception_coherence{suffix}"] == 1.0
        assert metrics[f"knn_accuracy@5{suffix}"] > 0.6  # separated classes: far above chance (1/3)


def test_format_comparison_table_is_markdown_with_the_union_of_metrics() -> None:
    table = format_comparison_table({
        "teacher": {"knn_accuracy@10": 0.53, "parameters": 22_713_216},
        "student | pc": {"knn_accuracy@10": 0.5, "perception_coherence": 0.87654, "dissimilarity_spearman": float("nan")},
    })
    assert table == (
        "| model | knn_accuracy@10 | parameters | perception_coherence | dissimilarity_spearman |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| teacher | 0.5300 | 22,713,216 | - | - |\n"
        "| student \\| pc | 0.5000 | - | 0.8765 | nan |"
    )


# --------------------------------------------------------------------------- validation at the boundary


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: knn_accuracy(KNN_TRAIN, KNN_TRAIN_LABELS, KNN_TEST, KNN_TEST_LABELS, k=5),
         "k=5 but train_embeddings has only this many points (4): use an integer 1 <= k <= 4"),
        (lambda: knn_accuracy(KNN_TRAIN, KNN_TRAIN_LABELS, KNN_TEST[:, :1], KNN_TEST_LABELS),
         "test_embeddings has width 1 but train_embeddings has width 2"),
        (lambda: knn_accuracy(KNN_TRAIN, [0, 1], KNN_TEST, KNN_TEST_LABELS),
         "train_labels must hold one label per row of train_embeddings (4), got shape (2,)"),
        (lambda: knn_accuracy(KNN_TRAIN, KNN_TRAIN_LABELS, KNN_TEST, KNN_TEST_LABELS, k=1, metric="cosin"),
         "unknown metric 'cosin'. Did you mean 'cosine'?"),
        (lambda: linear_probe_accuracy(KNN_TRAIN, [1, 1, 1, 1], KNN_TEST, KNN_TEST_LABELS),
         "train_labels holds 1 class ([1]); a linear probe needs at least 2 classes"),
        (lambda: retrieval_metrics(RETRIEVAL_POINTS, RETRIEVAL_LABELS, ks=(1, 6)),
         "k=6 but embeddings has this many other points per query (5)"),
        (lambda: retrieval_metrics(RETRIEVAL_POINTS, list("abcdef"), ks=(1,)),
         "every label in labels occurs once"),
        (lambda: teacher_neighbour_recall(NEIGHBOUR_STUDENT, NEIGHBOUR_TEACHER, k=5),
         "k=5 but each point has only this many others (4)"),
        (lambda: teacher_neighbour_recall(NEIGHBOUR_STUDENT[:4], NEIGHBOUR_TEACHER),
         "student_embeddings has 4 rows but teacher_embeddings has 5"),
        (lambda: dissimilarity_spearman(LINE_STUDENT, LINE_TEACHER, dissimilarity="manhattan"),
         "unknown dissimilarity 'manhattan'"),
        (lambda: empirical_perception_coherence(LINE_STUDENT, LINE_TEACHER, num_triples=0),
         "num_triples=0; use an integer >= 1"),
        (lambda: empirical_perception_coherence(np.array([0.0, 1.0, 2.0]), LINE_TEACHER[:3]),
         "student_embeddings must have shape [N, d] with N, d >= 1, got shape (3,)"),
        (lambda: empirical_perception_coherence(line(0, np.nan, 1), line(0, 1, 2)),
         "student_embeddings contains 1 non-finite values (NaN or inf)"),
        (lambda: evaluate_embeddings(KNN_TRAIN, KNN_TEST, teacher_test=KNN_TEST[:3]),
         "teacher_test has 3 rows but student_test has 4"),
        (lambda: metric_path("perception_coherense"), "unknown metric 'perception_coherense'. Did you mean 'perception_coherence'?"),
        (lambda: evaluate_embeddings(KNN_TRAIN, KNN_TEST, geometries=("cosine", "manhattan")),
         "geometries=('cosine', 'manhattan') holds 'manhattan'; each must be one of ('cosine', 'euclidean')"),
        (lambda: EmbeddingEvaluation(geometries=()), "geometries is empty; give at least one of ('cosine', 'euclidean')"),
    ],
)
def test_bad_inputs_fail_naming_the_argument_and_what_works(call, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# --------------------------------------------------------------------------- local evaluate modules


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode, and any connection attempt fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("name", "function", "options"),
    [
        ("teacher_neighbour_recall", teacher_neighbour_recall, {"k": 5, "metric": "euclidean"}),
        ("dissimilarity_spearman", dissimilarity_spearman, {"dissimilarity": "cosine", "max_points": 30}),
        ("perception_coherence", empirical_perception_coherence, {"num_triples": 10_000, "seed": 3}),
    ],
)
def test_local_evaluate_metric_gives_the_functions_value(no_network, tmp_path, name, function, options) -> None:
    import evaluate

    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(40, 6)).astype(np.float32)
    student = (teacher[:, :4] + 0.5 * rng.normal(size=(40, 4))).astype(np.float32)
    module = evaluate.load(metric_path(name), cache_dir=str(tmp_path))
    assert name in METRICS
    result = module.compute(predictions=student.tolist(), references=teacher, **options)
    assert result == {name: function(student, teacher, **options)}
    assert 0.0 < result[name] < 1.0


def test_embed_batches_texts_longest_first_and_returns_them_in_the_given_order(minilm_path: str) -> None:
    """Texts are embedded longest first (each batch padded to texts of about its own length), and the rows come
    back in the order given: the same as embedding each text alone, for either pooling."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from hf_pcoh.embedding import embed, embed_every_layer, longest_first
    from hf_pcoh.features import FeatureExtractor
    from tiny_models import TINY_BERT

    model = AutoModel.from_config(AutoConfig.for_model(**TINY_BERT)).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = ["a", "a much longer text than the others, with many words in it", "mid length text", "b c",
             "another fairly long text to embed", "z"]
    ordered, order = longest_first(texts, "text")
    assert [len(text) for text in ordered] == sorted((len(text) for text in texts), reverse=True)
    assert [texts[index] for index in order] == ordered
    for pooling in ("mean", "cls"):
        extractor = FeatureExtractor("last", pooling)
        batched = embed(model, tokenizer, texts, extractor, "text", batch_size=4, max_length=32).values
        alone = np.concatenate([embed(model, tokenizer, [text], extractor, "text", max_length=32).values
                                for text in texts])
        np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    layers = embed_every_layer(model, tokenizer, texts, "mean", "text", batch_size=4, max_length=32)
    mean_alone = np.concatenate([embed(model, tokenizer, [text], FeatureExtractor("last", "mean"), "text",
                                       max_length=32).values for text in texts])
    np.testing.assert_allclose(layers[TINY_BERT["num_hidden_layers"]], mean_alone, rtol=0, atol=1e-5)
