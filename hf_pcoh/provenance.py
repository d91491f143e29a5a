"""What a run records about itself beside the student: ``distillation_config.json`` (recipe, teacher, student,
data, terms, embedding, layer choice, the trainer's last evaluation), the layer-quality table and plot of
``teacher_layers: auto``, and the model card built from those files.

Both :func:`hf_pcoh.run_distillation` and ``DistillationTrainer.create_model_card`` (``trainer.push_to_hub()``,
:mod:`hf_pcoh.trainer_hub`) write them here, from the same things: the teacher, student and data as the trainer
received them (:mod:`hf_pcoh.run_sources`) and the trainer's log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .artifacts import DISTILLATION_CONFIG_FILE, LAYER_QUALITY_PLOT_FILE, LAYER_QUALITY_TABLE_FILE, write_json, write_text
from .config import DistillationConfig
from .data import is_streamed
from .distillation_model import DistillationTerm
from .hub import write_model_card
from .models import count_parameters
from .run_sources import HUB, LOCAL, PRECOMPUTED, ModelSource, RunSources, received_sources
from .setup import DistillationSetup
from .version import __version__

# The Trainer's timing entries of an evaluation log, which say nothing of the student.
EVAL_TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")


def write_provenance(setup: DistillationSetup, terms: Sequence[DistillationTerm], sources: RunSources | None = None,
                     log_history: Sequence[Mapping[str, Any]] = ()) -> None:
    write_json(os.path.join(setup.config.output_dir, DISTILLATION_CONFIG_FILE),
               describe_run(setup, terms, sources, log_history))


def describe_run(setup: DistillationSetup, terms: Sequence[DistillationTerm], sources: RunSources | None = None,
                 log_history: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The provenance written to ``distillation_config.json`` (read by hf-pcoh evaluate and the model card).

    ``sources``: where the teacher, student and data came from as the trainer received them (default: as the
    setup's objects say, :func:`~hf_pcoh.run_sources.received_sources`). Its ``recipe`` holds the teacher layers
    that were read: with ``teacher_layers: auto`` the chosen ones (``layer_selection`` says how), so re-measuring the
    saved student reads the same layers without choosing again; models given as folders or Hub ids are named in it,
    and data given as a data set object leaves ``dataset_name`` out (the config's default did not load it).
    ``log_history``: the trainer's log, whose last evaluation is kept as ``training_evaluation``.
    """
    config, readout = setup.config, setup.readout
    if sources is None:
        sources = received_sources(config, setup.student, setup.teacher, setup.train_dataset)
    recipe = recipe_as_received(config, list(readout.teacher_layers), sources)
    return {
        "hf_pcoh_version": __version__,
        "recipe": json.loads(json.dumps(recipe, default=str)),
        "teacher": describe_teacher(config, setup.teacher, sources.teacher),
        "student": describe_model(sources.student, setup.student),
        "dataset": {
            "name": sources.dataset.name,
            "source": "config" if sources.dataset.name else "in-memory",
            "description": sources.dataset.describe(),
            "columns": sources.dataset.columns,
            "train_samples": None if is_streamed(setup.train_dataset) else len(setup.train_dataset),
            "eval_samples": rows_of(setup.eval_dataset),
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
        "training_evaluation": last_evaluation(log_history),
    }


def recipe_as_received(config: DistillationConfig, teacher_layers: list[Any], sources: RunSources) -> dict[str, Any]:
    """The config's recipe, with the teacher layers read, the models given as folders or Hub ids named (a Python
    call gives them to the trainer, not to the config), and no ``dataset_name`` for data given as an object."""
    recipe = {**config.distillation_fields(), "teacher_layers": teacher_layers}
    for role, source in (("teacher", sources.teacher), ("student", sources.student)):
        if source.kind in (HUB, LOCAL) and source.name_or_path:
            recipe.update({f"{role}_model_name_or_path": source.name_or_path, f"{role}_config": None})
    if sources.dataset.name is None:
        recipe.pop("dataset_name", None)
    return recipe


def describe_model(source: ModelSource, model: torch.nn.Module | None) -> dict[str, Any]:
    """A model in ``distillation_config.json``: where it came from (``source``, its name or path, a student's
    ``init``), its architecture and size."""
    description: dict[str, Any] = {"name_or_path": source.name_or_path, "source": source.kind}
    if source.init:
        description["init"] = source.init
    if model is not None and hasattr(model, "config"):
        description.update(model_type=model.config.model_type, parameters=count_parameters(model))
    return description


def describe_teacher(config: DistillationConfig, teacher: torch.nn.Module | None, source: ModelSource) -> dict[str, Any]:
    """The teacher in ``distillation_config.json`` (:func:`describe_model`); with precomputed embeddings (no teacher
    loaded), the column they were read from and the teacher's name when given."""
    if teacher is None and source.kind == PRECOMPUTED:
        column = config.teacher_embedding_column
        return {"name_or_path": config.teacher_model_name_or_path or f"embeddings precomputed in column {column!r}",
                "source": PRECOMPUTED, "embedding_column": column}
    return describe_model(source, teacher)


def rows_of(eval_dataset: Any) -> int:
    """Rows of the evaluation set(s) (a dict of them, as the Trainer takes, counts them all); 0 without one."""
    if eval_dataset is None:
        return 0
    splits = eval_dataset.values() if isinstance(eval_dataset, Mapping) else [eval_dataset]
    return sum(len(split) for split in splits if hasattr(split, "__len__"))


def last_evaluation(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The trainer's last evaluation in its log: the step and epoch, and each ``eval_`` figure it logged (the loss,
    its terms, the agreement metrics) under its name less ``eval_``, timings left out; None when it never evaluated."""
    for entry in reversed(log_history):
        metrics = {key[len("eval_"):]: value for key, value in entry.items()
                   if key.startswith("eval_") and not key.endswith(EVAL_TIMINGS)
                   and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if metrics:
            return {"step": entry.get("step"), "epoch": entry.get("epoch"), "metrics": metrics}
    return None


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
