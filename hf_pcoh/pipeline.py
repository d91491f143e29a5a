"""The main job as a function: data -> teacher and student -> train -> save -> measure -> card -> publish.

``scripts/distill.py`` only parses a recipe into a :class:`DistillationConfig` and calls
:func:`run_distillation`, which runs the named steps below in order; :mod:`hf_pcoh.setup` builds
what they work on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedModel

from . import __version__
from .artifacts import (
    DISTILLATION_CONFIG_FILE,
    EVAL_RESULTS_FILE,
    LAYER_QUALITY_PLOT_FILE,
    LAYER_QUALITY_TABLE_FILE,
    write_json,
)
from .config import DistillationConfig
from .evaluation import compare_teacher_and_student
from .hub import publish, write_model_card
from .models import count_parameters
from .probe_head import fit_head_by_probe, head_accuracy
from .setup import DistillationSetup, build_setup, embedding_extractors, prepare_splits
from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)

# Names this module has always offered to tests, scripts and tooling, though they now live elsewhere.
__all__ = [
    "DISTILLATION_CONFIG_FILE",
    "EVAL_RESULTS_FILE",
    "DistillationResult",
    "DistillationSetup",
    "build_setup",
    "embedding_extractors",
    "prepare_splits",
    "run_distillation",
    "write_json",
]


@dataclass
class DistillationResult:
    output_dir: str
    train_metrics: dict[str, float]
    evaluation: dict[str, Any] | None


def run_distillation(config: DistillationConfig) -> DistillationResult:
    """Distil, save the student to ``config.output_dir``, measure it against the teacher, write its card.

    With ``push_to_hub`` (and ``hub_model_id``, ``hub_private_repo``, ``hub_token``: the Trainer's own Hub
    options) the finished folder is published by :func:`hf_pcoh.hub.publish` once everything is written,
    rather than by the Trainer at every save: the card needs the evaluation, and an offline or
    token-less machine must still end with a complete folder.
    """
    setup = build_setup(config)
    trainer, train_metrics = train_student(setup)
    student = trainer.accelerator.unwrap_model(trainer.model).student
    if config.fit_head_by_probe:
        fit_probe_head(setup, student)
    save_student(trainer)
    evaluation = None
    if trainer.args.should_save:  # one process writes the run's files
        write_provenance(setup, trainer)
        write_layer_table(setup)
        if config.evaluate_after_training and setup.eval_dataset is not None:
            evaluation = evaluate_student_against_teacher(setup, student, trainer.args.device)
            write_json(os.path.join(config.output_dir, EVAL_RESULTS_FILE), evaluation)
        write_card(config.output_dir)
        publish_if_asked(config)
    return DistillationResult(config.output_dir, train_metrics, evaluation)


# ---- the steps, in the order run_distillation takes them ----------------------------------------------


def train_student(setup: DistillationSetup) -> tuple[DistillationTrainer, dict[str, float]]:
    """Train (resuming from ``resume_from_checkpoint`` when given); return the trainer and its metrics."""
    config = setup.config
    # The Trainer would push at every save; publish_if_asked pushes the finished folder once instead.
    trainer_args = dataclasses.replace(config, push_to_hub=False) if config.push_to_hub else config
    trainer = DistillationTrainer(
        student=setup.student,
        teacher=setup.teacher,
        args=trainer_args,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset if config.eval_strategy != "no" else None,
        collator=setup.collator,
    )
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    return trainer, dict(train_output.metrics)


def fit_probe_head(setup: DistillationSetup, student: PreTrainedModel, max_samples: int = 5000) -> None:
    """Fit the student's head by a linear probe on (a sample of) the training split's frozen features."""
    label_column = setup.collator.label_column
    if label_column is None:
        raise ValueError("fit_head_by_probe needs class labels: set label_column")
    sample = setup.train_dataset.select(range(min(max_samples, len(setup.train_dataset))))
    fit_head_by_probe(
        student, setup.collator.student_processor, sample[setup.collator.input_column],
        np.asarray(sample[label_column]), setup.modality, max_length=setup.config.max_length,
        device=setup.config.device, seed=setup.config.seed,
    )


def save_student(trainer: DistillationTrainer) -> None:
    """The student as a plain ``transformers`` model, the heads and processors beside it, the trainer state."""
    trainer.save_model()
    trainer.save_state()


def write_provenance(setup: DistillationSetup, trainer: DistillationTrainer) -> None:
    write_json(os.path.join(setup.config.output_dir, DISTILLATION_CONFIG_FILE), describe_run(setup, trainer))


def describe_run(setup: DistillationSetup, trainer: DistillationTrainer) -> dict[str, Any]:
    """The provenance written to ``distillation_config.json`` (read by evaluate.py and the model card)."""
    config = setup.config
    student_extractor, teacher_extractor = embedding_extractors(config)
    recipe = {key: value for key, value in config.distillation_fields().items()}
    return {
        "hf_pcoh_version": __version__,
        "recipe": json.loads(json.dumps(recipe, default=str)),
        "teacher": {
            "name_or_path": config.teacher_model_name_or_path or "config",
            "model_type": setup.teacher.config.model_type,
            "parameters": count_parameters(setup.teacher),
        },
        "student": {"model_type": setup.student.config.model_type, "parameters": count_parameters(setup.student)},
        "dataset": {
            "name": config.dataset_name,
            "train_samples": len(setup.train_dataset),
            "eval_samples": len(setup.eval_dataset) if setup.eval_dataset is not None else 0,
            ("image_column" if setup.modality == "vision" else "text_column"): setup.collator.input_column,
            "label_column": setup.collator.label_column,
        },
        "terms": [
            {
                "student_layer": config.student_layers[term.pair_index],
                "teacher_layer": config.teacher_layers[term.pair_index],
                "loss": term.key.split("_", 1)[1],
                "weight": term.weight,
            }
            for term in trainer.model.terms
        ],
        "losses": list(config.losses),
        "embedding": {
            "student_layer": student_extractor.layer,
            "teacher_layer": teacher_extractor.layer,
            "pooling": student_extractor.pooling,
            "teacher_pooling": teacher_extractor.pooling,
        },
        "layer_selection": setup.extra["layer_choice"].to_dict() if "layer_choice" in setup.extra else None,
        "modality": setup.modality,
        "task": "image-feature-extraction" if setup.modality == "vision" else "feature-extraction",
    }


def write_layer_table(setup: DistillationSetup) -> None:
    """With ``teacher_layers: auto``: the knowledge quality of every teacher layer, as a table and a plot."""
    choice = setup.extra.get("layer_choice")
    if choice is None:
        return
    output_dir = setup.config.output_dir
    with open(os.path.join(output_dir, LAYER_QUALITY_TABLE_FILE), "w", encoding="utf-8") as stream:
        stream.write(choice.table() + "\n")
    choice.plot(os.path.join(output_dir, LAYER_QUALITY_PLOT_FILE))


def evaluate_student_against_teacher(setup: DistillationSetup, student: PreTrainedModel, device: Any) -> dict[str, Any]:
    """The trained student beside its teacher on the held-out split (and its probe head's accuracy)."""
    config = setup.config
    student_extractor, teacher_extractor = embedding_extractors(config)
    evaluation = compare_teacher_and_student(
        teacher=setup.teacher,
        student=student,
        teacher_processor=setup.collator.teacher_processor,
        student_processor=setup.collator.student_processor,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        input_column=setup.collator.input_column,
        label_column=setup.collator.label_column,
        modality=setup.modality,
        student_extractor=student_extractor,
        teacher_extractor=teacher_extractor,
        max_length=config.max_length,
        device=device,
        dataset_name=config.dataset_name,
    )
    if config.fit_head_by_probe:
        evaluation["student"]["probe_head_accuracy"] = head_accuracy(
            student, setup.collator.student_processor, setup.eval_dataset[setup.collator.input_column],
            np.asarray(setup.eval_dataset[setup.collator.label_column]), setup.modality,
            max_length=config.max_length, device=device,
        )
    return evaluation


def write_card(output_dir: str) -> None:
    """The model card, from the files written above."""
    write_model_card(output_dir)


def publish_if_asked(config: DistillationConfig) -> None:
    if config.push_to_hub:
        publish(config.output_dir, config.hub_model_id, private=bool(config.hub_private_repo), token=config.hub_token)
