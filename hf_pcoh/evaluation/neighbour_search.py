"""Exact nearest-neighbour search, chunked over queries so that no ``N x N`` matrix is built.

Distances come from scikit-learn's ``pairwise_distances`` under the metric names of
:data:`NEIGHBOUR_METRICS`. Ties in distance always go to the lower reference index, so every metric
built on this search is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.metrics import pairwise_distances

from ..errors import unknown_name_message

# Neighbour-search metric -> the scikit-learn name computing it. Squared euclidean gives the same
# neighbours as euclidean; it is accepted so every name of DISSIMILARITIES works here too.
NEIGHBOUR_METRICS: dict[str, str] = {"cosine": "cosine", "euclidean": "euclidean", "squared_euclidean": "sqeuclidean"}
# Upper bound on the entries of one [queries, references] distance chunk (64 MiB in float64).
NEIGHBOUR_CHUNK_ENTRIES = 2**23


def sklearn_metric(metric: str) -> str:
    """The scikit-learn name of ``metric``, or an error listing the known ones."""
    try:
        return NEIGHBOUR_METRICS[metric]
    except (KeyError, TypeError):
        raise ValueError(unknown_name_message("metric", str(metric), list(NEIGHBOUR_METRICS))) from None


def _smallest_columns(distances: np.ndarray, width: int) -> np.ndarray:
    """``[rows, width]`` column indices of the ``width`` smallest distances of each row, in no order.

    Among columns tied at the boundary distance the lower indices are kept.
    """
    candidates = np.argpartition(distances, width - 1, axis=1)[:, :width]
    # argpartition picks arbitrarily among points tied at the boundary distance; in the (rare) rows
    # where it left some out, a stable sort keeps the earlier points instead.
    boundary = np.take_along_axis(distances, candidates, axis=1).max(axis=1, keepdims=True)
    tied_everywhere = (distances == boundary).sum(axis=1)
    tied_taken = (np.take_along_axis(distances, candidates, axis=1) == boundary).sum(axis=1)
    redo = np.flatnonzero(tied_everywhere > tied_taken)
    if redo.size:
        candidates[redo] = np.argsort(distances[redo], axis=1, kind="stable")[:, :width]
    return candidates


def sorted_neighbour_chunks(
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
    references and a query is never its own neighbour (duplicates of it still are). ``chunk_size``
    queries are searched at a time (default: about ``NEIGHBOUR_CHUNK_ENTRIES / N_ref``).
    """
    scikit_name = sklearn_metric(metric)
    num_references = len(references)
    if chunk_size is None:
        chunk_size = max(1, NEIGHBOUR_CHUNK_ENTRIES // num_references)
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, min(start + chunk_size, len(queries)))
        distances = pairwise_distances(queries[rows], references, metric=scikit_name)  # [chunk, N_ref]
        chunk_rows = np.arange(distances.shape[0])
        if exclude_self:
            distances[chunk_rows, start + chunk_rows] = np.inf
        width = int(num_neighbours[rows].max())
        if width < num_references:
            candidates = _smallest_columns(distances, width)
        else:
            candidates = np.broadcast_to(np.arange(num_references), distances.shape).copy()
        candidate_distances = np.take_along_axis(distances, candidates, axis=1)
        # lexsort: the last key is the primary one -> by distance, then by index.
        order = np.lexsort((candidates, candidate_distances), axis=-1)
        yield rows, np.take_along_axis(candidates, order, axis=1)


def nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, k: int, metric: str, exclude_self: bool
) -> np.ndarray:
    """``[N_queries, k]`` indices of the k nearest references of each query, nearest first."""
    wanted = np.full(len(queries), k)
    chunks = [neighbours for _, neighbours in sorted_neighbour_chunks(queries, references, wanted, metric, exclude_self)]
    return np.concatenate(chunks, axis=0)
