"""ROUGE-L F-measure of token-id sequences, as an ``evaluate`` metric (no ``rouge-score``, no Hub).

Load it from disk (works offline):
``evaluate.load(hf_pcoh.evaluation.language_model.ROUGE_L_METRIC_PATH)``. The computation is
:func:`hf_pcoh.evaluation.language_model.rouge_l_f_measure`, on token ids rather than on words, so it scores
what a language model generated without detokenising it (the student's continuation against the teacher's).
"""

import datasets
import evaluate
import numpy as np

from hf_pcoh.evaluation.language_model import ROUGE_L_CITATION, rouge_l_f_measure

_DESCRIPTION = """
ROUGE-L (Lin, 2004) on token sequences: for each pair, the longest common subsequence (LCS) of the prediction
and the reference gives precision P = LCS / len(prediction) and recall R = LCS / len(reference), and the
F-measure 2PR / (P + R) (0 when either is empty or they share no token). The result is the mean F-measure over
the pairs. 1 = every prediction equals its reference.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: token-id sequences (lists of ints), e.g. a student's greedy continuations.
    references: one token-id sequence per prediction, in the same order, e.g. the teacher's.
Returns:
    rouge_l: mean ROUGE-L F-measure over the pairs, in [0, 1].
Examples:
    >>> metric = evaluate.load(ROUGE_L_METRIC_PATH)
    >>> metric.compute(predictions=[[1, 2, 3, 4], [5, 6]], references=[[1, 3, 4, 5, 6], [5, 6]])
    {'rouge_l': 0.8333333333333333}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    """``predictions`` = the student's token sequences, ``references`` = the teacher's."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=ROUGE_L_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        scores = [rouge_l_f_measure(list(prediction), list(reference))
                  for prediction, reference in zip(predictions, references)]
        return {"rouge_l": float(np.mean(scores)) if scores else float("nan")}
