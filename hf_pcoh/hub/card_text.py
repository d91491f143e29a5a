"""How the model card writes names and numbers: which names are Hub ids, counts, ratios and metrics.

Shared by the card's sections (:mod:`.card`, :mod:`.run_origin`); re-exported by :mod:`hf_pcoh.hub`.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

# Metrics in the order a reader wants them, with the names they are shown under.
METRIC_NAMES = {
    "knn_accuracy@1": "1-NN accuracy",
    "knn_accuracy@10": "10-NN accuracy",
    "linear_probe_accuracy": "Linear-probe accuracy",
    "map_at_r": "mAP@R",
    "recall_at_10": "Recall@10",
    "teacher_neighbour_recall@10": "Teacher-neighbour recall@10",
    "dissimilarity_spearman": "Dissimilarity Spearman",
    "perception_coherence": "Perception coherence",
    "parameters": "Parameters",
    "embeddings_per_second": "Embeddings / s",
}

HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")



def looks_like_hub_id(name: str | None) -> bool:
    """True for ``owner/name`` strings that are valid repo ids and not a local folder."""
    if not name or not HUB_ID_PATTERN.match(name) or os.path.isdir(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ---- numbers as the card shows them ------------------------------------------------------------------


def format_count(value: float | int | None) -> str:
    """``22,713,216``, or a dash when unknown."""
    return f"{int(value):,}" if value is not None else "—"


def format_ratio(ratio: float) -> str:
    """``0.86x``; tiny ratios keep two significant digits (``0.0017x``) instead of reading ``0.00x``."""
    return f"{ratio:.2f}x" if abs(ratio) >= 0.1 else f"{ratio:.2g}x"


def format_metric(name: str, value: Any) -> str:
    """A metric as the results table shows it: counts with separators, rates to 0.1, scores to 4 decimals."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    if name == "parameters":
        return format_count(value)
    if name == "embeddings_per_second":
        return f"{value:,.1f}"
    return f"{value:.4f}"


def metric_display_name(name: str) -> str:
    """``knn_accuracy@10`` -> ``10-NN accuracy``; unknown names are made readable."""
    if name in METRIC_NAMES:
        return METRIC_NAMES[name]
    return name.replace("_", " ").capitalize()


def ordered_metrics(*tables: dict[str, Any]) -> list[str]:
    """The numeric metric names of ``tables``: the known ones in reading order, then the rest sorted."""
    names = {name for table in tables for name, value in table.items() if isinstance(value, (int, float))}
    known = [name for name in METRIC_NAMES if name in names]
    return known + sorted(names - set(known))


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and inf stay out of tables and the model-index."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
