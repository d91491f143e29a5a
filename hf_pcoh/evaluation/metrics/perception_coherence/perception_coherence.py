"""Perception coherence of a student's embeddings with its teacher's, as an ``evaluate`` metric.

Load it from disk (works offline): ``evaluate.load(hf_pcoh.evaluation.metric_path("perception_coherence"))``.
The computation is :func:`hf_pcoh.evaluation.empirical_perception_coherence`.
"""

import evaluate
import numpy as np

from hf_pcoh.evaluation import CITATIONS, empirical_perception_coherence
from hf_pcoh.evaluation.metrics import EMBEDDING_PAIR_FEATURES

_DESCRIPTION = """
Perception coherence: the probability, over random triples (x, x', x'') of distinct points, that the
student orders d(x, x') vs d(x, x'') as the teacher does; a triple scores (1 + s_S * s_T) / 2 with
s = sign(d(x, x') - d(x, x'')), so ties on either side count 1/2. 1 = the student perceives exactly
like the teacher, 0.5 = chance (or a collapsed student), 0 = every comparison reversed.
Nguyen et al., "Perception coherence", TMLR 2026 (arXiv:2505.06595), as implemented by hf_pcoh.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: student embeddings, one list of floats per point ([N, d_s]), N >= 3.
    references: teacher embeddings of the same points in the same order ([N, d_t]).
    dissimilarity: "euclidean" (default), "squared_euclidean" or "cosine", for the student.
    teacher_dissimilarity: the teacher's, if different (default: the student's).
    num_triples: triples sampled (default 200000); with few points every triple is enumerated.
    max_points: points subsampled before sampling triples (default 2000).
    seed: seed of the subsample and the triples (default 0).
Returns:
    perception_coherence: float in [0, 1].
Examples:
    >>> metric = evaluate.load(metric_path("perception_coherence"))
    >>> metric.compute(predictions=[[0.0], [2.0], [3.0], [7.0]], references=[[0.0], [1.0], [3.0], [7.0]])
    {'perception_coherence': 0.9166666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerceptionCoherence(evaluate.Metric):
    """``predictions`` = student embeddings, ``references`` = teacher embeddings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATIONS["perception_coherence"],
            inputs_description=_KWARGS_DESCRIPTION,
            features=EMBEDDING_PAIR_FEATURES,
            reference_urls=["https://arxiv.org/abs/2505.06595"],
        )

    def _compute(
        self,
        predictions,
        references,
        dissimilarity="euclidean",
        teacher_dissimilarity=None,
        num_triples=200_000,
        max_points=2000,
        seed=0,
    ):
        value = empirical_perception_coherence(
            np.asarray(predictions, dtype=np.float64),
            np.asarray(references, dtype=np.float64),
            dissimilarity=dissimilarity,
            teacher_dissimilarity=teacher_dissimilarity,
            num_triples=num_triples,
            seed=seed,
            max_points=max_points,
        )
        return {"perception_coherence": value}
