"""Local ``evaluate`` metric modules for the label-free teacher-agreement metrics.

Each sub-folder holds one ``evaluate.Metric`` script named like the folder, whose ``_compute``
delegates to :mod:`hf_pcoh.evaluation`; ``predictions`` are the student's embeddings and
``references`` the teacher's, one row (a list of floats) per point. They load from disk, so they work
offline (``HF_HUB_OFFLINE=1``)::

    import evaluate
    from hf_pcoh.evaluation import metric_path

    coherence = evaluate.load(metric_path("perception_coherence"))
    coherence.compute(predictions=student_embeddings, references=teacher_embeddings)
    # {'perception_coherence': 0.87}
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ...errors import unknown_name_message

METRICS: tuple[str, ...] = ("teacher_neighbour_recall", "dissimilarity_spearman", "perception_coherence")


def metric_path(name: str) -> str:
    """The folder of the local metric ``name``, to pass to ``evaluate.load``.

    ``evaluate.load`` reads a folder that contains a script of the same name (``<name>/<name>.py``)
    from disk, never from the Hub.
    """
    if name not in METRICS:
        raise ValueError(unknown_name_message("metric", str(name), list(METRICS)))
    return str(Path(__file__).resolve().parent / name)


# Every metric compares a student's embeddings (predictions) with the teacher's (references), row by row.
EMBEDDING_PAIR_FEATURES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("float64")),
        "references": datasets.Sequence(datasets.Value("float64")),
    }
)

__all__ = ["EMBEDDING_PAIR_FEATURES", "METRICS", "metric_path"]
