"""Spearman correlation of a student's and its teacher's pairwise dissimilarities, as an ``evaluate`` metric.

Load it from disk (works offline): ``evaluate.load(hf_pcoh.evaluation.metric_path("dissimilarity_spearman"))``.
The computation is :func:`hf_pcoh.evaluation.dissimilarity_spearman`.
"""

import evaluate
import numpy as np

from hf_pcoh.evaluation import CITATIONS, dissimilarity_spearman
from hf_pcoh.evaluation.metrics import EMBEDDING_PAIR_FEATURES

_DESCRIPTION = """
Dissimilarity Spearman: Spearman's rank correlation between the student's and the teacher's
dissimilarities d(i, j) over all pairs i < j of (at most max_points, randomly subsampled) points,
the rank comparison of representational dissimilarity matrices (Kriegeskorte et al., 2008).
1 = the student ranks every pair of points exactly as the teacher. NaN (with a logged warning) when
one side's dissimilarities are all equal.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: student embeddings, one list of floats per point ([N, d_s]), N >= 3.
    references: teacher embeddings of the same points in the same order ([N, d_t]).
    dissimilarity: "euclidean" (default), "squared_euclidean" or "cosine", for the student.
    teacher_dissimilarity: the teacher's, if different (default: the student's).
    max_points: points subsampled (default 2000).
    seed: seed of the subsample (default 0).
Returns:
    dissimilarity_spearman: float in [-1, 1].
Examples:
    >>> metric = evaluate.load(metric_path("dissimilarity_spearman"))
    >>> metric.compute(predictions=[[0.0], [2.0], [3.0], [7.0]], references=[[0.0], [1.0], [3.0], [7.0]])
    {'dissimilarity_spearman': 0.942857142857143}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DissimilaritySpearman(evaluate.Metric):
    """``predictions`` = student embeddings, ``references`` = teacher embeddings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["dissimilarity_spearman"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=EMBEDDING_PAIR_FEATURES,
        )

    def _compute(
        self,
        predictions,
        references,
        dissimilarity="euclidean",
        teacher_dissimilarity=None,
        max_points=2000,
        seed=0,
    ):
        value = dissimilarity_spearman(
            np.asarray(predictions, dtype=np.float64),
            np.asarray(references, dtype=np.float64),
            dissimilarity=dissimilarity,
            max_points=max_points,
            seed=seed,
            teacher_dissimilarity=teacher_dissimilarity,
        )
        return {"dissimilarity_spearman": value}
