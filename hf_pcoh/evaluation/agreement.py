"""Label-free agreement of a student with its teacher through their pairwise dissimilarities.

- :func:`dissimilarity_spearman` -- Spearman correlation of the two dissimilarity matrices
  (representational similarity analysis, Kriegeskorte et al., 2008).
- :func:`empirical_perception_coherence` -- the probability that the student orders a random triple
  as the teacher does (Nguyen et al., 2026).

Both take the library's pluggable :class:`~hf_pcoh.losses.dissimilarity.Dissimilarity` objects (or
their names), one per side: the geometry the points are compared in. Under ``"cosine"`` they do not
change when a row is rescaled by a positive factor; under ``"euclidean"`` they do not change under a
common translation or a global rescaling; both are unchanged by a rotation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from scipy.stats import spearmanr

from ..losses.dissimilarity import Dissimilarity, get_dissimilarity
from .validation import ArrayLike, as_matrix, check_positive_int, check_same_rows

logger = logging.getLogger(__name__)

# Two dissimilarities closer than this (relative to the larger) are a tie: it absorbs the round-off of
# computing mathematically equal distances (e.g. in a symmetric configuration) in float64.
TIE_RELATIVE_TOLERANCE = 1e-9
# Triples of perception coherence scored at once (a few arrays of this length in memory).
TRIPLES_PER_CHUNK = 2**20


def resolve_dissimilarities(
    dissimilarity: str | Dissimilarity, teacher_dissimilarity: str | Dissimilarity | None
) -> tuple[Dissimilarity, Dissimilarity]:
    """The (student, teacher) ``Dissimilarity`` objects; the teacher's defaults to the student's."""
    student_side = get_dissimilarity(dissimilarity)
    teacher_side = student_side if teacher_dissimilarity is None else get_dissimilarity(teacher_dissimilarity)
    return student_side, teacher_side


def _subsample(num_points: int, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_points`` points drawn without replacement (all, in order, if fewer)."""
    if num_points <= max_points:
        return np.arange(num_points)
    return np.sort(np.random.default_rng(seed).choice(num_points, size=max_points, replace=False))


def _pairwise_dissimilarities(features: np.ndarray, dissimilarity: Dissimilarity) -> np.ndarray:
    """``[n, n]`` float64 matrix of ``dissimilarity`` between the rows of ``features``."""
    with torch.no_grad():
        return dissimilarity(torch.from_numpy(features)).cpu().numpy()


def _dissimilarity_matrices(
    student: np.ndarray,
    teacher: np.ndarray,
    dissimilarity: str | Dissimilarity,
    teacher_dissimilarity: str | Dissimilarity | None,
    max_points: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``[n, n]`` student and teacher dissimilarity matrices of the same ``n <= max_points`` points."""
    student_side, teacher_side = resolve_dissimilarities(dissimilarity, teacher_dissimilarity)
    kept = _subsample(len(student), max_points, seed)
    return _pairwise_dissimilarities(student[kept], student_side), _pairwise_dissimilarities(teacher[kept], teacher_side)


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
    student = as_matrix("student_embeddings", student_embeddings)
    teacher = as_matrix("teacher_embeddings", teacher_embeddings)
    check_same_rows("student_embeddings", student, "teacher_embeddings", teacher)
    if len(student) < 3:
        raise ValueError(f"student_embeddings has {len(student)} points; a rank correlation of pairs needs at least 3")
    check_positive_int("max_points", max_points, 3, " (a rank correlation of pairs needs 3 points), e.g. 2000")
    student_matrix, teacher_matrix = _dissimilarity_matrices(
        student, teacher, dissimilarity, teacher_dissimilarity, max_points, seed
    )
    upper = np.triu_indices(len(student_matrix), k=1)
    student_pairs, teacher_pairs = student_matrix[upper], teacher_matrix[upper]
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


def _coherence_of_matrices(student_matrix: np.ndarray, teacher_matrix: np.ndarray, num_triples: int, seed: int) -> float:
    """Mean triple score ``(1 + s_S s_T) / 2`` over every ordered triple or ``num_triples`` random ones."""
    n = len(student_matrix)
    exact = n * (n - 1) * (n - 2) <= num_triples
    agreement_sum, count = 0.0, 0
    for anchors, first, second in _triple_chunks(n, num_triples, seed, exact):
        student_signs = _order_signs(student_matrix[anchors, first], student_matrix[anchors, second])
        teacher_signs = _order_signs(teacher_matrix[anchors, first], teacher_matrix[anchors, second])
        agreement_sum += float((student_signs * teacher_signs).sum())
        count += len(anchors)
    return float((count + agreement_sum) / (2.0 * count))


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
    Gamboa, Zhang, Chhaibi, Gratton & Giaccone, TMLR 2026 (arXiv:2505.06595), as we read its abstract. 1 = the student perceives exactly as the teacher.
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
    student = as_matrix("student_embeddings", student_embeddings)
    teacher = as_matrix("teacher_embeddings", teacher_embeddings)
    check_same_rows("student_embeddings", student, "teacher_embeddings", teacher)
    if len(student) < 3:
        raise ValueError(f"student_embeddings has {len(student)} points; a triple of distinct points needs at least 3")
    check_positive_int("num_triples", num_triples, 1, ", e.g. 200000")
    check_positive_int("max_points", max_points, 3, " (a triple needs 3 distinct points), e.g. 2000")
    student_matrix, teacher_matrix = _dissimilarity_matrices(  # [n, n] each
        student, teacher, dissimilarity, teacher_dissimilarity, max_points, seed
    )
    return _coherence_of_matrices(student_matrix, teacher_matrix, num_triples, seed)
