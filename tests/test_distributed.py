"""Batch-level losses see the global batch: 2 gloo processes == 1 process with the doubled batch."""

from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoConfig, AutoModel

from hf_pcoh.features import FeatureExtractor, Features
from hf_pcoh.losses import LOSSES, build_loss
from hf_pcoh.trainer import DistillationModel, DistillationTerm

GLOBAL_BATCH, TEACHER_DIM = 12, 24
STUDENT = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def make_model(loss_name: str) -> DistillationModel:
    torch.manual_seed(0)
    student = AutoModel.from_config(AutoConfig.for_model(**STUDENT))
    loss = build_loss(loss_name, student_dim=16, teacher_dim=TEACHER_DIM)
    term = DistillationTerm("pair0_" + loss_name, loss_name, 0, 1.0)
    return DistillationModel(student, [FeatureExtractor("last", "mean")], {term.key: loss}, [term])


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 50, (GLOBAL_BATCH, 7), generator=generator)
    teacher = torch.randn(GLOBAL_BATCH, TEACHER_DIM, generator=generator)
    return input_ids, teacher


def loss_and_gradients(model: torch.nn.Module, input_ids: torch.Tensor, teacher: torch.Tensor):
    output = model(student_inputs={"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},
                   teacher_features=[Features(teacher)])
    output.loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    gradients = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return output.loss.detach(), gradients


def worker(rank: int, world_size: int, port: int, loss_name: str, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(make_model(loss_name), find_unused_parameters=True)
        input_ids, teacher = make_batch()
        shard = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        loss, gradients = loss_and_gradients(model, input_ids[shard], teacher[shard])
        if rank == 0:
            torch.save({"loss": loss, "gradients": gradients}, result_path)
        # Tear DDP down while its process group is alive: a reducer destroyed after the group can hang.
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(loss_name: str, result_path: str, deadline_seconds: float = 120.0) -> None:
    """Spawn the two ranks; a hung collective fails the test instead of hanging the suite."""
    context = mp.start_processes(worker, args=(2, free_port(), loss_name, result_path), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + deadline_seconds
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo processes for {loss_name} did not finish within {deadline_seconds:.0f} s")


BATCH_LEVEL_LOSSES = sorted(name for name, cls in LOSSES.items() if cls.batch_level)


@pytest.mark.parametrize("loss_name", BATCH_LEVEL_LOSSES)
def test_distributed_two_processes_equal_one_process_on_the_global_batch(loss_name) -> None:
    reference_loss, reference_gradients = loss_and_gradients(make_model(loss_name), *make_batch())
    with tempfile.TemporaryDirectory() as folder:
        result_path = os.path.join(folder, "rank0.pt")
        run_two_processes(loss_name, result_path)
        result = torch.load(result_path)
    torch.testing.assert_close(result["loss"], reference_loss, atol=1e-5, rtol=1e-5)
    assert set(result["gradients"]) == set(reference_gradients)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(result["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)
