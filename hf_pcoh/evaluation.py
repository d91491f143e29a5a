"""Measure embeddings of a held-out split: class-aware quality and label-free agreement with the teacher.

All functions take embeddings as numpy arrays or torch tensors of shape ``[N, d]`` (any float dtype;
they are measured in float64) and return plain floats.

Class-aware (need labels):

- :func:`knn_accuracy` -- majority vote of the k nearest training points (Wu et al., 2018).
- :func:`linear_probe_accuracy` -- logistic regression on standardised features (Alain & Bengio, 2016).
- :func:`retrieval_metrics` -- leave-one-out mAP@R and recall@k (Musgrave, Belongie & Lim, 2020).

Label-free agreement of a student with its teacher, on the same points:

- :func:`teacher_neighbour_recall` -- overlap of the k-NN sets, Q_NX(k) (Lee & Verleysen, 2009).
- :func:`dissimilarity_spearman` -- Spearman correlation of the two dissimilarity matrices
  (representational similarity analysis, Kriegeskorte et al., 2008).
- :func:`empirical_perception_coherence` -- the probability that the student orders a random triple
  as the teacher does (Nguyen et al., 2026).

:func:`evaluate_embeddings` computes every metric that applies and returns flat keys
(``knn_accuracy@10``, ``map_at_r``, ``perception_coherence``, ...); :func:`format_comparison_table`
prints several models side by side. Neighbour searches use scikit-learn's ``pairwise_distances``
(metric names ``cosine``, ``euclidean``, ``squared_euclidean``), chunked over queries so that no
``N x N`` matrix is built; the dissimilarity-based metrics take the library's pluggable
:class:`~hf_pcoh.losses.dissimilarity.Dissimilarity` objects, one per side.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import pairwise_distances
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .errors import unknown_name_message
from .losses.dissimilarity import Dissimilarity, get_dissimilarity

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]]
LabelsLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]

# Neighbour-search metric -> the scikit-learn name computing it. Squared euclidean gives the same
# neighbours as euclidean; it is accepted so every name of DISSIMILARITIES works here too.
NEIGHBOUR_METRICS: dict[str, str] = {"cosine": "cosine", "euclidean": "euclidean", "squared_euclidean": "sqeuclidean"}
# Upper bound on the entries of one [queries, references] distance chunk (64 MiB in float64).
NEIGHBOUR_CHUNK_ENTRIES = 2**23
# Two dissimilarities closer than this (relative to the larger) are a tie: it absorbs the round-off of
# computing mathematically equal distances (e.g. in a symmetric configuration) in float64.
TIE_RELATIVE_TOLERANCE = 1e-9
# Triples of perception coherence scored at once (a few arrays of this length in memory).
TRIPLES_PER_CHUNK = 2**20

CITATIONS: dict[str, str] = {
    "knn_accuracy": """@inproceedings{wu2018unsupervised,
  title     = {Unsupervised Feature Learning via Non-Parametric Instance Discrimination},
  author    = {Wu, Zhirong and Xiong, Yuanjun and Yu, Stella X. and Lin, Dahua},
  booktitle = {CVPR},
  year      = {2018}
}""",
    "linear_probe_accuracy": """@article{alain2016understanding,
  title   = {Understanding intermediate layers using linear classifier probes},
  author  = {Alain, Guillaume and Bengio, Yoshua},
  journal = {arXiv preprint arXiv:1610.01644},
  year    = {2016}
}""",
    "retrieval": """@inproceedings{musgrave2020metric,
  title     = {A Metric Learning Reality Check},
  author    = {Musgrave, Kevin and Belongie, Serge and Lim, Ser-Nam},
  booktitle = {ECCV},
  year      = {2020}
}""",
    "teacher_neighbour_recall": """@article{lee2009quality,
  title   = {Quality assessment of dimensionality reduction: Rank-based criteria},
  author  = {Lee, John A. and Verleysen, Michel},
  journal = {Neurocomputing},
  volume  = {72},
  number  = {7--9},
  pages   = {1431--1443},
  year    = {2009}
}""",
    "dissimilarity_spearman": """@article{kriegeskorte2008representational,
  title   = {Representational similarity analysis -- connecting the branches of systems neuroscience},
  author  = {Kriegeskorte, Nikolaus and Mur, Marieke and Bandettini, Peter},
  journal = {Frontiers in Systems Neuroscience},
  volume  = {2},
  pages   = {4},
  year    = {2008}
}""",
    "perception_coherence": """@article{nguyen2026perception,
  title   = {Perception coherence},
  author  = {Nguyen, Thien and Gamboa, Fabrice and Zhang, Jiaxin and Chhaibi, Reda and Gratton, Serge and Giaccone, Thierry},
  journal = {Transactions on Machine Learning Research},
  note    = {arXiv:2505.06595},
  year    = {2026}
}""",
}


# --------------------------------------------------------------------------- input validation


def _as_matrix(name: str, value: ArrayLike) -> np.ndarray:
    """``value`` as a finite float64 ``[N, d]`` array, or an error naming the argument."""
    if isinstance(value, torch.Tensor):
        array = value.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be a [N, d] array of numbers with rows of equal length ({error})") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, d] with N, d >= 1, got shape {tuple(array.shape)}")
    non_finite = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if non_finite:
        raise ValueError(f"{name} contains {non_finite} non-finite values (NaN or inf); embed again without overflow")
    return array


def _as_labels(name: str, value: LabelsLike, num_rows: int, rows_name: str) -> np.ndarray:
    """``value`` as a 1-D array with one label per row of ``rows_name``."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1 or len(array) != num_rows:
        raise ValueError(
            f"{name} must hold one label per row of {rows_name} ({num_rows}), got shape {tuple(array.shape)}"
        )
    return array


