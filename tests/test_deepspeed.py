"""DeepSpeed ZeRO on 2 gloo processes (DeepSpeed's CPU accelerator): the trainer runs, and the non-finite guard
keeps a NaN update from the weights although DeepSpeed steps inside ``backward``.

accelerate enables DeepSpeed only for accelerator process groups; :func:`deepspeed_on_gloo` lets it take the gloo
group this machine has (the one private hook of these tests, listed in docs/architecture.md). Skipped where
DeepSpeed is not installed (it is in the ``test`` extra).

DeepSpeed's CPU communication builds a C++ op (``deepspeed_shm_comm``) with torch's JIT extension builder, which
holds a ``lock`` file in the build folder while it checks or builds; a run killed inside that window leaves the file,
and every later run waits for it forever. These tests build into their own folder (:func:`own_torch_extensions_dir`)
and spawn their processes with a deadline, so neither an earlier run nor a hang here can stall the suite.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("deepspeed")

from test_non_finite_loss import LossNaNOnce, LossWithOverflowingNorm, RecordWeights  # noqa: E402
from test_scale_out import run_two_processes  # noqa: E402

from hf_pcoh.non_finite import deepspeed_guard_problem  # noqa: E402

STEPS = 6
# Seconds two DeepSpeed processes may take (the first also builds the shm op: about two minutes on 2 cores).
DEADLINE_SECONDS = 900.0


@pytest.fixture(scope="module", autouse=True)
def own_torch_extensions_dir(tmp_path_factory):
    """A torch-extension build folder of this test run only (spawned processes inherit the variable): a ``lock``
    left behind by a killed earlier run cannot make the build wait forever."""
    with pytest.MonkeyPatch.context() as patch:  # monkeypatch itself is per test; this fixture is per module
        patch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch_extensions")))
        yield


def deepspeed_on_gloo(rank: int, world_size: int, port: int, zero_stage: int) -> None:
    """The environment ``accelerate launch`` gives a DeepSpeed process, on a gloo group of CPU processes."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    import hf_pcoh.config_checks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), ACCELERATE_USE_DEEPSPEED="true",
                      ACCELERATE_DEEPSPEED_ZERO_STAGE=str(zero_stage), ACCELERATE_MIXED_PRECISION="no",
                      ACCELERATE_GRADIENT_ACCUMULATION_STEPS="1", ACCELERATE_GRADIENT_CLIPPING="1.0")
    torch.set_num_threads(1)
    # accelerate: no accelerator, no DeepSpeed; here the CPU group stands in for it (private, no public route).
    PartialState._prepare_backend = lambda self, cpu=False, sagemaker_dp=False, backend=None: (
        "gloo", DistributedType.MULTI_CPU)
    hf_pcoh.config_checks.accelerator_available = lambda: True  # keep use_cpu off: DeepSpeed refuses it


def deepspeed_trainer(output_dir: str, policy: str, loss_name: str = LossNaNOnce.name, **fields):
    from hf_pcoh.config import DistillationConfig
    from hf_pcoh.losses import register_loss
    from hf_pcoh.pipeline import build_setup
    from hf_pcoh.trainer import DistillationTrainer

    from tiny_models import MINILM, TINY_BERT

    for loss in (LossNaNOnce, LossWithOverflowingNorm):
        register_loss(loss)
        loss.calls = 0
    settings = dict(
        output_dir=output_dir, teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}, dataset_name="wordnet_glosses",
        max_train_samples=16,
        per_device_train_batch_size=8, max_steps=STEPS, save_strategy="no", logging_steps=1, disable_tqdm=True,
        losses=[loss_name], non_finite_loss=policy, max_length=24, learning_rate=1e-3, report_to=[],
        lr_scheduler_type="constant", use_cpu=False,
    )
    settings.update(fields)
    config = DistillationConfig(**settings)
    setup = build_setup(config)
    return DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                               train_dataset=setup.train_dataset, collator=setup.collator,
                               eval_dataset=setup.eval_dataset if config.eval_strategy != "no" else None)


