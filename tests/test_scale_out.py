"""Training across processes, on CPU: 2 gloo processes with tiny models.

The teacher is prepared by the accelerator (FSDP2 shards it like the student), two FSDP2 processes train
like one process with the doubled batch and are evaluated like one process without gathering the teacher
(its embeddings computed sharded), per-term logs are averaged over processes, the teacher cache is
computed half by each process and merged into the one-process cache; and gradient checkpointing reaches the student.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from hf_pcoh.config import DistillationConfig
from hf_pcoh.pipeline import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT

PER_PROCESS_BATCH = 8
# Dropout off: one process and two must draw the same computation.
STUDENT = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32, "hidden_dropout_prob": 0.0,
           "attention_probs_dropout_prob": 0.0}


def run_config(output_dir: str, **fields) -> DistillationConfig:
    """Every step sees the whole training set (one global batch), so the batch split cannot change the loss."""
    values = dict(
        output_dir=output_dir, teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM, student_config=STUDENT,
        dataset_name="wordnet_glosses", max_train_samples=2 * PER_PROCESS_BATCH, per_device_train_batch_size=PER_PROCESS_BATCH,
        max_steps=3, learning_rate=3e-3, logging_steps=1, save_strategy="no", disable_tqdm=True, max_length=32, seed=0,
        losses=["perception_coherence", "projected_mse"], evaluate_after_training=False, report_to=[],
    )
    values.update(fields)
    return DistillationConfig(**values)


def test_one_process_keeps_the_teacher_whole_and_draws_the_heads_from_the_callers_random_state(tmp_path, minilm_path) -> None:
    """The Trainer is built before the heads; the heads still start where they did when built before it."""
    from hf_pcoh.losses import build_loss

    config = run_config(str(tmp_path), losses=["projected_mse"])
    setup = build_setup(config)
    torch.manual_seed(123)
    expected = build_loss("projected_mse", student_dim=STUDENT["hidden_size"], teacher_dim=TINY_BERT["hidden_size"])
    torch.manual_seed(123)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    heads = trainer.model.heads["pair0_projected_mse"].state_dict()
    assert heads.keys() == expected.state_dict().keys()
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(heads[name], tensor, rtol=0, atol=0)
    # one process: the teacher itself, frozen, in eval mode, on the Trainer's device; no wrapper
    assert trainer.teacher is setup.teacher and not trainer.teacher.training
    assert all(not p.requires_grad and p.device == trainer.args.device for p in trainer.teacher.parameters())


# ---- two processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_process_group(rank: int, world_size: int, port: int) -> None:
    """The environment ``accelerate launch --cpu`` gives each process; the config's accelerator state reads it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), ACCELERATE_USE_CPU="true")
    torch.set_num_threads(1)


def leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_two_processes(function, *args, deadline_seconds: float = 300.0) -> None:
    """Spawn ``function(rank, world_size, port, *args)`` on 2 processes; a hang fails the test."""
    context = mp.start_processes(function, args=(2, free_port(), *args), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + deadline_seconds
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo processes did not finish within {deadline_seconds:.0f} s")


def enable_fsdp_on_cpu() -> None:
    """accelerate turns FSDP on only for GPU process groups; switch it on for gloo, where torch's FSDP2 runs, for
    the rest of this (spawned) process (benchmarks.gpu_check.fsdp_on_cpu, entered and never left)."""
    from benchmarks.gpu_check import fsdp_on_cpu

    switch = fsdp_on_cpu()
    switch.__enter__()
    FSDP_ON_CPU.append(switch)  # held: a context manager collected would close its generator and undo the switch


FSDP_ON_CPU: list = []


def train(config: DistillationConfig, edit_setup=None):
    """(trainer, setup) after training."""
    setup = build_setup(config)
    if edit_setup is not None:
        edit_setup(setup)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    return trainer, setup


def loss_logs(trainer: DistillationTrainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def lose_last_block_weights(setup) -> None:
    """What transformers leaves on processes other than the first under cpu_ram_efficient_loading: the
    weights a checkpoint lacks stay on the meta device (here the last block's output layer, in both models)."""
    for model in (setup.teacher, setup.student):
        model.encoder.layer[-1].output.dense.to("meta")


def fsdp_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """The whole job (run_distillation) under FSDP2, the second process left by cpu_ram_efficient_loading without
    some weights; what was sharded, what was gathered whole, and the evaluation written, recorded."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    import hf_pcoh.pipeline as pipeline

    join_process_group(rank, world_size, port)
    enable_fsdp_on_cpu()
    trainers, gathered = [], []
    build_setup, train_student, whole_model = pipeline.build_setup, pipeline.train_student, pipeline.whole_model

    def build(config):
        setup = build_setup(config)
        if rank:
            lose_last_block_weights(setup)
        return setup

    def train_and_keep(setup, before_training=None):
        trainer, metrics = train_student(setup, before_training)
        trainers.append(trainer)
        return trainer, metrics

    def gather(accelerator, prepared, part, prefix=""):
        gathered.append(prefix)
        return whole_model(accelerator, prepared, part, prefix)

    pipeline.build_setup, pipeline.train_student, pipeline.whole_model = build, train_and_keep, gather
    try:
        config = run_config(output_dir, fsdp=True, fsdp_config={"version": 2, "cpu_ram_efficient_loading": True},
                            evaluate_after_training=True, max_eval_samples=24)
        result = pipeline.run_distillation(config)
        (trainer,) = trainers
        teacher_parameters = list(trainer.teacher.parameters())
        record = {
            "logs": loss_logs(trainer),
            "student_sharded": isinstance(trainer.model_wrapped, FSDPModule),
            "teacher_sharded": all(isinstance(parameter, DTensor) for parameter in teacher_parameters),
            "teacher_local_numel": sum(
                (p.to_local() if isinstance(p, DTensor) else p).numel() for p in teacher_parameters),
            "teacher_numel": sum(p.numel() for p in teacher_parameters),
            "gathered": gathered,  # the key prefix of each model gathered whole
            "evaluation": result.evaluation,
        }
        with open(os.path.join(output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as stream:
            json.dump(record, stream)
    finally:
        leave_process_group()


def assert_same_measures(measured: dict, expected: dict, path: str = "") -> None:
    """Every number of an evaluation alike (timings aside)."""
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_measures(measured[key], value, f"{path}{key}.")
        elif isinstance(value, float) and "per_second" not in key and key != "speed_up":
            assert measured[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{path}{key}"


@pytest.mark.slow  # two gloo processes
def test_two_fsdp2_processes_shard_the_teacher_train_save_and_measure_like_one_process(tmp_path, minilm_path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    from hf_pcoh.pipeline import evaluate_student_against_teacher, save_student

    fields = dict(evaluate_after_training=True, max_eval_samples=24)
    reference, setup = train(run_config(str(tmp_path / "one"), per_device_train_batch_size=2 * PER_PROCESS_BATCH,
                                        **fields))
    save_student(reference)
    reference_evaluation = evaluate_student_against_teacher(setup, reference.model.student, reference.args.device)
    run_two_processes(fsdp_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for record in ranks:
        # student and teacher are sharded: each process holds about half of the teacher's parameters
        assert record["student_sharded"] and record["teacher_sharded"]
        assert record["teacher_local_numel"] <= 0.55 * record["teacher_numel"]
    reference_logs = loss_logs(reference)
    term = next(key for key in reference_logs[0] if key.startswith("loss/projected_mse"))
    for step, expected in enumerate(reference_logs):
        for record in ranks:
            logged = record["logs"][step]
            assert logged["loss"] == pytest.approx(expected["loss"], rel=1e-4, abs=1e-6)
            # a per-process term (projected MSE on each process's own rows) is logged averaged over processes
            assert logged[term] == pytest.approx(expected[term], rel=1e-4, abs=1e-6)
    # only the student was gathered whole (onto the main process, which saved and measured it), never the teacher:
    # its evaluation embeddings were computed sharded, and the figures written are those of one process evaluating
    # the saved student beside the whole teacher
    assert [record["gathered"] for record in ranks] == [["student."], ["student."]]
    assert ranks[1]["evaluation"] is None
    written = json.loads((tmp_path / "eval_results.json").read_text())
    assert written == ranks[0]["evaluation"]
    saved_student = AutoModel.from_pretrained(tmp_path)
    assert_same_measures(written, evaluate_student_against_teacher(setup, saved_student, reference.args.device))
    assert_same_measures(written, reference_evaluation)  # and, trained as one process, the same figures
    saved, expected = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def cache_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """Three caches built by two processes: both holding the whole teacher (``auto``, then a folder), then only the
    first (as FSDP's cpu_ram_efficient_loading leaves the others); each process's teacher rows and features saved."""
    import datasets
    import numpy as np

    import hf_pcoh.teacher_cache as teacher_cache
    import hf_pcoh.teacher_cache_auto as teacher_cache_auto

    join_process_group(rank, world_size, port)
    rows_run = []
    run_teacher = teacher_cache.run_teacher

    def counted_run_teacher(teacher, inputs, extractors):
        rows_run.append(len(inputs["input_ids"]))
        return run_teacher(teacher, inputs, extractors)

    teacher_cache.run_teacher = teacher_cache_auto.run_teacher = counted_run_teacher  # the pass, the auto decision's
    try:
        record = {}
        datasets.config.HF_DATASETS_CACHE = os.path.join(output_dir, "auto")  # auto: under auto/hf_pcoh_teacher_features
        for name in ("auto", "shared", "alone"):
            if name == "alone":
                teacher_cache.teacher_is_whole = lambda teacher: rank == 0
            rows_run.clear()
            folder = "auto" if name == "auto" else os.path.join(output_dir, name, "cache")
            config = run_config(os.path.join(output_dir, name), teacher_cache=folder, max_train_samples=40)
            features = np.asarray(build_setup(config).train_dataset["teacher_features_0"])
            np.save(os.path.join(output_dir, f"{name}{rank}.npy"), features)
            record[name] = sum(rows_run)
        with open(os.path.join(output_dir, f"rows{rank}.json"), "w", encoding="utf-8") as stream:
            json.dump(record, stream)
    finally:
        leave_process_group()


@pytest.mark.slow  # two gloo processes
def test_two_processes_compute_the_teacher_cache_half_each_into_the_one_process_cache(tmp_path, minilm_path) -> None:
    import numpy as np

    config = run_config(str(tmp_path / "one"), teacher_cache=str(tmp_path / "one" / "cache"), max_train_samples=40)
    expected = np.asarray(build_setup(config).train_dataset["teacher_features_0"])
    run_two_processes(cache_worker, str(tmp_path))
    rows = [json.loads((tmp_path / f"rows{rank}.json").read_text()) for rank in range(2)]
    # each process ran the teacher over its own half of the 40 rows, nobody over all of them while the other waited
    assert [record["shared"] for record in rows] == [20, 20], rows
    # a process without the whole teacher computes nothing: the one that holds it computes every row
    assert [record["alone"] for record in rows] == [40, 0], rows
    # auto (3 steps x 2 x 8 = 1.2 passes over 40 rows): the main process alone times the teacher on a batch (16 rows,
    # twice) and decides for both; then each computes its half
    assert [record["auto"] for record in rows] == [20 + 2 * 16, 20], rows
    folders = {"auto": tmp_path / "auto" / "hf_pcoh_teacher_features", "shared": tmp_path / "shared" / "cache",
               "alone": tmp_path / "alone" / "cache"}
    for name, folder in folders.items():
        # the shares merged into the cache one process writes: the same fingerprint (folder), rows and features
        assert os.listdir(folder) == os.listdir(tmp_path / "one" / "cache")
        for rank in range(2):
            features = np.load(tmp_path / f"{name}{rank}.npy")
            assert features.shape == (40, TINY_BERT["hidden_size"])
            np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


# ---- gradient checkpointing ----------------------------------------------------------------------------


def saved_activation_bytes(trainer: DistillationTrainer) -> int:
    """Bytes autograd keeps for backward in one training forward of the student and heads (first batch)."""
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    teacher_features, _ = trainer.teacher_forward(inputs)
    kept = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    trainer.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = trainer.model(student_inputs=inputs["student_inputs"], teacher_features=teacher_features)
    output.loss.backward()
    return sum(kept)


def test_gradient_checkpointing_reaches_the_student_same_loss_fewer_activations(tmp_path, minilm_path) -> None:
    student = dict(STUDENT, num_hidden_layers=4)
    runs = {}
    for checkpointing in (False, True):
        config = run_config(str(tmp_path / str(checkpointing)), student_config=student, gradient_checkpointing=checkpointing,
                            per_device_train_batch_size=2 * PER_PROCESS_BATCH)
        runs[checkpointing], _ = train(config)
    plain, checkpointed = runs[False], runs[True]
    assert checkpointed.model.student.is_activation_checkpointing and not plain.model.student.is_activation_checkpointing
    losses = {key: [entry["loss"] for entry in run.state.log_history if "loss" in entry] for key, run in runs.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-7)
    # the checkpointed student keeps only its blocks' inputs, not their inner activations
    assert saved_activation_bytes(checkpointed) < 0.5 * saved_activation_bytes(plain)


def whole_weights(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    """The DistillationModel's whole (unsharded) state, student and heads, on every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    return {name: value.detach().clone() for name, value in
            get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)).items()}