def _same_rows(first_name: str, first: np.ndarray, second_name: str, second: np.ndarray) -> None:
    if len(first) != len(second):
        raise ValueError(
            f"{first_name} has {len(first)} rows but {second_name} has {len(second)}: "
            "both must embed the same points in the same order"
        )


def _same_width(first_name: str, first: np.ndarray, second_name: str, second: np.ndarray) -> None:
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{first_name} has width {first.shape[1]} but {second_name} has width {second.shape[1]}: "
            "both must come from the same model"
        )


def _check_k(name: str, k: int, limit: int, what: str) -> None:
    """``1 <= k <= limit``, else an error saying what ``limit`` counts."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= limit:
        raise ValueError(f"{name}={k!r} but {what} ({limit}): use an integer 1 <= {name} <= {limit}")


def _check_positive_int(name: str, value: int, minimum: int = 1, hint: str = "") -> None:
    """An integer ``>= minimum``, else an error naming the argument."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}; use an integer >= {minimum}{hint}")


def _neighbour_metric(metric: str) -> str:
    try:
        return NEIGHBOUR_METRICS[metric]
    except (KeyError, TypeError):
        raise ValueError(unknown_name_message("metric", str(metric), list(NEIGHBOUR_METRICS))) from None


def _encode_labels(*label_arrays: np.ndarray) -> list[np.ndarray]:
    """Integer codes of the labels, shared across the arrays (equal labels -> equal codes)."""
    _, codes = np.unique(np.concatenate(label_arrays), return_inverse=True)
    boundaries = np.cumsum([len(labels) for labels in label_arrays])[:-1]
    return np.split(codes.reshape(-1), boundaries)


# --------------------------------------------------------------------------- neighbour search


