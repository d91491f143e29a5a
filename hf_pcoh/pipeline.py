"""The main job as a function: data -> teacher and student -> train -> save -> measure -> card -> publish.

``scripts/distill.py`` only parses a recipe into a :class:`DistillationConfig` and calls
:func:`run_distillation`, which runs the named steps below in order; :mod:`hf_pcoh.setup` builds
what they work on, and :mod:`hf_pcoh.provenance` writes what the run records about itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from .artifacts import EVAL_RESULTS_FILE, write_json
from .checkpoints import check_checkpoint_files
from .config import DistillationConfig
from .data import first_rows
from .embedding import Embeddings
from .evaluation import compare_teacher_and_student
from .evaluation.language_model import evaluate_language_models
from .hub import publish
from .models import is_causal_lm
from .output_dir import OutputDirClaim, claim_output_dir
from .probe_head import fit_head_by_probe, head_accuracy
from .provenance import write_card, write_layer_table, write_provenance
from .setup import DistillationSetup, build_setup
from .sharded_embedding import sharded_teacher_embeddings
from .sharding import is_sharded_run, whole_model
from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)


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

    The run holds ``output_dir`` throughout (:func:`hf_pcoh.output_dir.claim_output_dir`): one run at a time,
    and a folder that holds a run is only replaced with ``overwrite_output_dir`` (or continued on resume).
    """
    resuming = bool(config.resume_from_checkpoint)
    with claim_output_dir(config.output_dir, resuming, config.overwrite_output_dir, writes=config.should_save,
                          device=config.device) as claim:
        return run_steps(config, claim)


def run_steps(config: DistillationConfig, claim: OutputDirClaim) -> DistillationResult:
    """The steps of :func:`run_distillation`, in ``output_dir`` once it is held."""
    if config.resume_from_checkpoint:
        check_checkpoint_files(config.resume_from_checkpoint)
    setup = build_setup(config)
    # The previous run in output_dir (overwrite_output_dir) goes only once every input is checked.
    trainer, train_metrics = train_student(setup, before_training=claim.clear_previous_run)
    evaluates = config.evaluate_after_training and setup.eval_dataset is not None
    teacher_embeddings = None
    if is_sharded_run(trainer.accelerator):  # FSDP, ZeRO-3: a whole student on the main process (None elsewhere)
        student = save_sharded_student(setup, trainer)
        if evaluates and trainer.teacher is not None:  # the teacher stays sharded: every process embeds a share
            teacher_embeddings = sharded_teacher_embeddings(setup, trainer.teacher, trainer.args.device)
    else:
        student = trainer.accelerator.unwrap_model(trainer.model).student
        if config.fit_head_by_probe:
            fit_probe_head(setup, student)
        save_student(trainer)
    evaluation = None
    if trainer.args.should_save:  # one process writes the run's files
        # The models and data as the trainer received them (setup's, tagged by build_setup), and its log.
        write_provenance(setup, trainer.accelerator.unwrap_model(trainer.model).terms, trainer.run_sources,
                         trainer.state.log_history)
        write_layer_table(setup)
        if evaluates and student is not None:
            evaluation = evaluate_student_against_teacher(setup, student, trainer.args.device,
                                                          teacher_embeddings=teacher_embeddings)
            write_json(os.path.join(config.output_dir, EVAL_RESULTS_FILE), evaluation)
        write_card(config.output_dir)
        publish_if_asked(config)
    return DistillationResult(config.output_dir, train_metrics, evaluation)


# ---- the steps, in the order run_distillation takes them ----------------------------------------------


def train_student(
    setup: DistillationSetup, before_training: Callable[[], None] | None = None
) -> tuple[DistillationTrainer, dict[str, float]]:
    """Train (resuming from ``resume_from_checkpoint`` when given); return the trainer and its metrics.

    ``before_training`` runs once the trainer is built (its checks passed) and before the first step."""
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
        readout=setup.readout,
    )
    if before_training is not None:
        before_training()
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    return trainer, dict(train_output.metrics)


def fit_probe_head(setup: DistillationSetup, student: PreTrainedModel, max_samples: int = 5000) -> None:
    """Fit the student's head by a linear probe on (a sample of) the training split's frozen features."""
    label_column = setup.collator.label_column
    if label_column is None:
        raise ValueError("fit_head_by_probe needs class labels: set label_column")
    sample = first_rows(setup.train_dataset, max_samples)
    fit_head_by_probe(
        student, setup.collator.student_processor, sample[setup.collator.input_column],
        np.asarray(sample[label_column]), setup.modality, max_length=setup.config.max_length,
        device=setup.config.device, seed=setup.config.seed,
    )


