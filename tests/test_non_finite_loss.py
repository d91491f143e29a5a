"""The non-finite guard: an update whose loss or gradients turn NaN/inf never reaches the weights.

The check runs before the optimizer steps, so 'stop' checkpoints the state before the bad update and a
resume with a lower learning rate trains on; 'skip' drops whole updates, at most max_consecutive_skips in a
row; with two processes, one process's NaN makes both take the same decision; and weights that are NaN/inf
or beyond max_abs_weight are never saved.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_pcoh.config import DistillationConfig
from hf_pcoh.losses import LOSSES, ProjectedMSELoss, register_loss
from hf_pcoh.non_finite import UnusableWeightsError
from hf_pcoh.pipeline import build_setup
from hf_pcoh.trainer import DistillationTrainer, NonFiniteLossError

from tiny_models import MINILM, TINY_BERT


class LossNaNOnSomeCalls(ProjectedMSELoss):
    """Projected MSE that returns NaN on the calls ``nan_on_call`` picks (counted from 1)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__(student_dim, teacher_dim)
        self.calls = 0

    def nan_on_call(self, call: int) -> bool:
        raise NotImplementedError

    def forward(self, student, teacher, mask=None, labels=None):
        self.calls += 1
        value = super().forward(student, teacher, mask, labels)
        return value * float("nan") if self.nan_on_call(self.calls) else value


class LossThatExplodes(LossNaNOnSomeCalls):
    """NaN from the fourth call on (a stand-in for a run that cannot recover)."""

    name = "explodes_after_three_steps"

    def nan_on_call(self, call: int) -> bool:
        return call > 3


class LossNaNOnCallFive(LossNaNOnSomeCalls):
    """The fifth call alone is NaN: one bad micro-batch."""

    name = "nan_on_call_five"

    def nan_on_call(self, call: int) -> bool:
        return call == 5


class LossNaNOnce(ProjectedMSELoss):
    """Projected MSE whose fourth call in a test is NaN, once (a transient glitch, not a diverged state)."""

    name = "nan_once"
    calls = 0  # counted across instances: a resumed trainer's fresh loss does not fire again

    def forward(self, student, teacher, mask=None, labels=None):
        type(self).calls += 1
        value = super().forward(student, teacher, mask, labels)
        return value * float("nan") if type(self).calls == 4 else value


class SteepLoss(ProjectedMSELoss):
    """exp(projected MSE): curved enough that plain SGD with a learning rate of 10 overshoots into overflow
    within a few steps while the weights are still moderate, and trains smoothly at 1."""

    name = "steep_mse"

    def forward(self, student, teacher, mask=None, labels=None):
        return torch.exp(super().forward(student, teacher, mask, labels))


class LossWithOverflowingNorm(ProjectedMSELoss):
    """From the third call on, projected MSE times 1e25: the loss and every gradient element stay finite
    (< 3.4e38), but the sum of the gradients' squares (~1e50) overflows float32, so the total norm is inf."""

    name = "overflowing_gradient_norm"
    calls = 0

    def forward(self, student, teacher, mask=None, labels=None):
        type(self).calls += 1
        value = super().forward(student, teacher, mask, labels)
        return value * 1e25 if type(self).calls > 2 else value


@pytest.fixture()
def test_losses():
    losses = (LossThatExplodes, LossNaNOnCallFive, LossNaNOnce, SteepLoss, LossWithOverflowingNorm)
    LossWithOverflowingNorm.calls = 0
    LossNaNOnce.calls = 0
    for loss in losses:
        register_loss(loss)
    yield
    for loss in losses:
        LOSSES.pop(loss.name)


