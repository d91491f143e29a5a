"""Several models' metrics side by side, as a markdown table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _format_value(value: Any) -> str:
    """``-`` for a missing metric, 4 decimals for fractions, whole numbers with separators from 1000 up."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if math.isnan(value):
        return "nan"
    if isinstance(value, (int, np.integer)) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4f}"


def format_comparison_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, one column per metric (the union of keys, first seen first).

    Fractions show 4 decimals, values of 1000 or more (parameters, embeddings/s) whole with thousands
    separators, missing metrics ``-``.

    Example:
        >>> print(format_comparison_table({"teacher": {"map_at_r": 0.5}, "student": {"map_at_r": 0.25, "parameters": 1e6}}))
        | model | map_at_r | parameters |
        | --- | ---: | ---: |
        | teacher | 0.5000 | - |
        | student | 0.2500 | 1,000,000 |
    """
    if not rows:
        raise ValueError("rows is empty; pass {model_name: {metric_name: value}} with at least one model")
    columns = list(dict.fromkeys(name for metrics in rows.values() for name in metrics))

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        "| " + " | ".join(["model", *(cell(name) for name in columns)]) + " |",
        "| " + " | ".join(["---", *("---:" for _ in columns)]) + " |",
    ]
    for model, metrics in rows.items():
        values = [_format_value(metrics.get(name)) for name in columns]
        lines.append("| " + " | ".join([cell(model), *values]) + " |")
    return "\n".join(lines)