def fsdp_resume_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """Under FSDP2: (1) 4 uninterrupted steps, checkpoints at 2 and 4; (2) a fresh run resumed from checkpoint-2
    to step 4; (3) load_best_model_at_end where the best checkpoint (by a rule that makes the first best) is not
    the last. Whole weights of each, saved by the main process."""
    join_process_group(rank, world_size, port)
    enable_fsdp_on_cpu()
    fields = dict(fsdp=True, fsdp_config={"version": 2}, max_steps=4, save_strategy="steps", save_steps=2,
                  learning_rate=3e-3, losses=["perception_coherence", "projected_mse"])
    try:
        uninterrupted, _ = train(run_config(os.path.join(output_dir, "uninterrupted"), **fields))
        whole = {"uninterrupted": whole_weights(uninterrupted)}
        config = run_config(os.path.join(output_dir, "resumed"), **fields)
        setup = build_setup(config)
        resumed = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                      train_dataset=setup.train_dataset, collator=setup.collator)
        resumed.train(resume_from_checkpoint=os.path.join(output_dir, "uninterrupted", "checkpoint-2"))
        whole["resumed"] = whole_weights(resumed)
        best_fields = dict(fields, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                           metric_for_best_model="loss", greater_is_better=True, max_eval_samples=16)
        config = run_config(os.path.join(output_dir, "best"), **best_fields)
        setup = build_setup(config)
        best = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                   train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
                                   collator=setup.collator)
        best.train()
        whole["best"] = whole_weights(best)
        whole["best_checkpoint"] = best.state.best_model_checkpoint
        if rank == 0:
            torch.save(whole, os.path.join(output_dir, "whole.pt"))
    finally:
        leave_process_group()


@pytest.mark.slow  # two gloo processes, three short FSDP2 runs
def test_fsdp2_resume_equals_uninterrupted_and_load_best_loads_a_checkpoint_that_is_not_the_last(tmp_path,
                                                                                               minilm_path) -> None:
    from safetensors.torch import load_file

    from hf_pcoh.artifacts import HEADS_FILE

    run_two_processes(fsdp_resume_worker, str(tmp_path), deadline_seconds=600)
    whole = torch.load(tmp_path / "whole.pt")
    for name, tensor in whole["uninterrupted"].items():
        torch.testing.assert_close(whole["resumed"][name], tensor, rtol=0, atol=0, msg=name)
    best_dir = tmp_path / "best" / "checkpoint-2"
    assert whole["best_checkpoint"] == str(best_dir)  # the first of two: not the last
    saved = {f"student.{key}": value for key, value in load_file(best_dir / "model.safetensors").items()}
    saved.update(load_file(best_dir / HEADS_FILE))
    assert any(not torch.equal(saved[name], whole["uninterrupted"][name]) for name in saved)  # step 2 != step 4
    for name, tensor in saved.items():
        torch.testing.assert_close(whole["best"][name], tensor, rtol=0, atol=0, msg=name)
