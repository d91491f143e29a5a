"""The NaN guard: a loss that turns NaN stops the run with a checkpoint of the last good state, or is skipped."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hf_pcoh.config import DistillationConfig
from hf_pcoh.losses import LOSSES, ProjectedMSELoss, register_loss
from hf_pcoh.pipeline import build_setup
from hf_pcoh.trainer import DistillationTrainer, NonFiniteLossError

from tiny_models import MINILM, TINY_BERT


class LossThatExplodes(ProjectedMSELoss):
    """Projected MSE that returns NaN from its fourth call on (a stand-in for a diverging run)."""

    name = "explodes_after_three_steps"

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__(student_dim, teacher_dim)
        self.calls = 0

    def forward(self, student, teacher, mask=None, labels=None):
        self.calls += 1
        value = super().forward(student, teacher, mask, labels)
        return value * float("nan") if self.calls > 3 else value


@pytest.fixture()
def exploding_loss():
    register_loss(LossThatExplodes)
    yield LossThatExplodes.name
    LOSSES.pop(LossThatExplodes.name)


def trainer_for(output_dir, loss_name: str, policy: str) -> DistillationTrainer:
    config = DistillationConfig(
        output_dir=str(output_dir), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1}, dataset_name="wordnet_glosses", max_train_samples=32,
        per_device_train_batch_size=8, max_steps=6, save_strategy="no", logging_steps=1, disable_tqdm=True,
        losses=[loss_name], non_finite_loss=policy, max_length=24, learning_rate=1e-3,
    )
    setup = build_setup(config)
    return DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                               train_dataset=setup.train_dataset, collator=setup.collator)


def test_nan_stops_the_run_naming_the_term_and_step_after_saving_the_last_good_state(tmp_path, exploding_loss, minilm_path) -> None:
    trainer = trainer_for(tmp_path, exploding_loss, "stop")
    with pytest.raises(NonFiniteLossError, match=r"explodes_after_three_steps\[slast>tlast\] became NaN/inf at step 4"):
        trainer.train()
    checkpoint = tmp_path / "checkpoint-3"
    assert {"model.safetensors", "distillation_heads.safetensors", "optimizer.pt"} <= set(os.listdir(checkpoint))
    for parameter in trainer.model.parameters():
        assert torch.isfinite(parameter).all()
    # the checkpoint holds the state after step 3: resuming from it restores finite weights equal to the live ones
    live = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    fresh = trainer_for(tmp_path / "fresh", exploding_loss, "stop")
    fresh._load_from_checkpoint(str(checkpoint))
    for key, value in fresh.model.state_dict().items():
        torch.testing.assert_close(value, live[key], msg=key)


def test_skip_policy_drops_bad_batches_and_finishes_with_finite_weights(tmp_path, exploding_loss, minilm_path) -> None:
    trainer = trainer_for(tmp_path, exploding_loss, "skip")
    before = {k: v.clone() for k, v in trainer.model.student.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 6
    student = trainer.model.student.state_dict()
    assert all(torch.isfinite(value).all() for value in student.values())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert np.isfinite(losses).all()  # the Trainer's own NaN filter keeps the logged curve readable
    assert any(not torch.equal(before[key], student[key]) for key in before)  # the first 3 steps did train
