"""Metrics read off nearest neighbours: kNN accuracy, retrieval (mAP@R, recall@k), teacher-neighbour recall.

Each takes ``metric``, the geometry the neighbours are found in (``"cosine"``, ``"euclidean"`` or
``"squared_euclidean"``, see :data:`~hf_pcoh.evaluation.neighbour_search.NEIGHBOUR_METRICS`). Cosine
neighbours do not change when a row is rescaled by a positive factor; euclidean ones do not change
under a common translation; both are unchanged by a rotation. Ties in distance go to the earlier point.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .neighbour_search import nearest_neighbours, sklearn_metric, sorted_neighbour_chunks
from .validation import (
    ArrayLike,
    LabelsLike,
    as_labels,
    as_matrix,
    check_k,
    check_ks,
    check_positive_int,
    check_same_rows,
    encode_labels,
    labelled_splits,
)

logger = logging.getLogger(__name__)


def knn_accuracy(
    train_embeddings: ArrayLike,
    train_labels: LabelsLike,
    test_embeddings: ArrayLike,
    test_labels: LabelsLike,
    k: int = 10,
    metric: str = "cosine",
) -> float:
    """Accuracy of the majority vote of the k nearest training points.

    ``acc = 1/M * sum_q [ argmax_c |{j in N_k(q) : y_j = c}| = y_q ]`` with ``N_k(q)`` the k training
    points nearest to test point q under ``metric``. A tie between classes goes to the class of the
    nearest neighbour among the tied classes (scikit-learn's ``KNeighborsClassifier`` would pick the
    smallest label instead); ties in distance go to the earlier training point. The unweighted k-NN
    evaluation protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018.

    Args:
        train_embeddings: ``[N, d]`` labelled reference points.
        train_labels: ``[N]`` their labels (any hashable, comparable type).
        test_embeddings: ``[M, d]`` points to classify.
        test_labels: ``[M]`` their true labels.
        k: neighbours that vote, ``1 <= k <= N``.
        metric: ``"cosine"``, ``"euclidean"`` or ``"squared_euclidean"``.

    Example:
        >>> knn_accuracy([[0.0], [1.0], [5.0]], [0, 0, 1], [[0.2], [4.0]], [0, 1], k=1, metric="euclidean")
        1.0
    """
    train, train_y, test, test_y = labelled_splits(train_embeddings, train_labels, test_embeddings, test_labels)
    check_k("k", k, len(train), "train_embeddings has only this many points")
    sklearn_metric(metric)
    train_codes, test_codes = encode_labels(train_y, test_y)
    neighbours = nearest_neighbours(test, train, k, metric, exclude_self=False)  # [M, k]
    neighbour_codes = train_codes[neighbours]  # [M, k]
    # votes[q, i] = how many of q's k neighbours share the class of its i-th nearest neighbour.
    votes = (neighbour_codes[:, :, None] == neighbour_codes[:, None, :]).sum(axis=2)  # [M, k]
    # argmax returns the first (= nearest) position holding the top vote: the nearest tie-breaker.
    predicted = neighbour_codes[np.arange(len(test)), votes.argmax(axis=1)]
    return float(np.mean(predicted == test_codes))


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: LabelsLike,
    ks: Sequence[int] = (1, 10),
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Leave-one-out retrieval by label: mAP@R and recall@k, each query against all other points.

    For query q let ``R_q`` be the number of *other* points with q's label and ``rel_q(i) = 1`` if q's
    i-th nearest other point shares its label. Following Musgrave, Belongie & Lim, "A Metric Learning
    Reality Check", ECCV 2020:

    - ``mAP@R = mean_q 1/R_q * sum_{i=1}^{R_q} rel_q(i) * P_q(i)``, ``P_q(i) = 1/i * sum_{j<=i} rel_q(j)``;
    - ``recall_at_k = mean_q [ sum_{i<=k} rel_q(i) >= 1 ]``, the Recall@K of the metric-learning literature.

    Queries whose label occurs only once (``R_q = 0``) cannot retrieve anything and are left out of
    both means (logged), as the authors' library pytorch-metric-learning does. Ties in distance go to the
    earlier point. Distances are computed for ``chunk_size`` queries at a time (by default about
    ``NEIGHBOUR_CHUNK_ENTRIES / N`` of them), so N = 20,000 never builds an ``N x N`` matrix.

    Args:
        embeddings: ``[N, d]`` points, each used as a query against the N - 1 others.
        labels: ``[N]`` their labels.
        ks: the k of each ``recall_at_{k}``, ``1 <= k <= N - 1``.
        metric: ``"cosine"``, ``"euclidean"`` or ``"squared_euclidean"``.
        chunk_size: queries per chunk (memory ``chunk_size x N`` floats); ``None`` picks it.

    Returns:
        ``{"map_at_r": ..., "recall_at_1": ..., "recall_at_10": ...}``.

    Example:
        >>> retrieval_metrics([[0.0], [1.0], [5.0], [6.0]], ["a", "a", "b", "b"], ks=(1,), metric="euclidean")
        {'map_at_r': 1.0, 'recall_at_1': 1.0}
    """
    points = as_matrix("embeddings", embeddings)
    point_labels = as_labels("labels", labels, len(points), "embeddings")
    ks = check_ks(ks, len(points) - 1, "embeddings has this many other points per query")
    sklearn_metric(metric)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    (codes,) = encode_labels(point_labels)
    relevant_counts = np.bincount(codes)[codes] - 1  # R_q, [N]
    answerable = relevant_counts > 0
    if not answerable.any():
        raise ValueError("every label in labels occurs once: retrieval needs at least two points of some class")
    if not answerable.all():
        logger.info("retrieval_metrics: %d of %d queries have a label seen nowhere else and are left out",
                    int((~answerable).sum()), len(points))
    average_precision, found_within = _retrieval_per_query(points, codes, relevant_counts, ks, metric, chunk_size)
    results = {"map_at_r": float(average_precision[answerable].mean())}
    for k in ks:
        results[f"recall_at_{k}"] = float(found_within[k][answerable].mean())
    return results