# (name, non_finite_loss, loss, the first of the loss's calls whose gradients are non-finite: LossNaNOnce's 4th is
# NaN, LossWithOverflowingNorm's 3rd on overflow). The update it falls in is counted from the calls the trainer
# made before training (building may call a loss), so the test does not depend on them.
SCENARIOS = [("skip", "skip", LossNaNOnce, 4), ("stop", "stop", LossNaNOnce, 4),
             ("overflow", "stop", LossWithOverflowingNorm, 3)]


def guard_report(trainer, outcome: str, after: dict, bad: int) -> dict:
    now = trainer.model.state_dict()
    before = after[bad - 1]
    return {
        "outcome": outcome, "steps": sorted(after),
        "bad_update_left_weights": all(torch.equal(after[bad][k], before[k]) for k in before) if bad in after else None,
        "good_update_moved_weights": any(not torch.equal(before[k], after[bad - 2][k]) for k in before),
        "weights_now_are_before_bad": all(torch.equal(now[k], before[k]) for k in before),
        "engine_skipped_steps": trainer.model_wrapped.skipped_steps,
        "final_finite": all(bool(torch.isfinite(value).all()) for value in now.values()),
    }


def guard_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """Each scenario in turn, in the same two processes (a DeepSpeed start costs more than a short run)."""
    from hf_pcoh.non_finite import NonFiniteLossError

    deepspeed_on_gloo(rank, world_size, port, zero_stage=2)
    reports = {}
    for name, policy, loss, first_bad_call in SCENARIOS:
        trainer = deepspeed_trainer(os.path.join(output_dir, name), policy, loss.name)
        bad_step = first_bad_call - loss.calls  # one call per update from here on
        assert trainer.is_deepspeed_enabled and trainer.args.world_size == 2
        recorder = RecordWeights(trainer.model)
        trainer.add_callback(recorder)
        outcome = "finished"
        try:
            trainer.train()
        except NonFiniteLossError as error:
            outcome = str(error)
        reports[name] = {**guard_report(trainer, outcome, recorder.after_step, bad_step), "bad_step": bad_step}
    torch.save(reports, os.path.join(output_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def guard_reports(tmp_path_factory) -> tuple[object, list[dict]]:
    folder = tmp_path_factory.mktemp("deepspeed_guard")
    run_two_processes(guard_worker, str(folder), deadline_seconds=DEADLINE_SECONDS)
    return folder, [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


def test_zero2_skip_leaves_the_weights_of_the_nan_update_untouched_and_trains_on(guard_reports) -> None:
    for reports in guard_reports[1]:
        report = reports["skip"]
        assert report["outcome"] == "finished"
        assert report["steps"] == list(range(STEPS + 1))
        assert report["engine_skipped_steps"] == 1  # DeepSpeed's own overflow check dropped the update
        assert report["bad_update_left_weights"] is True
        assert report["good_update_moved_weights"]  # not a run that never moves
        assert report["final_finite"]


def test_zero2_stop_stops_before_the_nan_update_reaches_the_weights(guard_reports) -> None:
    folder, all_reports = guard_reports
    for reports in all_reports:
        report = reports["stop"]
        bad = report["bad_step"]
        assert f"at step {bad}. That update was not applied" in report["outcome"]
        assert report["steps"] == list(range(bad))  # the updates before it ended; it never did
        assert report["weights_now_are_before_bad"] and report["final_finite"]
    assert (folder / "stop" / f"checkpoint-{all_reports[0]['stop']['bad_step']}").is_dir()


def test_zero2_stop_catches_gradients_that_overflow_under_a_finite_loss(guard_reports) -> None:
    """The loss stays finite, the gradients' total norm does not: only DeepSpeed's verdict can tell."""
    for reports in guard_reports[1]:
        report = reports["overflow"]
        bad = report["bad_step"]
        assert f"the gradients became NaN/inf (DeepSpeed's overflow check) at step {bad}" in report["outcome"]
        assert report["steps"] == list(range(bad)) and report["weights_now_are_before_bad"]


def test_deepspeed_settings_without_an_overflow_check_are_refused_in_one_line() -> None:
    assert deepspeed_guard_problem({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}) is None
    assert deepspeed_guard_problem({"zero_optimization": {"stage": 0}, "fp16": {"enabled": True}}) is None
    assert "zero_stage 1, 2 or 3" in deepspeed_guard_problem({"zero_optimization": {"stage": 0}})
    assert "check_grad_overflow" in deepspeed_guard_problem(
        {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True, "check_grad_overflow": False}})
    assert "compute_grad_norm" in deepspeed_guard_problem({"zero_optimization": {"stage": 1, "compute_grad_norm": False}})


# ---- resume and load_best_model_at_end through the engine's own checkpoints ------------------------------


def whole_student_and_heads(trainer) -> dict[str, torch.Tensor]:
    """The trainable model's whole weights (ZeRO-3 gathers its partitions; a collective)."""
    import deepspeed

    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        return {name: value.detach().float().clone() for name, value in model.named_parameters()
                if value.requires_grad}


class RecordWholeWeights(RecordWeights):
    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.after_step = {}

    def snapshot(self) -> dict[str, torch.Tensor]:
        return whole_student_and_heads(self.trainer)


def resume_worker(rank: int, world_size: int, port: int, output_dir: str, zero_stage: int) -> None:
    deepspeed_on_gloo(rank, world_size, port, zero_stage)
    fields = dict(loss_name="projected_mse", max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="steps",
                  eval_steps=2, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True,
                  max_eval_samples=16, evaluate_after_training=False)
    first = deepspeed_trainer(os.path.join(output_dir, "whole"), "stop", **fields)
    recorder = RecordWholeWeights(first)
    first.add_callback(recorder)
    first.train()
    best = os.path.basename(first.state.best_model_checkpoint)
    loaded_best = whole_student_and_heads(first)
    resumed = deepspeed_trainer(os.path.join(output_dir, "resumed"), "stop",
                                **{**fields, "load_best_model_at_end": False})
    resumed.train(resume_from_checkpoint=os.path.join(output_dir, "whole", "checkpoint-2"))
    after_resume = whole_student_and_heads(resumed)

    def same(a, b):
        return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)

    whole_job = {}
    if zero_stage == 3:  # the whole job: the partitioned student saved whole, the teacher never gathered
        from hf_pcoh.config import DistillationConfig
        from hf_pcoh.pipeline import run_distillation

        from tiny_models import MINILM, TINY_BERT

        job = os.path.join(output_dir, "job")
        run_distillation(DistillationConfig(
            output_dir=job, teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
            student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
            dataset_name="wordnet_glosses", max_train_samples=16, max_eval_samples=16, per_device_train_batch_size=8,
            max_steps=2, save_strategy="no", disable_tqdm=True, losses=["projected_mse"], max_length=24,
            report_to=[], use_cpu=False))
        whole_job = {"ran": True}
    torch.save({"whole_job": whole_job, "best": best, "best_is_step_2": same(loaded_best, recorder.after_step[2]),
                "step_2_differs_from_4": not same(recorder.after_step[2], recorder.after_step[4]),
                "resumed_equals_uninterrupted": same(after_resume, recorder.after_step[4]),
                "names": sorted(after_resume)}, os.path.join(output_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_resume_equals_uninterrupted_and_load_best_loads_an_earlier_checkpoint(tmp_path, zero_stage) -> None:
    run_two_processes(resume_worker, str(tmp_path), zero_stage, deadline_seconds=DEADLINE_SECONDS)
    for rank in range(2):
        report = torch.load(tmp_path / f"rank{rank}.pt")
        assert report["best"] == "checkpoint-2"  # the higher loss: not the last checkpoint
        assert report["step_2_differs_from_4"] and report["best_is_step_2"]
        assert report["resumed_equals_uninterrupted"]
        assert any(name.startswith("heads.") for name in report["names"])  # the heads travel with the engine
    if zero_stage == 3:
        from transformers import AutoModel, BertConfig

        from tiny_models import TINY_BERT

        assert {"model.safetensors", "eval_results.json", "README.md"} <= set(os.listdir(tmp_path / "job"))
        student = AutoModel.from_pretrained(tmp_path / "job")
        assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 1
        evaluation = json.loads((tmp_path / "job" / "eval_results.json").read_text())
        assert 0.0 <= evaluation["student"]["teacher_neighbour_recall@10"] <= 1.0, evaluation
        teacher = AutoModel.from_config(BertConfig(**TINY_BERT))
        assert evaluation["teacher"]["parameters"] == sum(p.numel() for p in teacher.parameters())  # not a partition