def _sorted_neighbour_chunks(
    queries: np.ndarray,
    references: np.ndarray,
    num_neighbours: np.ndarray,
    metric: str,
    exclude_self: bool,
    chunk_size: int | None = None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, neighbours)``: for each chunk of queries, the reference indices sorted by distance.

    ``neighbours`` is ``[chunk, L]`` with ``L`` the largest ``num_neighbours`` of the chunk's queries.
    Ties in distance go to the lower reference index. With ``exclude_self`` the queries are the
    references and a query is never its own neighbour (duplicates of it still are).
    """
    sklearn_metric = _neighbour_metric(metric)
    num_references = len(references)
    if chunk_size is None:
        chunk_size = max(1, NEIGHBOUR_CHUNK_ENTRIES // num_references)
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, min(start + chunk_size, len(queries)))
        distances = pairwise_distances(queries[rows], references, metric=sklearn_metric)  # [chunk, N_ref]
        chunk_rows = np.arange(distances.shape[0])
        if exclude_self:
            distances[chunk_rows, start + chunk_rows] = np.inf
        width = int(num_neighbours[rows].max())
        if width < num_references:
            candidates = np.argpartition(distances, width - 1, axis=1)[:, :width]
            # argpartition picks arbitrarily among points tied at the boundary distance; in the
            # (rare) rows where it left some out, a stable sort keeps the earlier points instead.
            boundary = np.take_along_axis(distances, candidates, axis=1).max(axis=1, keepdims=True)
            tied_everywhere = (distances == boundary).sum(axis=1)
            tied_taken = (np.take_along_axis(distances, candidates, axis=1) == boundary).sum(axis=1)
            redo = np.flatnonzero(tied_everywhere > tied_taken)
            if redo.size:
                candidates[redo] = np.argsort(distances[redo], axis=1, kind="stable")[:, :width]
        else:
            candidates = np.broadcast_to(np.arange(num_references), distances.shape).copy()
        candidate_distances = np.take_along_axis(distances, candidates, axis=1)
        # lexsort: the last key is the primary one -> by distance, then by index.
        order = np.lexsort((candidates, candidate_distances), axis=-1)
        yield rows, np.take_along_axis(candidates, order, axis=1)


def _nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, k: int, metric: str, exclude_self: bool
) -> np.ndarray:
    """``[N_queries, k]`` indices of the k nearest references of each query, nearest first."""
    wanted = np.full(len(queries), k)
    chunks = [neighbours for _, neighbours in _sorted_neighbour_chunks(queries, references, wanted, metric, exclude_self)]
    return np.concatenate(chunks, axis=0)


# --------------------------------------------------------------------------- class-aware metrics


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
    train = _as_matrix("train_embeddings", train_embeddings)
    test = _as_matrix("test_embeddings", test_embeddings)
    _same_width("test_embeddings", test, "train_embeddings", train)
    train_y = _as_labels("train_labels", train_labels, len(train), "train_embeddings")
    test_y = _as_labels("test_labels", test_labels, len(test), "test_embeddings")
    _check_k("k", k, len(train), "train_embeddings has only this many points")
    _neighbour_metric(metric)
    train_codes, test_codes = _encode_labels(train_y, test_y)
    neighbours = _nearest_neighbours(test, train, k, metric, exclude_self=False)  # [M, k]
    neighbour_codes = train_codes[neighbours]  # [M, k]
    # votes[q, i] = how many of q's k neighbours share the class of its i-th nearest neighbour.
    votes = (neighbour_codes[:, :, None] == neighbour_codes[:, None, :]).sum(axis=2)  # [M, k]
    # argmax returns the first (= nearest) position holding the top vote: the nearest tie-breaker.
    predicted = neighbour_codes[np.arange(len(test)), votes.argmax(axis=1)]
    return float(np.mean(predicted == test_codes))


def linear_probe_accuracy(
    train_embeddings: ArrayLike,
    train_labels: LabelsLike,
    test_embeddings: ArrayLike,
    test_labels: LabelsLike,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe fitted on the frozen training embeddings.

    Features are standardised with the training mean and standard deviation, then a multinomial
    logistic regression ``p(y = c | x) = softmax(W z + b)_c``, ``z = (x - mu) / sigma``, is fitted with
    L2 penalty (scikit-learn defaults, C = 1, L-BFGS); the score is the fraction of test points whose
    arg-max class is right. Linear probes as in Alain & Bengio, "Understanding intermediate layers
    using linear classifier probes", arXiv:1610.01644, 2016. Invariant to affine rescaling of each
    feature. A probe that does not converge in ``max_iter`` steps is logged as a warning.

    Args:
        train_embeddings: ``[N, d]`` points the probe is fitted on; ``train_labels`` must hold >= 2 classes.
        train_labels: ``[N]`` their labels.
        test_embeddings: ``[M, d]`` points it is scored on.
        test_labels: ``[M]`` their labels.
        max_iter: L-BFGS iterations.
        seed: ``random_state`` of the solver.

    Example:
        >>> linear_probe_accuracy([[-2.0], [-1.0], [1.0], [2.0]], [0, 0, 1, 1], [[-3.0], [3.0]], [0, 1])
        1.0
    """
    train = _as_matrix("train_embeddings", train_embeddings)
    test = _as_matrix("test_embeddings", test_embeddings)
    _same_width("test_embeddings", test, "train_embeddings", train)
    train_y = _as_labels("train_labels", train_labels, len(train), "train_embeddings")
    test_y = _as_labels("test_labels", test_labels, len(test), "test_embeddings")
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(
            f"train_labels holds {len(classes)} class ({classes.tolist()}); a linear probe needs at least 2 classes "
            "in the training split"
        )
    _check_positive_int("max_iter", max_iter, 1, ", e.g. 1000")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(train, train_y)
    if any(issubclass(warning.category, ConvergenceWarning) for warning in caught):
        logger.warning("the linear probe did not converge in max_iter=%d iterations; its accuracy may be low. "
                       "Pass a larger max_iter.", max_iter)
    return float(np.mean(probe.predict(test) == test_y))


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
    points = _as_matrix("embeddings", embeddings)
    point_labels = _as_labels("labels", labels, len(points), "embeddings")
    ks = _check_ks(ks, len(points) - 1, "embeddings has this many other points per query")
    _neighbour_metric(metric)
    if chunk_size is not None:
        _check_positive_int("chunk_size", chunk_size)
    (codes,) = _encode_labels(point_labels)
    relevant_counts = np.bincount(codes)[codes] - 1  # R_q, [N]
    answerable = relevant_counts > 0
    if not answerable.any():
        raise ValueError("every label in labels occurs once: retrieval needs at least two points of some class")
    if not answerable.all():
        logger.info("retrieval_metrics: %d of %d queries have a label seen nowhere else and are left out",
                    int((~answerable).sum()), len(points))
    wanted = np.maximum(relevant_counts, max(ks))
    average_precision = np.zeros(len(points))
    found_within = {k: np.zeros(len(points), dtype=bool) for k in ks}
    for rows, neighbours in _sorted_neighbour_chunks(points, points, wanted, metric, True, chunk_size):
        hits = codes[neighbours] == codes[rows, None]  # [chunk, L]
        for k in ks:
            found_within[k][rows] = hits[:, :k].any(axis=1)
        ranks = np.arange(1, hits.shape[1] + 1)
        precision = np.cumsum(hits, axis=1) / ranks  # P_q(i), [chunk, L]
        within_r = ranks[None, :] <= relevant_counts[rows, None]
        summed = (precision * hits * within_r).sum(axis=1)
        average_precision[rows] = summed / np.maximum(relevant_counts[rows], 1)
    results = {"map_at_r": float(average_precision[answerable].mean())}
    for k in ks:
        results[f"recall_at_{k}"] = float(found_within[k][answerable].mean())
    return results


