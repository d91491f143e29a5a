"""The files a distillation run writes into its output directory (read by evaluation, cards and resume)."""

from __future__ import annotations

import json
import os
from typing import Any

DISTILLATION_CONFIG_FILE = "distillation_config.json"  # the recipe and provenance of the run
EVAL_RESULTS_FILE = "eval_results.json"  # student vs teacher on held-out data
HEADS_FILE = "distillation_heads.safetensors"  # the losses' learned heads (projectors, CosPress map)
TEACHER_PROCESSOR_DIR = "teacher_processor"  # the teacher's processor, when it differs from the student's
MODEL_CARD_FILE = "README.md"
LAYER_QUALITY_TABLE_FILE = "layer_quality.md"  # knowledge quality per teacher layer (teacher_layers auto)
LAYER_QUALITY_PLOT_FILE = "layer_quality.png"


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, indent=2, default=str)
    os.replace(temporary, path)