def trainer_for(output_dir, loss_name: str, policy: str = "stop", **fields) -> DistillationTrainer:
    settings = dict(
        output_dir=str(output_dir), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1}, dataset_name="wordnet_glosses", max_train_samples=32,
        per_device_train_batch_size=8, max_steps=6, save_strategy="no", logging_steps=1, disable_tqdm=True,
        losses=[loss_name], non_finite_loss=policy, max_length=24, learning_rate=1e-3, report_to=[],
    )
    settings.update(fields)
    config = DistillationConfig(**settings)
    setup = build_setup(config)
    return DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                               train_dataset=setup.train_dataset, collator=setup.collator)


class RecordWeights(TrainerCallback):
    """The trainable weights after every optimizer step, by global step (0 = before training)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.after_step = {0: self.snapshot()}

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().clone() for name, value in self.model.state_dict().items()}

    def on_step_end(self, args, state, control, **kwargs):
        self.after_step[state.global_step] = self.snapshot()


def recorded(trainer: DistillationTrainer) -> RecordWeights:
    recorder = RecordWeights(trainer.model)
    trainer.add_callback(recorder)
    return recorder


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


def checkpoint_weights(output_dir, loss_name: str, checkpoint) -> dict[str, torch.Tensor]:
    fresh = trainer_for(output_dir, loss_name)
    fresh._load_from_checkpoint(str(checkpoint))
    return fresh.model.state_dict()


def test_nan_stops_the_run_naming_the_term_and_step_after_saving_the_last_good_state(tmp_path, test_losses, minilm_path) -> None:
    trainer = trainer_for(tmp_path, LossThatExplodes.name, "stop")
    weights = recorded(trainer)
    with pytest.raises(NonFiniteLossError, match=r"explodes_after_three_steps\[slast>tlast\] became NaN/inf at step 4"):
        trainer.train()
    checkpoint = tmp_path / "checkpoint-4"  # update 4 counted as skipped: a resume goes on with batch 5
    assert {"model.safetensors", "distillation_heads.safetensors", "optimizer.pt"} <= set(os.listdir(checkpoint))
    assert_same_weights(checkpoint_weights(tmp_path / "fresh", LossThatExplodes.name, checkpoint), weights.after_step[3])
    assert_same_weights(trainer.model.state_dict(), weights.after_step[3])  # the bad update never happened


def test_after_a_transient_nan_the_stop_checkpoint_resumes_with_a_lower_learning_rate(tmp_path, test_losses, minilm_path) -> None:
    fields = dict(lr_scheduler_type="constant", max_steps=8)
    trainer = trainer_for(tmp_path, LossNaNOnce.name, learning_rate=1e-3, **fields)
    weights = recorded(trainer)
    with pytest.raises(NonFiniteLossError, match=r"nan_once\[slast>tlast\] became NaN/inf at step 4\. That update was not applied"):
        trainer.train()
    checkpoint = tmp_path / "checkpoint-4"
    saved = checkpoint_weights(tmp_path / "fresh", LossNaNOnce.name, checkpoint)
    assert_same_weights(saved, weights.after_step[3])

    resumed = trainer_for(tmp_path, LossNaNOnce.name, learning_rate=1e-4, **fields)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    log = [entry for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 4]
    assert [entry["step"] for entry in log] == [5, 6, 7, 8]  # the bad batch is not replayed
    assert all(entry["learning_rate"] == 1e-4 for entry in log)  # the new rate, not the checkpoint's
    assert all(np.isfinite(entry["loss"]) for entry in log)


def test_a_diverging_learning_rate_stops_before_the_non_finite_update_and_resumes_from_before_the_divergence(
    tmp_path, test_losses, minilm_path
) -> None:
    """SGD at 10 on exp(MSE): the loss rises (update 1 overshoots), update 2 blows the weights up, and update 3's
    loss is NaN. The stop checkpoint holds exactly the finite weights before update 3; those had already
    diverged, so resuming from them stops at once, and the periodic checkpoint before the rise trains on at 0.01."""
    fields = dict(optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", max_steps=12, save_strategy="steps",
                  save_steps=1)
    trainer = trainer_for(tmp_path, SteepLoss.name, learning_rate=10.0, **fields)
    weights = recorded(trainer)
    with pytest.raises(NonFiniteLossError, match=r"steep_mse\[slast>tlast\] became NaN/inf at step 3\. That update was not applied"):
        trainer.train()
    saved = checkpoint_weights(tmp_path / "fresh", SteepLoss.name, tmp_path / "checkpoint-3")
    assert all(torch.isfinite(value).all() for value in saved.values())
    assert_same_weights(saved, weights.after_step[2])

    again = trainer_for(tmp_path, SteepLoss.name, learning_rate=0.01, **fields)
    with pytest.raises(NonFiniteLossError, match="if the loss is NaN again at once, the weights had already diverged"):
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))

    resumed = trainer_for(tmp_path, SteepLoss.name, learning_rate=0.01, **fields)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    log = [entry for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 1]
    assert [entry["step"] for entry in log] == list(range(2, 13))
    assert all(entry["learning_rate"] == 0.01 for entry in log)
    assert all(np.isfinite(entry["loss"]) for entry in log)
    assert all(torch.isfinite(value).all() for value in resumed.model.state_dict().values())


def test_non_finite_gradients_with_a_finite_loss_stop_the_run_too(tmp_path, test_losses, minilm_path) -> None:
    trainer = trainer_for(tmp_path, SteepLoss.name, learning_rate=100.0, optim="sgd", max_grad_norm=0.0,
                          lr_scheduler_type="constant", max_steps=12)
    # Which comes first depends on the versions (transformers 5.25's norm overflows before any element does).
    with pytest.raises(NonFiniteLossError, match=r"(the gradient of \S+ and \d+ more|the total gradient norm) "
                                                 r"became NaN/inf.* at step 2"):
        trainer.train()
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["no-clipping", "clipping"])
def test_an_overflowing_gradient_norm_stops_the_run_though_every_gradient_is_finite(
    tmp_path, test_losses, minilm_path, max_grad_norm
) -> None:
    """The update is judged as a whole: a total norm of inf is a bad update, whatever each element says."""
    trainer = trainer_for(tmp_path, LossWithOverflowingNorm.name, max_grad_norm=max_grad_norm, max_steps=6)
    weights = recorded(trainer)
    with pytest.raises(NonFiniteLossError, match=r"the total gradient norm became NaN/inf \(each gradient element "
                                                 r"is finite.*\) at step 3"):
        trainer.train()
    assert_same_weights(checkpoint_weights(tmp_path / "fresh", LossWithOverflowingNorm.name, tmp_path / "checkpoint-3"),
                        weights.after_step[2])


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["no-clipping", "clipping"])
def test_skip_drops_updates_whose_gradient_norm_overflows(tmp_path, test_losses, minilm_path, max_grad_norm) -> None:
    trainer = trainer_for(tmp_path, LossWithOverflowingNorm.name, "skip", max_grad_norm=max_grad_norm, max_steps=5,
                          max_consecutive_skips=5)
    weights = recorded(trainer)
    trainer.train()
    assert trainer.state.global_step == 5
    assert_same_weights(weights.after_step[5], weights.after_step[2])  # updates 3, 4 and 5 were all dropped
    assert all(torch.isfinite(value).all() for value in weights.after_step[5].values())


def test_the_guard_names_an_overflowed_norm_when_no_element_is_bad() -> None:
    from hf_pcoh.non_finite import NonFiniteGuard

    guard = NonFiniteGuard()
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), 3e38)
    model.bias.grad = torch.zeros(2)
    guard.record_gradient_norm(torch.linalg.vector_norm(model.weight.grad))  # inf: 4 * (3e38)^2 overflows
    assert guard.check_update(model).startswith("the total gradient norm became NaN/inf")
    guard.record_gradient_norm(float(torch.linalg.vector_norm(model.weight.grad.double())))  # finite in float64
    assert guard.check_update(model) is None


def test_the_guard_reads_the_trainers_gradient_norm_and_scans_gradients_only_when_it_is_not_finite(
    tmp_path, test_losses, minilm_path, monkeypatch
) -> None:
    """A finite clipping norm means finite gradients: no second pass over them. The trainer hands the guard
    its norm at every update; the scan that names parameters runs only for a non-finite (or missing) norm."""
    from hf_pcoh import non_finite

    scans: list[int] = []
    scan = non_finite.non_finite_gradients
    monkeypatch.setattr(non_finite, "non_finite_gradients", lambda model: scans.append(1) or scan(model))
    trainer = trainer_for(tmp_path, "projected_mse", max_steps=3, max_grad_norm=1.0)
    norms: list[float | None] = []
    record = trainer.non_finite_guard.record_gradient_norm
    trainer.non_finite_guard.record_gradient_norm = lambda norm: norms.append(norm) or record(norm)
    trainer.train()
    assert len(norms) == 3 and all(np.isfinite(float(norm)) for norm in norms) and scans == []

    guard = non_finite.NonFiniteGuard()
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.tensor([[1.0, float("nan")], [0.0, 0.0]])
    model.bias.grad = torch.zeros(2)
    guard.record_gradient_norm(torch.tensor(float("nan")))
    assert guard.check_update(model) == "the gradient of weight became NaN/inf"
    assert guard.check_update(model) == "the gradient of weight became NaN/inf"  # no norm given: the scan decides
    guard.record_gradient_norm(3.0)
    model.weight.grad = torch.ones(2, 2)
    assert guard.check_update(model) is None and len(scans) == 2


def test_skip_policy_drops_bad_updates_and_finishes_with_finite_weights(tmp_path, test_losses, minilm_path) -> None:
    trainer = trainer_for(tmp_path, LossThatExplodes.name, "skip", max_steps=5, max_consecutive_skips=2)
    weights = recorded(trainer)
    trainer.train()
    assert trainer.state.global_step == 5
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert np.isfinite(losses).all()  # the Trainer's own NaN filter keeps the logged curve readable
    assert any(not torch.equal(weights.after_step[0][key], weights.after_step[3][key]) for key in weights.after_step[0])
    assert_same_weights(weights.after_step[5], weights.after_step[3])  # steps 4 and 5 were skipped


def test_skip_policy_stops_after_max_consecutive_skips(tmp_path, test_losses, minilm_path) -> None:
    trainer = trainer_for(tmp_path, LossThatExplodes.name, "skip", max_consecutive_skips=2)
    weights = recorded(trainer)
    with pytest.raises(NonFiniteLossError, match=r"at step 6 after 2 skipped updates in a row \(max_consecutive_skips=2\)"):
        trainer.train()
    # updates 4, 5 and 6 were not applied: checkpoint-6 holds the weights after step 3
    assert_same_weights(checkpoint_weights(tmp_path / "fresh", LossThatExplodes.name, tmp_path / "checkpoint-6"),
                        weights.after_step[3])


def test_skip_drops_the_whole_gradient_accumulation_window(tmp_path, test_losses, minilm_path) -> None:
    """Micro-batch 5 is the first half of update 3 (2 micro-batches each): update 3 is skipped as a whole."""
    trainer = trainer_for(tmp_path, LossNaNOnCallFive.name, "skip", gradient_accumulation_steps=2, max_steps=4,
                          max_train_samples=64)
    weights = recorded(trainer)
    trainer.train()
    assert trainer.state.global_step == 4
    assert_same_weights(weights.after_step[3], weights.after_step[2])
    assert any(not torch.equal(weights.after_step[4][key], weights.after_step[3][key]) for key in weights.after_step[3])


def test_weights_beyond_max_abs_weight_are_never_saved(tmp_path, test_losses, minilm_path) -> None:
    trainer = trainer_for(tmp_path, SteepLoss.name, max_steps=1, max_abs_weight=1e4)
    trainer.train()
    with torch.no_grad():
        next(trainer.model.student.parameters())[0, 0] = 5e4
    with pytest.raises(UnusableWeightsError, match=r"max \|w\| = 5e\+04 in student\.\S+ exceeds max_abs_weight=10000"):
        trainer.save_model()
    with torch.no_grad():
        next(trainer.model.student.parameters())[0, 0] = float("nan")
    with pytest.raises(UnusableWeightsError, match=r"holds NaN/inf values; nothing was saved to"):
        trainer.save_model()
    assert not (tmp_path / "model.safetensors").exists()


class LossNaNOnRankOne(ProjectedMSELoss):
    """Projected MSE whose third value is NaN on process 1 only, with finite gradients (the NaN is a constant
    added to the loss): only the shared flag can tell process 0 that the update is bad."""

    name = "nan_on_rank_one"

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__(student_dim, teacher_dim)
        self.calls = 0

    def forward(self, student, teacher, mask=None, labels=None):
        self.calls += 1
        value = super().forward(student, teacher, mask, labels)
        if self.calls == 3 and torch.distributed.get_rank() == 1:
            return value + float("nan") * value.detach()
        return value


def two_process_worker(rank: int, port: int, policy: str, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    torch.set_num_threads(1)
    register_loss(LossNaNOnRankOne)
    trainer = trainer_for(os.path.join(folder, "run"), LossNaNOnRankOne.name, policy, max_steps=4, use_cpu=True,
                          ddp_backend="gloo", ddp_find_unused_parameters=True)
    try:
        trainer.train()
        outcome = "finished"
    except NonFiniteLossError as error:
        outcome = str(error)
    weights = {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}
    torch.save({"outcome": outcome, "global_step": trainer.state.global_step, "weights": weights},
               os.path.join(folder, f"rank{rank}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two gloo processes, each building a tiny run
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_two_processes_take_the_same_decision_when_only_one_sees_a_nan(policy, minilm_path) -> None:
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        context = mp.start_processes(two_process_worker, args=(port, policy, folder), nprocs=2, start_method="spawn",
                                     join=False)
        deadline = time.monotonic() + 300
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the two gloo processes did not finish within 300 s (a process waited for the other)")
        results = [torch.load(os.path.join(folder, f"rank{rank}.pt")) for rank in range(2)]
        saved = sorted(os.listdir(os.path.join(folder, "run")))
    if policy == "skip":
        assert [result["outcome"] for result in results] == ["finished", "finished"]
        assert [result["global_step"] for result in results] == [4, 4]
    else:
        assert "the loss of another process became NaN/inf at step 3" in results[0]["outcome"]
        assert "nan_on_rank_one[slast>tlast] became NaN/inf at step 3" in results[1]["outcome"]
        assert [result["global_step"] for result in results] == [3, 3]
        assert "checkpoint-3" in saved
    # the same decision on both: identical weights (a process that stepped alone would have drifted apart)
    assert_same_weights(results[1]["weights"], results[0]["weights"])


def test_the_stop_message_names_the_earlier_checkpoint_to_fall_back_to(tmp_path, test_losses, minilm_path) -> None:
    """If the stop checkpoint's weights had already diverged, the message names the checkpoint before it."""
    trainer = trainer_for(tmp_path, LossThatExplodes.name, save_strategy="steps", save_steps=2)
    with pytest.raises(NonFiniteLossError) as stopped:
        trainer.train()
    message = str(stopped.value)
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-4'}" in message
    assert f"resume from the earlier checkpoint {tmp_path / 'checkpoint-2'}" in message
    from hf_pcoh.checkpoints import earlier_checkpoint_advice

    assert "train again from the start" in earlier_checkpoint_advice(str(tmp_path / "checkpoint-2"))