def _check_ks(ks: Sequence[int] | int, limit: int | None = None, what: str = "") -> tuple[int, ...]:
    """``ks`` as a tuple of distinct positive ints, each ``<= limit`` when a limit is given."""
    if isinstance(ks, (int, np.integer)):
        ks = (int(ks),)
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty; give at least one k, e.g. ks=(1, 10)")
    for k in ks:
        if limit is None:
            _check_positive_int("k in ks", k, 1, ", e.g. ks=(1, 10)")
        else:
            _check_k("k", k, limit, what)
    return tuple(dict.fromkeys(int(k) for k in ks))


# --------------------------------------------------------------------------- agreement with the teacher


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
    student = _as_matrix("student_embeddings", student_embeddings)
    teacher = _as_matrix("teacher_embeddings", teacher_embeddings)
    _same_rows("student_embeddings", student, "teacher_embeddings", teacher)
    _check_k("k", k, len(student) - 1, "each point has only this many others")
    _neighbour_metric(metric)
    student_neighbours = _nearest_neighbours(student, student, k, metric, exclude_self=True)  # [N, k]
    teacher_neighbours = _nearest_neighbours(teacher, teacher, k, metric, exclude_self=True)  # [N, k]
    shared = (student_neighbours[:, :, None] == teacher_neighbours[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / k)


def _subsample(num_points: int, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_points`` points drawn without replacement (all, in order, if fewer)."""
    if num_points <= max_points:
        return np.arange(num_points)
    return np.sort(np.random.default_rng(seed).choice(num_points, size=max_points, replace=False))


def _pairwise_dissimilarities(features: np.ndarray, dissimilarity: Dissimilarity) -> np.ndarray:
    """``[n, n]`` float64 matrix of ``dissimilarity`` between the rows of ``features``."""
    with torch.no_grad():
        return dissimilarity(torch.from_numpy(features)).cpu().numpy()


def _resolve_dissimilarities(
    dissimilarity: str | Dissimilarity, teacher_dissimilarity: str | Dissimilarity | None
) -> tuple[Dissimilarity, Dissimilarity]:
    student_side = get_dissimilarity(dissimilarity)
    teacher_side = student_side if teacher_dissimilarity is None else get_dissimilarity(teacher_dissimilarity)
    return student_side, teacher_side


def dissimilarity_spearman(
    student_embeddings: ArrayLike,
    teacher_embeddings: ArrayLike,
    dissimilarity: str | Dissimilarity = "euclidean",
    max_points: int = 2000,
    seed: int = 0,
    teacher_dissimilarity: str | Dissimilarity | None = None,
) -> float:
    """Spearman correlation between the student's and the teacher's pairwise dissimilarities.

    ``rho = Pearson(rank(d_S(i, j)), rank(d_T(i, j)))`` over the ``n(n-1)/2`` pairs ``i < j`` of
    ``n = min(N, max_points)`` points drawn at random (the same points on both sides); average ranks
    for ties. The rank comparison of representational dissimilarity matrices of Kriegeskorte, Mur &
    Bandettini, "Representational similarity analysis", Front. Syst. Neurosci. 2008. Invariant to any
    increasing transform of either dissimilarity (euclidean and squared euclidean agree), hence to
    scaling and rotating either embedding under the euclidean dissimilarity. Undefined when one side's
    dissimilarities are all equal (a collapsed embedding): NaN is returned and a warning logged.

    Args:
        student_embeddings: ``[N, d_s]``.
        teacher_embeddings: ``[N, d_t]``, the same points in the same order.
        dissimilarity: a name of ``DISSIMILARITIES`` or a ``Dissimilarity`` for the student.
        max_points: points kept (memory and time grow as ``max_points^2``).
        seed: seed of the subsample.
        teacher_dissimilarity: the teacher's, if different (default: the student's).

    Example:
        >>> round(dissimilarity_spearman([[0.0], [2.0], [3.0], [7.0]], [[0.0], [1.0], [3.0], [7.0]]), 4)
        0.9429
    """
    student = _as_matrix("student_embeddings", student_embeddings)
    teacher = _as_matrix("teacher_embeddings", teacher_embeddings)
    _same_rows("student_embeddings", student, "teacher_embeddings", teacher)
    if len(student) < 3:
        raise ValueError(f"student_embeddings has {len(student)} points; a rank correlation of pairs needs at least 3")
    _check_positive_int("max_points", max_points, 3, " (a rank correlation of pairs needs 3 points), e.g. 2000")
    student_side, teacher_side = _resolve_dissimilarities(dissimilarity, teacher_dissimilarity)
    kept = _subsample(len(student), max_points, seed)
    upper = np.triu_indices(len(kept), k=1)
    student_pairs = _pairwise_dissimilarities(student[kept], student_side)[upper]
    teacher_pairs = _pairwise_dissimilarities(teacher[kept], teacher_side)[upper]
    for side, pairs in (("student", student_pairs), ("teacher", teacher_pairs)):
        if np.ptp(pairs) == 0:
            logger.warning("dissimilarity_spearman: every %s dissimilarity is equal (collapsed embedding); "
                           "the correlation is undefined and reported as NaN", side)
            return float("nan")
    return float(spearmanr(student_pairs, teacher_pairs).statistic)


def _order_signs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``sign(first - second)``, with 0 where the two agree to ``TIE_RELATIVE_TOLERANCE``."""
    difference = first - second
    scale = np.maximum(np.abs(first), np.abs(second))
    return np.where(np.abs(difference) <= TIE_RELATIVE_TOLERANCE * scale, 0.0, np.sign(difference))


def _random_distinct_triples(num_points: int, num_triples: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``num_triples`` uniform draws of (i, j, k), pairwise distinct, from ``range(num_points)``."""
    anchors = rng.integers(num_points, size=num_triples)
    first = rng.integers(num_points - 1, size=num_triples)
    first += first >= anchors  # skip the anchor
    second = rng.integers(num_points - 2, size=num_triples)
    low, high = np.minimum(anchors, first), np.maximum(anchors, first)
    second += second >= low  # skip both, smallest first, so the result stays uniform
    second += second >= high
    return anchors, first, second


def _triple_chunks(num_points: int, num_triples: int, seed: int, exact: bool) -> Iterator[tuple[np.ndarray, ...]]:
    """Index arrays ``(anchors, first, second)`` of distinct points, at most ``TRIPLES_PER_CHUNK`` at a time.

    ``exact``: every ordered triple once (anchor by anchor); otherwise ``num_triples`` uniform draws.
    """
    if exact:
        index = np.arange(num_points)
        first, second = np.meshgrid(index, index, indexing="ij")
        anchors_per_chunk = max(1, TRIPLES_PER_CHUNK // (num_points * num_points))
        for start in range(0, num_points, anchors_per_chunk):
            anchors = np.arange(start, min(start + anchors_per_chunk, num_points))[:, None, None]
            distinct = (first != second)[None] & (first[None] != anchors) & (second[None] != anchors)
            shape = distinct.shape
            yield (np.broadcast_to(anchors, shape)[distinct], np.broadcast_to(first, shape)[distinct],
                   np.broadcast_to(second, shape)[distinct])
        return
    rng = np.random.default_rng([seed, 1])  # a stream apart from the subsample's
    for start in range(0, num_triples, TRIPLES_PER_CHUNK):
        yield _random_distinct_triples(num_points, min(TRIPLES_PER_CHUNK, num_triples - start), rng)


def empirical_perception_coherence(
    student_embeddings: ArrayLike,
    teacher_embeddings: ArrayLike,
    dissimilarity: str | Dissimilarity = "euclidean",
    teacher_dissimilarity: str | Dissimilarity | None = None,
    num_triples: int = 200_000,
    seed: int = 0,
    max_points: int = 2000,
) -> float:
    """Probability that the student orders a random triple of points as the teacher does.

    For distinct points ``(x, x', x'')`` let ``s_S = sign(d_S(x, x') - d_S(x, x''))`` and ``s_T`` the
    same on the teacher. The score of the triple is ``(1 + s_S * s_T) / 2``: 1 when both order the pair
    the same way, 0 when reversed, 1/2 when either side ties (a teacher tie gives nothing to agree
    with, a student tie is a coin flip), so a collapsed student scores 1/2, chance level. Then
    ``PC = E_{(x, x', x'')} [(1 + s_S s_T) / 2]``, the probabilistic perception coherence of Nguyen,
    Gamboa, Zhang, Chhaibi, Gratton & Giaccone, "Perception coherence", TMLR 2026 (arXiv:2505.06595),
    as we read its abstract (see DESIGN.md). 1 = the student perceives exactly as the teacher.
    Dissimilarities closer than ``TIE_RELATIVE_TOLERANCE`` (relative) count as tied.

    Estimation: ``n = min(N, max_points)`` points are drawn at random (the same on both sides), then
    ``num_triples`` uniform triples of distinct points among them (an unbiased estimate of the
    expectation over all N points, standard error about ``0.5 / sqrt(num_triples)`` at most). When the
    ``n (n-1) (n-2)`` ordered triples are no more than ``num_triples``, all are enumerated and the value
    is exact. Invariant to scaling, rotating and translating either embedding under the euclidean
    dissimilarity, and to any increasing transform of either dissimilarity.

    Args:
        student_embeddings: ``[N, d_s]``, N >= 3.
        teacher_embeddings: ``[N, d_t]``, the same points in the same order.
        dissimilarity: a name of ``DISSIMILARITIES`` or a ``Dissimilarity`` for the student.
        teacher_dissimilarity: the teacher's, if different (default: the student's).
        num_triples: triples sampled.
        seed: seed of the subsample and the triples.
        max_points: points kept (memory grows as ``max_points^2``).

    Example:
        >>> empirical_perception_coherence([[0.0], [2.0], [3.0], [7.0]], [[0.0], [1.0], [3.0], [7.0]])
        0.9166666666666666
    """
    student = _as_matrix("student_embeddings", student_embeddings)
    teacher = _as_matrix("teacher_embeddings", teacher_embeddings)
    _same_rows("student_embeddings", student, "teacher_embeddings", teacher)
    if len(student) < 3:
        raise ValueError(f"student_embeddings has {len(student)} points; a triple of distinct points needs at least 3")
    _check_positive_int("num_triples", num_triples, 1, ", e.g. 200000")
    _check_positive_int("max_points", max_points, 3, " (a triple needs 3 distinct points), e.g. 2000")
    student_side, teacher_side = _resolve_dissimilarities(dissimilarity, teacher_dissimilarity)
    kept = _subsample(len(student), max_points, seed)
    student_matrix = _pairwise_dissimilarities(student[kept], student_side)  # [n, n]
    teacher_matrix = _pairwise_dissimilarities(teacher[kept], teacher_side)  # [n, n]
    n = len(kept)
    exact = n * (n - 1) * (n - 2) <= num_triples
    agreement_sum, count = 0.0, 0
    for anchors, first, second in _triple_chunks(n, num_triples, seed, exact):
        student_signs = _order_signs(student_matrix[anchors, first], student_matrix[anchors, second])
        teacher_signs = _order_signs(teacher_matrix[anchors, first], teacher_matrix[anchors, second])
        agreement_sum += float((student_signs * teacher_signs).sum())
        count += len(anchors)
    return float((count + agreement_sum) / (2.0 * count))


# --------------------------------------------------------------------------- everything at once


@dataclass
class EmbeddingEvaluation:
    """The settings of a full evaluation; :meth:`evaluate` runs every metric that applies.

    Class-aware metrics run when labels are given: kNN accuracy and the linear probe (train split as
    the labelled reference, test split scored) need both ``train_labels`` and ``test_labels`` (the
    probe also two training classes); retrieval (leave-one-out on the test split) needs
    ``test_labels`` with some class seen twice. Agreement metrics run on the test split when
    ``teacher_test`` is given. A metric that does not apply is skipped with a logged warning; a
    ``k`` larger than a split allows is an error.
    """

    ks: tuple[int, ...] = (1, 10)
    metric: str = "cosine"  # neighbour searches: kNN, retrieval, teacher-neighbour recall
    dissimilarity: str | Dissimilarity = "euclidean"  # Spearman and perception coherence
    teacher_dissimilarity: str | Dissimilarity | None = None
    probe_max_iter: int = 1000
    max_points: int = 2000
    num_triples: int = 200_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.ks = _check_ks(self.ks)
        for name in ("probe_max_iter", "num_triples"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("max_points", self.max_points, 3)
        _neighbour_metric(self.metric)
        _resolve_dissimilarities(self.dissimilarity, self.teacher_dissimilarity)

    def evaluate(
        self,
        student_train: ArrayLike,
        student_test: ArrayLike,
        train_labels: LabelsLike | None = None,
        test_labels: LabelsLike | None = None,
        teacher_train: ArrayLike | None = None,
        teacher_test: ArrayLike | None = None,
    ) -> dict[str, float]:
        """Flat ``{metric_name: value}``; see :func:`evaluate_embeddings` for the keys."""
        train = _as_matrix("student_train", student_train)
        test = _as_matrix("student_test", student_test)
        _same_width("student_test", test, "student_train", train)
        if teacher_train is not None:
            _same_rows("teacher_train", _as_matrix("teacher_train", teacher_train), "student_train", train)
        results: dict[str, float] = {}
        if train_labels is not None and test_labels is not None:
            for k in self.ks:
                results[f"knn_accuracy@{k}"] = knn_accuracy(train, train_labels, test, test_labels, k, self.metric)
            train_y = _as_labels("train_labels", train_labels, len(train), "student_train")
            if len(np.unique(train_y)) >= 2:
                results["linear_probe_accuracy"] = linear_probe_accuracy(
                    train, train_y, test, test_labels, self.probe_max_iter, self.seed
                )
            else:
                logger.warning("evaluate_embeddings: train_labels holds a single class; linear probe skipped")
        elif train_labels is not None:
            logger.warning("evaluate_embeddings: train_labels without test_labels; kNN accuracy and probe skipped")
        if test_labels is not None:
            test_y = _as_labels("test_labels", test_labels, len(test), "student_test")
            if np.unique(test_y, return_counts=True)[1].max() >= 2:
                results.update(retrieval_metrics(test, test_y, self.ks, self.metric))
            else:
                logger.warning("evaluate_embeddings: no class occurs twice in test_labels; retrieval metrics skipped")
        if teacher_test is not None:
            teacher = _as_matrix("teacher_test", teacher_test)
            _same_rows("teacher_test", teacher, "student_test", test)
            k = max(self.ks)
            results[f"teacher_neighbour_recall@{k}"] = teacher_neighbour_recall(test, teacher, k, self.metric)
            results["dissimilarity_spearman"] = dissimilarity_spearman(
                test, teacher, self.dissimilarity, self.max_points, self.seed, self.teacher_dissimilarity
            )
            results["perception_coherence"] = empirical_perception_coherence(
                test, teacher, self.dissimilarity, self.teacher_dissimilarity, self.num_triples, self.seed,
                self.max_points,
            )
        logger.debug("evaluate_embeddings: %s", results)
        return results


def evaluate_embeddings(
    student_train: ArrayLike,
    student_test: ArrayLike,
    train_labels: LabelsLike | None = None,
    test_labels: LabelsLike | None = None,
    teacher_train: ArrayLike | None = None,
    teacher_test: ArrayLike | None = None,
    ks: Sequence[int] = (1, 10),
    dissimilarity: str | Dissimilarity = "euclidean",
    metric: str = "cosine",
    seed: int = 0,
) -> dict[str, float]:
    """Every applicable metric of a model's embeddings, as flat keys.

    With labels: ``knn_accuracy@{k}`` for k in ``ks`` and ``linear_probe_accuracy`` (fitted on the
    train split, scored on the test split; need both label arrays), ``map_at_r`` and
    ``recall_at_{k}`` (leave-one-out on the test split; need ``test_labels``). With ``teacher_test``:
    ``teacher_neighbour_recall@{max(ks)}``, ``dissimilarity_spearman`` and ``perception_coherence``
    between ``student_test`` and ``teacher_test``. ``teacher_train`` is only checked against
    ``student_train`` (agreement is measured on held-out points). Formulas and papers: the functions
    of the same names. For other settings build an :class:`EmbeddingEvaluation`.

    Example:
        >>> metrics = evaluate_embeddings(student_train, student_test, train_labels, test_labels,
        ...                               teacher_test=teacher_test)  # doctest: +SKIP
        >>> metrics["knn_accuracy@10"], metrics["perception_coherence"]  # doctest: +SKIP
    """
    settings = EmbeddingEvaluation(ks=tuple(ks), metric=metric, dissimilarity=dissimilarity, seed=seed)
    return settings.evaluate(student_train, student_test, train_labels, test_labels, teacher_train, teacher_test)


def _format_value(value: Any) -> str:
    """``-`` for a missing metric, 4 decimals for fractions, whole numbers with separators from 1000 up."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if math.isnan(value):
        return "nan"
    if isinstance(value, (int, np.integer)) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4f}"


def format_comparison_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, one column per metric (the union of keys, first seen first).

    Fractions show 4 decimals, values of 1000 or more (parameters, embeddings/s) whole with thousands
    separators, missing metrics ``-``.

    Example:
        >>> print(format_comparison_table({"teacher": {"map_at_r": 0.5}, "student": {"map_at_r": 0.25, "parameters": 1e6}}))
        | model | map_at_r | parameters |
        | --- | ---: | ---: |
        | teacher | 0.5000 | - |
        | student | 0.2500 | 1,000,000 |
    """
    if not rows:
        raise ValueError("rows is empty; pass {model_name: {metric_name: value}} with at least one model")
    columns = list(dict.fromkeys(name for metrics in rows.values() for name in metrics))

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        "| " + " | ".join(["model", *(cell(name) for name in columns)]) + " |",
        "| " + " | ".join(["---", *("---:" for _ in columns)]) + " |",
    ]
    for model, metrics in rows.items():
        values = [_format_value(metrics.get(name)) for name in columns]
        lines.append("| " + " | ".join([cell(model), *values]) + " |")
    return "\n".join(lines)
