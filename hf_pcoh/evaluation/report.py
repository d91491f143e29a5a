"""Every metric that applies to a model's embeddings, in both geometries, as flat JSON-able keys.

Key names. A metric measured in a geometry is reported as ``<metric>/<geometry>``, the geometry being
``cosine`` (neighbours and dissimilarities by ``1 - cos``) or ``euclidean`` (by ``||x - y||``):

- ``knn_accuracy@{k}/{geometry}`` for each k of ``ks``;
- ``map_at_r/{geometry}`` and ``recall_at_{k}/{geometry}`` for each k of ``ks``;
- ``teacher_neighbour_recall@{max(ks)}/{geometry}``;
- ``dissimilarity_spearman/{geometry}`` and ``perception_coherence/{geometry}``;
- ``linear_probe_accuracy`` has no geometry and no suffix.

Aliases. Before both geometries were measured, the neighbour metrics (kNN, retrieval,
teacher-neighbour recall) were reported in the cosine geometry and the agreement metrics (Spearman,
perception coherence) in the euclidean one, under the unsuffixed names. Those names stay, as aliases
of that geometry (``knn_accuracy@10 == knn_accuracy@10/cosine``, ``perception_coherence ==
perception_coherence/euclidean``), whenever that geometry is measured: the model card, the CLI
summary line and the benchmarks read them. The unsuffixed keys come first, in their old order, then
the suffixed ones geometry by geometry; :func:`without_aliases` drops the aliases for a table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .agreement import dissimilarity_spearman, empirical_perception_coherence
from .neighbours import knn_accuracy, retrieval_metrics, teacher_neighbour_recall
from .probe import linear_probe_accuracy
from .validation import (
    ArrayLike,
    LabelsLike,
    as_labels,
    as_matrix,
    check_ks,
    check_positive_int,
    check_same_rows,
    check_same_width,
)

logger = logging.getLogger(__name__)

# The geometries a metric can be measured in; each name is both a neighbour metric and a dissimilarity.
GEOMETRIES: tuple[str, ...] = ("cosine", "euclidean")
# The geometry of each family's unsuffixed (alias) keys: the one it was measured in before.
NEIGHBOUR_ALIAS_GEOMETRY = "cosine"
AGREEMENT_ALIAS_GEOMETRY = "euclidean"


def check_geometries(geometries: Sequence[str] | str) -> tuple[str, ...]:
    """``geometries`` as a non-empty tuple of distinct names of ``GEOMETRIES``, in the order given."""
    if isinstance(geometries, str):
        geometries = (geometries,)
    geometries = tuple(geometries)
    if not geometries:
        raise ValueError(f"geometries is empty; give at least one of {GEOMETRIES}, e.g. geometries=('cosine',)")
    unknown = [name for name in geometries if name not in GEOMETRIES]
    if unknown:
        raise ValueError(f"geometries={geometries!r} holds {unknown[0]!r}; each must be one of {GEOMETRIES}")
    return tuple(dict.fromkeys(geometries))


def without_aliases(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` less the unsuffixed keys that repeat a ``<name>/<geometry>`` key (for tables)."""
    return {
        name: value for name, value in metrics.items()
        if not any(f"{name}/{geometry}" in metrics for geometry in GEOMETRIES)
    }


@dataclass
class _FlatResults:
    """Collects values by geometry and lays them out as documented in the module docstring."""

    geometries: tuple[str, ...]
    unsuffixed: dict[str, float] = field(default_factory=dict)
    by_geometry: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, values: dict[str, float], geometry: str | None = None, alias_geometry: str | None = None) -> None:
        """Record ``values`` measured in ``geometry`` (``None``: the metric has none)."""
        if geometry is None or geometry == alias_geometry:
            self.unsuffixed.update(values)
        if geometry is not None:
            self.by_geometry.setdefault(geometry, {}).update(values)

    def flat(self) -> dict[str, float]:
        results = dict(self.unsuffixed)
        for geometry in self.geometries:
            for name, value in self.by_geometry.get(geometry, {}).items():
                results[f"{name}/{geometry}"] = value
        return results


