"""Measure embeddings of a held-out split: class-aware quality and label-free agreement with the teacher.

All metric functions take embeddings as numpy arrays or torch tensors of shape ``[N, d]`` (any float
dtype; they are measured in float64) and return plain floats.

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

:func:`evaluate_embeddings` computes every metric that applies, in the cosine and the euclidean
geometry, and returns flat keys (``knn_accuracy@10/cosine``, ``perception_coherence/euclidean``, ...,
plus the unsuffixed names of before as aliases; the scheme is in :mod:`hf_pcoh.evaluation.report`).
:func:`format_comparison_table` prints several models side by side.

Modules, one job each:

- ``validation`` -- checks of arrays, labels and counts at the public boundary.
- ``neighbour_search`` -- exact k-NN search chunked over queries (no ``N x N`` matrix).
- ``neighbours`` -- kNN accuracy, retrieval, teacher-neighbour recall.
- ``probe`` -- the linear probe.
- ``agreement`` -- dissimilarity Spearman and empirical perception coherence.
- ``citations`` -- the BibTeX of each metric's paper.
- ``report`` -- :class:`EmbeddingEvaluation` / :func:`evaluate_embeddings`: everything at once.
- ``table`` -- :func:`format_comparison_table`.
- ``hf_pcoh.embedding`` (re-exported here) -- embed a data set with a model, batched and timed.
- ``student_report`` -- a student beside its teacher after a run, its one-line summary, and the agreement
  metrics the trainer reports at each evaluation during training.
- ``saved_student`` -- the same for a student folder saved by a run, and writing its results there.
- ``metrics`` -- the local ``evaluate`` metric modules (``evaluate.load(metric_path(name))``).
"""

from .agreement import TIE_RELATIVE_TOLERANCE, TRIPLES_PER_CHUNK, dissimilarity_spearman, empirical_perception_coherence
from ..citations import METRIC_CITATIONS as CITATIONS
from ..embedding import Embeddings, batched_forward, embed, embed_every_layer
from .metrics import METRICS, metric_path
from .neighbour_search import NEIGHBOUR_CHUNK_ENTRIES, NEIGHBOUR_METRICS
from .neighbours import knn_accuracy, retrieval_metrics, teacher_neighbour_recall
from .probe import linear_probe_accuracy
from .report import GEOMETRIES, EmbeddingEvaluation, evaluate_embeddings, without_aliases
from .saved_student import evaluate_saved_student, write_saved_student_results
from .student_report import agreement_metrics, compare_teacher_and_student, summary_line
from .table import format_comparison_table
from .validation import ArrayLike, LabelsLike

__all__ = [
    "CITATIONS",
    "GEOMETRIES",
    "METRICS",
    "NEIGHBOUR_CHUNK_ENTRIES",
    "NEIGHBOUR_METRICS",
    "TIE_RELATIVE_TOLERANCE",
    "TRIPLES_PER_CHUNK",
    "ArrayLike",
    "EmbeddingEvaluation",
    "Embeddings",
    "LabelsLike",
    "agreement_metrics",
    "batched_forward",
    "compare_teacher_and_student",
    "dissimilarity_spearman",
    "embed",
    "embed_every_layer",
    "empirical_perception_coherence",
    "evaluate_embeddings",
    "evaluate_saved_student",
    "format_comparison_table",
    "knn_accuracy",
    "linear_probe_accuracy",
    "metric_path",
    "retrieval_metrics",
    "summary_line",
    "teacher_neighbour_recall",
    "without_aliases",
    "write_saved_student_results",
]
