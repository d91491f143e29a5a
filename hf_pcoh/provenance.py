"""What a run records about itself beside the student: ``distillation_config.json`` (recipe, teacher, student,
data, terms, embedding, layer choice), the layer-quality table and plot of ``teacher_layers: auto``, and the model
card built from those files.

Both :func:`hf_pcoh.run_distillation` (its ``provenance``, ``layer table`` and ``card`` steps) and
``DistillationTrainer.create_model_card`` (``trainer.push_to_hub()`` outside a pipeline run) write them here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from .artifacts import DISTILLATION_CONFIG_FILE, LAYER_QUALITY_PLOT_FILE, LAYER_QUALITY_TABLE_FILE, write_json, write_text
from .config import DistillationConfig
from .data import is_streamed
from .distillation_model import DistillationTerm
from .hub import write_model_card
from .models import count_parameters
from .setup import DistillationSetup
from .version import __version__


def write_provenance(setup: DistillationSetup, terms: Sequence[DistillationTerm]) -> None:
    write_json(os.path.join(setup.config.output_dir, DISTILLATION_CONFIG_FILE), describe_run(setup, terms))


def describe_run(setup: DistillationSetup, terms: Sequence[DistillationTerm]) -> dict[str, Any]:
    """The provenance written to ``distillation_config.json`` (read by hf-pcoh evaluate and the model card).

    Its ``recipe`` holds the teacher layers that were read: with ``teacher_layers: auto`` the chosen ones
    (``layer_selection`` says how), so re-measuring the saved student reads the same layers without choosing again.
    """
    config, readout = setup.config, setup.readout
    recipe = {**config.distillation_fields(), "teacher_layers": list(readout.teacher_layers)}
    return {
        "hf_pcoh_version": __version__,
        "recipe": json.loads(json.dumps(recipe, default=str)),
        "teacher": describe_teacher(config, setup.teacher),
        "student": {"model_type": setup.student.config.model_type, "parameters": count_parameters(setup.student)},
        "dataset": {
            "name": config.dataset_name,
            "train_samples": None if is_streamed(setup.train_dataset) else len(setup.train_dataset),
            "eval_samples": len(setup.eval_dataset) if setup.eval_dataset is not None else 0,
            ("image_column" if setup.modality == "vision" else "text_column"): setup.collator.input_column,
            **({"teacher_text_column": setup.collator.teacher_input_column} if setup.collator.teacher_input_column else {}),
            "label_column": setup.collator.label_column,
        },
        "terms": [
            {
                "student_layer": readout.student_layers[term.pair_index],
                "teacher_layer": readout.teacher_layers[term.pair_index],
                "loss": term.key.split("_", 1)[1],
                "weight": term.weight,
            }
            for term in terms
        ],
        "losses": list(config.losses),
        "embedding": readout.describe(),
        "layer_selection": readout.layer_choice.to_dict() if readout.layer_choice is not None else None,
        "modality": setup.modality,
        "task": "image-feature-extraction" if setup.modality == "vision" else "feature-extraction",
    }


def describe_teacher(config: DistillationConfig, teacher: torch.nn.Module | None) -> dict[str, Any]:
    """The teacher in ``distillation_config.json``: its name, architecture and size; with precomputed
    embeddings (no teacher loaded), the column they were read from and the teacher's name when given."""
    if teacher is None:
        column = config.teacher_embedding_column
        return {"name_or_path": config.teacher_model_name_or_path or f"embeddings precomputed in column {column!r}",
                "embedding_column": column}
    return {
        "name_or_path": config.teacher_model_name_or_path or getattr(teacher, "name_or_path", None) or "config",
        "model_type": teacher.config.model_type,
        "parameters": count_parameters(teacher),
    }


def write_layer_table(setup: DistillationSetup) -> None:
    """With ``teacher_layers: auto``: the knowledge quality of every teacher layer, as a table and a plot."""
    choice = setup.readout.layer_choice
    if choice is None:
        return
    output_dir = setup.config.output_dir
    write_text(os.path.join(output_dir, LAYER_QUALITY_TABLE_FILE), choice.table() + "\n")
    choice.plot(os.path.join(output_dir, LAYER_QUALITY_PLOT_FILE))


def write_card(output_dir: str, **options: Any) -> None:
    """The model card (``README.md``), from the files written above (:func:`hf_pcoh.hub.write_model_card`,
    with its ``repo_id``, ``license`` and ``secrets`` options)."""
    write_model_card(output_dir, **options)