@dataclass
class EmbeddingEvaluation:
    """The settings of a full evaluation; :meth:`evaluate` runs every metric that applies.

    Class-aware metrics run when labels are given: kNN accuracy and the linear probe (train split as
    the labelled reference, test split scored) need both ``train_labels`` and ``test_labels`` (the
    probe also two training classes); retrieval (leave-one-out on the test split) needs
    ``test_labels`` with some class seen twice. Agreement metrics run on the test split when
    ``teacher_test`` is given. A metric that does not apply is skipped with a logged warning; a
    ``k`` larger than a split allows is an error. Every metric but the probe is measured in each of
    ``geometries`` (keys in the module docstring); for another dissimilarity (a plug-in
    ``Dissimilarity``, or a different one for the teacher) call the metric functions directly.
    """

    ks: tuple[int, ...] = (1, 10)
    geometries: tuple[str, ...] = GEOMETRIES
    probe_max_iter: int = 1000
    max_points: int = 2000
    num_triples: int = 200_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.ks = check_ks(self.ks)
        self.geometries = check_geometries(self.geometries)
        for name in ("probe_max_iter", "num_triples"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_points", self.max_points, 3)

    def evaluate(
        self,
        student_train: ArrayLike,
        student_test: ArrayLike,
        train_labels: LabelsLike | None = None,
        test_labels: LabelsLike | None = None,
        teacher_train: ArrayLike | None = None,
        teacher_test: ArrayLike | None = None,
    ) -> dict[str, float]:
        """Flat ``{metric_name: value}``; see the module docstring for the keys."""
        train = as_matrix("student_train", student_train)
        test = as_matrix("student_test", student_test)
        check_same_width("student_test", test, "student_train", train)
        if teacher_train is not None:
            check_same_rows("teacher_train", as_matrix("teacher_train", teacher_train), "student_train", train)
        results = _FlatResults(self.geometries)
        if train_labels is not None and test_labels is not None:
            self._add_classification(results, train, train_labels, test, test_labels)
        elif train_labels is not None:
            logger.warning("evaluate_embeddings: train_labels without test_labels; kNN accuracy and probe skipped")
        if test_labels is not None:
            self._add_retrieval(results, test, as_labels("test_labels", test_labels, len(test), "student_test"))
        if teacher_test is not None:
            teacher = as_matrix("teacher_test", teacher_test)
            check_same_rows("teacher_test", teacher, "student_test", test)
            self._add_agreement(results, test, teacher)
        flat = results.flat()
        logger.debug("evaluate_embeddings: %s", flat)
        return flat

    def _add_classification(
        self, results: _FlatResults, train: np.ndarray, train_labels: LabelsLike, test: np.ndarray,
        test_labels: LabelsLike,
    ) -> None:
        """kNN accuracy in each geometry, then the linear probe (needs two training classes)."""
        for geometry in self.geometries:
            accuracies = {f"knn_accuracy@{k}": knn_accuracy(train, train_labels, test, test_labels, k, geometry)
                          for k in self.ks}
            results.add(accuracies, geometry, NEIGHBOUR_ALIAS_GEOMETRY)
        train_y = as_labels("train_labels", train_labels, len(train), "student_train")
        if len(np.unique(train_y)) >= 2:
            probe = linear_probe_accuracy(train, train_y, test, test_labels, self.probe_max_iter, self.seed)
            results.add({"linear_probe_accuracy": probe})
        else:
            logger.warning("evaluate_embeddings: train_labels holds a single class; linear probe skipped")

    def _add_retrieval(self, results: _FlatResults, test: np.ndarray, test_y: np.ndarray) -> None:
        """Leave-one-out mAP@R and recall@k on the test split, in each geometry."""
        if np.unique(test_y, return_counts=True)[1].max() < 2:
            logger.warning("evaluate_embeddings: no class occurs twice in test_labels; retrieval metrics skipped")
            return
        for geometry in self.geometries:
            results.add(retrieval_metrics(test, test_y, self.ks, geometry), geometry, NEIGHBOUR_ALIAS_GEOMETRY)

    def _add_agreement(self, results: _FlatResults, student: np.ndarray, teacher: np.ndarray) -> None:
        """Teacher-neighbour recall@max(ks), then Spearman and perception coherence, in each geometry."""
        k = max(self.ks)
        for geometry in self.geometries:
            recall = teacher_neighbour_recall(student, teacher, k, geometry)
            results.add({f"teacher_neighbour_recall@{k}": recall}, geometry, NEIGHBOUR_ALIAS_GEOMETRY)
        for geometry in self.geometries:
            agreement = {
                "dissimilarity_spearman": dissimilarity_spearman(student, teacher, geometry, self.max_points, self.seed),
                "perception_coherence": empirical_perception_coherence(
                    student, teacher, geometry, num_triples=self.num_triples, seed=self.seed, max_points=self.max_points,
                ),
            }
            results.add(agreement, geometry, AGREEMENT_ALIAS_GEOMETRY)


def evaluate_embeddings(
    student_train: ArrayLike,
    student_test: ArrayLike,
    train_labels: LabelsLike | None = None,
    test_labels: LabelsLike | None = None,
    teacher_train: ArrayLike | None = None,
    teacher_test: ArrayLike | None = None,
    ks: Sequence[int] = (1, 10),
    geometries: Sequence[str] = GEOMETRIES,
    seed: int = 0,
) -> dict[str, float]:
    """Every applicable metric of a model's embeddings, in each of ``geometries``, as flat keys.

    With labels: ``knn_accuracy@{k}`` for k in ``ks`` and ``linear_probe_accuracy`` (fitted on the
    train split, scored on the test split; need both label arrays), ``map_at_r`` and
    ``recall_at_{k}`` (leave-one-out on the test split; need ``test_labels``). With ``teacher_test``:
    ``teacher_neighbour_recall@{max(ks)}``, ``dissimilarity_spearman`` and ``perception_coherence``
    between ``student_test`` and ``teacher_test``. Every one but the probe is reported per geometry as
    ``<name>/cosine`` and ``<name>/euclidean``, the unsuffixed name staying as an alias of the geometry
    it was measured in before (cosine for neighbour metrics, euclidean for the agreement ones): see
    :mod:`hf_pcoh.evaluation.report`. ``teacher_train`` is only checked against ``student_train``
    (agreement is measured on held-out points). Formulas and papers: the functions of the same names.
    For other settings build an :class:`EmbeddingEvaluation`.

    Example:
        >>> metrics = evaluate_embeddings(student_train, student_test, train_labels, test_labels,
        ...                               teacher_test=teacher_test)  # doctest: +SKIP
        >>> metrics["knn_accuracy@10/euclidean"], metrics["perception_coherence/cosine"]  # doctest: +SKIP
    """
    settings = EmbeddingEvaluation(ks=tuple(ks), geometries=check_geometries(geometries), seed=seed)
    return settings.evaluate(student_train, student_test, train_labels, test_labels, teacher_train, teacher_test)
