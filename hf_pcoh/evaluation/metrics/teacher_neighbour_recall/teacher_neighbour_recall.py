"""Recall of the teacher's k nearest neighbours in the student's embedding, as an ``evaluate`` metric.

Load it from disk (works offline): ``evaluate.load(hf_pcoh.evaluation.metric_path("teacher_neighbour_recall"))``.
The computation is :func:`hf_pcoh.evaluation.teacher_neighbour_recall`.
"""

import evaluate
import numpy as np

from hf_pcoh.evaluation import CITATIONS, teacher_neighbour_recall
from hf_pcoh.evaluation.metrics import EMBEDDING_PAIR_FEATURES

_DESCRIPTION = """
Teacher-neighbour recall@k: mean over points i of |kNN_student(i) ∩ kNN_teacher(i)| / k, the point
itself excluded (the neighbourhood-preservation criterion Q_NX(k) of Lee & Verleysen, 2009).
1 = every point keeps all of its teacher neighbours; k / (N - 1) = chance.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: student embeddings, one list of floats per point ([N, d_s]).
    references: teacher embeddings of the same points in the same order ([N, d_t]).
    k: neighbours per point, 1 <= k <= N - 1 (default 10).
    metric: "cosine" (default), "euclidean" or "squared_euclidean", on both sides.
Returns:
    teacher_neighbour_recall: float in [0, 1].
Examples:
    >>> metric = evaluate.load(metric_path("teacher_neighbour_recall"))
    >>> metric.compute(predictions=[[0.0], [1.0], [3.0]], references=[[0.0], [2.0], [3.0]], k=1, metric="euclidean")
    {'teacher_neighbour_recall': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TeacherNeighbourRecall(evaluate.Metric):
    """``predictions`` = student embeddings, ``references`` = teacher embeddings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["teacher_neighbour_recall"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=EMBEDDING_PAIR_FEATURES,
        )

    def _compute(self, predictions, references, k=10, metric="cosine"):
        value = teacher_neighbour_recall(
            np.asarray(predictions, dtype=np.float64),
            np.asarray(references, dtype=np.float64),
            k=k,
            metric=metric,
        )
        return {"teacher_neighbour_recall": value}