def save_student(trainer: DistillationTrainer) -> None:
    """The student as a plain ``transformers`` model, the heads and processors beside it, the trainer state."""
    trainer.save_model()
    trainer.save_state()


def save_sharded_student(setup: DistillationSetup, trainer: DistillationTrainer) -> PreTrainedModel | None:
    """:func:`fit_probe_head` and :func:`save_student` when FSDP or ZeRO-3 shard the models across processes.

    Every process takes part in gathering a whole copy of the trained student (with the heads' state); the main
    process fits the probe head on it and saves it, as ``save_model`` would have. The teacher is never gathered:
    it is what did not fit one device (its evaluation embeddings: :mod:`hf_pcoh.sharded_embedding`). Returns the
    student on the main process, None elsewhere.
    """
    config = setup.config
    distillation_model = trainer.accelerator.unwrap_model(trainer.model)
    student, state_dict = whole_model(trainer.accelerator, trainer.model_wrapped, distillation_model.student, "student.")
    if student is not None:
        if config.fit_head_by_probe:
            fit_probe_head(setup, student)
        state_dict.update({f"student.{key}": value for key, value in student.state_dict().items()})
        trainer._save(config.output_dir, state_dict=state_dict)
    trainer.save_state()
    return student


# Held-out texts whose greedy continuations are compared with the teacher's (generation costs the most).
LM_GENERATION_TEXTS = 200


def evaluate_student_against_teacher(
    setup: DistillationSetup, student: PreTrainedModel, device: Any, teacher: torch.nn.Module | None = None,
    teacher_embeddings: dict[str, Embeddings] | None = None,
) -> dict[str, Any]:
    """The trained student beside its teacher (``setup.teacher`` unless another copy is given) on the held-out
    split (and its probe head's accuracy). With ``teacher_embeddings`` (a sharded teacher's,
    :func:`~hf_pcoh.sharded_embedding.sharded_teacher_embeddings`) the teacher is counted but not run, and a
    language model's metrics, which run it on this process, are left out."""
    config = setup.config
    evaluation = compare_teacher_and_student(
        teacher=setup.teacher if teacher is None else teacher,
        student=student,
        teacher_processor=setup.collator.teacher_processor,
        student_processor=setup.collator.student_processor,
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        input_column=setup.collator.input_column,
        teacher_input_column=setup.collator.teacher_input_column,
        teacher_embedding_column=setup.collator.teacher_embedding_column,
        teacher_embeddings=teacher_embeddings,
        label_column=setup.collator.label_column,
        modality=setup.modality,
        student_extractor=setup.readout.student_embedding,
        teacher_extractor=setup.readout.teacher_embedding,
        max_length=config.max_length,
        device=device,
        dataset_name=config.dataset_name,
    )
    teacher = setup.teacher if teacher is None else teacher
    language_model = setup.collator.next_token_labels and teacher is not None and is_causal_lm(teacher)
    if language_model and teacher_embeddings is not None:
        logger.warning("the teacher is sharded across processes: the language-model metrics, which run it whole on one "
                       "process, are not measured (hf_pcoh.evaluation.language_model.evaluate_language_models measures "
                       "them where it fits)")
    elif language_model:
        # A language model is measured as one too (perplexity, KL, next-token and greedy agreement), beside the
        # embedding metrics of its pooled features; the card and the summary line report both.
        texts = list(setup.eval_dataset[setup.collator.input_column])
        evaluation["language_model"] = evaluate_language_models(
            teacher, student, setup.collator.student_processor, texts, max_length=config.max_length,
            max_generation_texts=min(len(texts), LM_GENERATION_TEXTS))
    if config.fit_head_by_probe:
        evaluation["student"]["probe_head_accuracy"] = head_accuracy(
            student, setup.collator.student_processor, setup.eval_dataset[setup.collator.input_column],
            np.asarray(setup.eval_dataset[setup.collator.label_column]), setup.modality,
            max_length=config.max_length, device=device,
        )
    return evaluation


def publish_if_asked(config: DistillationConfig) -> None:
    if config.push_to_hub:
        publish(config.output_dir, config.hub_model_id, private=bool(config.hub_private_repo), token=config.hub_token,
                max_abs_weight=config.max_abs_weight)