def _retrieval_per_query(
    points: np.ndarray,
    codes: np.ndarray,
    relevant_counts: np.ndarray,
    ks: tuple[int, ...],
    metric: str,
    chunk_size: int | None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Each query's average precision within its first ``R_q`` neighbours (``[N]``), and for each k
    whether one of its first k neighbours shares its label (``{k: [N] bool}``)."""
    wanted = np.maximum(relevant_counts, max(ks))
    average_precision = np.zeros(len(points))
    found_within = {k: np.zeros(len(points), dtype=bool) for k in ks}
    for rows, neighbours in sorted_neighbour_chunks(points, points, wanted, metric, True, chunk_size):
        hits = codes[neighbours] == codes[rows, None]  # [chunk, L]
        for k in ks:
            found_within[k][rows] = hits[:, :k].any(axis=1)
        ranks = np.arange(1, hits.shape[1] + 1)
        precision = np.cumsum(hits, axis=1) / ranks  # P_q(i), [chunk, L]
        within_r = ranks[None, :] <= relevant_counts[rows, None]
        summed = (precision * hits * within_r).sum(axis=1)
        average_precision[rows] = summed / np.maximum(relevant_counts[rows], 1)
    return average_precision, found_within


def teacher_neighbour_recall(
    student_embeddings: ArrayLike,
    teacher_embeddings: ArrayLike,
    k: int = 10,
    metric: str = "cosine",
) -> float:
    """Fraction of each point's k teacher neighbours that are also among its k student neighbours.

    ``recall@k = 1/(N k) * sum_i |kNN_S(i) ∩ kNN_T(i)|``, the point itself excluded from both sets; the
    neighbourhood-preservation criterion ``Q_NX(k)`` of Lee & Verleysen, "Quality assessment of
    dimensionality reduction: Rank-based criteria", Neurocomputing 2009. 1 = every neighbourhood kept,
    ``k / (N - 1)`` = chance. Ties in distance go to the earlier point, on each side.

    Args:
        student_embeddings: ``[N, d_s]``.
        teacher_embeddings: ``[N, d_t]``, the same N points in the same order.
        k: neighbours per point, ``1 <= k <= N - 1``.
        metric: ``"cosine"``, ``"euclidean"`` or ``"squared_euclidean"``, used on both sides.

    Example:
        >>> teacher_neighbour_recall([[0.0], [1.0], [3.0]], [[0.0], [2.0], [3.0]], k=1, metric="euclidean")
        0.6666666666666666
    """
    student = as_matrix("student_embeddings", student_embeddings)
    teacher = as_matrix("teacher_embeddings", teacher_embeddings)
    check_same_rows("student_embeddings", student, "teacher_embeddings", teacher)
    check_k("k", k, len(student) - 1, "each point has only this many others")
    sklearn_metric(metric)
    student_neighbours = nearest_neighbours(student, student, k, metric, exclude_self=True)  # [N, k]
    teacher_neighbours = nearest_neighbours(teacher, teacher, k, metric, exclude_self=True)  # [N, k]
    shared = (student_neighbours[:, :, None] == teacher_neighbours[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / k)
