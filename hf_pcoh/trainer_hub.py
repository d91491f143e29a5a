"""``DistillationTrainer``'s model card and ``push_to_hub``, the way ``hf-pcoh publish`` writes and sends them.

:func:`write_trainer_card` records the run as the trainer received it (``distillation_config.json``: the teacher,
student and data of :attr:`DistillationTrainer.run_sources`, and the last evaluation in its log) and writes the
card from that record, as :func:`hf_pcoh.run_distillation` does: one path for a Python call and for the command
line. :func:`push_with_card` saves the student, writes the card, then uploads the folder in one commit
(:func:`hf_pcoh.hub.push_saved_folder`), so that a push that cannot happen (offline mode, no token, no permission)
leaves the folder complete and fails in one line (:class:`hf_pcoh.errors.PublishError`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .frozen_teacher import uncut_teacher
from .hub import PublishPlan, push_saved_folder
from .provenance import write_card, write_provenance
from .setup import DistillationSetup

if TYPE_CHECKING:
    from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)


def trainer_setup(trainer: DistillationTrainer) -> DistillationSetup:
    """What the trainer trains, as a setup: its config, models (the teacher whole again), collator, data, readout."""
    collator = trainer.distillation_collator
    student = trainer.accelerator.unwrap_model(trainer.model).student
    teacher = None if trainer.teacher is None else uncut_teacher(trainer.accelerator.unwrap_model(trainer.teacher))
    return DistillationSetup(trainer.args, teacher, student, collator, trainer.train_dataset, trainer.eval_dataset,
                             collator.modality, trainer.readout)


def repo_id_of(trainer: DistillationTrainer) -> str:
    """The repo the trainer pushes to: the one it created (``push_to_hub=True``), ``hub_model_id``, else the output
    folder's name (under the token's owner), as the Trainer names it."""
    return trainer.hub_model_id or trainer.args.hub_model_id or Path(trainer.args.output_dir).absolute().name


def write_trainer_card(trainer: DistillationTrainer, license: str | None = None) -> None:
    """``distillation_config.json`` from what the trainer received and logged, then the card (``README.md``) from it;
    on the main process only."""
    if not trainer.is_world_process_zero():
        return
    setup = trainer_setup(trainer)
    write_provenance(setup, trainer.accelerator.unwrap_model(trainer.model).terms, trainer.run_sources,
                     trainer.state.log_history)
    write_card(trainer.args.output_dir, repo_id=repo_id_of(trainer), license=license or "apache-2.0",
               secrets=(trainer.args.hub_token,))


def push_with_card(
    trainer: DistillationTrainer, commit_message: str | None = None, blocking: bool = True, token: str | None = None,
    revision: str | None = None, private: bool | None = None, license: str | None = None,
) -> PublishPlan | None:
    """Save the student, write the card, upload the folder (the main process; None elsewhere). The upload always
    completes before this returns (``blocking=False`` is not supported: a failure must reach the caller)."""
    trainer.callback_handler.on_push_begin(trainer.args, trainer.state, trainer.control)
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    if not blocking:
        logger.info("push_to_hub(blocking=False): hf_pcoh uploads before returning, so that a failed upload is reported")
    trainer.create_model_card(license=license)
    trainer._finish_current_push()  # a checkpoint pushed during training (hub_strategy) is sent first
    private = trainer.args.hub_private_repo if private is None else private
    return push_saved_folder(
        os.fspath(trainer.args.output_dir), repo_id_of(trainer), private=bool(private),
        token=token if token is not None else trainer.args.hub_token, commit_message=commit_message,
        revision=revision or trainer.args.hub_revision,
    )

