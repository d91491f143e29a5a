"""Batch-level losses see the global batch: 2 gloo processes == 1 process with the doubled batch.

Pooled features, and token features (pooling ``none``) whose sequences are padded to a different length on
each process.
"""

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
from hf_pcoh.distillation_model import DistillationModel, DistillationTerm

GLOBAL_BATCH, TEACHER_DIM, TOKENS = 12, 24, 7
# Real tokens per sequence: the first process's half is padded to 4 tokens, the second's to 7.
LENGTHS = [2, 3, 4, 3, 2, 4, 7, 5, 6, 3, 7, 2]
STUDENT = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def make_model(loss_name: str, pooling: str = "mean") -> DistillationModel:
    torch.manual_seed(0)
    student = AutoModel.from_config(AutoConfig.for_model(**STUDENT))
    loss = build_loss(loss_name, student_dim=16, teacher_dim=TEACHER_DIM)
    term = DistillationTerm("pair0_" + loss_name, loss_name, 0, 1.0)
    return DistillationModel(student, [FeatureExtractor("last", pooling)], {term.key: loss}, [term])


def make_batch(pooling: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask (all ones for pooled features, ``LENGTHS`` for tokens), teacher features."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 50, (GLOBAL_BATCH, TOKENS), generator=generator)
    if pooling == "none":
        attention_mask = (torch.arange(TOKENS)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
        teacher = torch.randn(GLOBAL_BATCH, TOKENS, TEACHER_DIM, generator=generator)
    else:
        attention_mask = torch.ones_like(input_ids)
        teacher = torch.randn(GLOBAL_BATCH, TEACHER_DIM, generator=generator)
    return input_ids * attention_mask, attention_mask, teacher


def process_shard(rank: int, world_size: int, input_ids, attention_mask, teacher):
    """This process's rows, cut to its own longest sequence as a collator pads them."""
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    input_ids, attention_mask, teacher = input_ids[rows], attention_mask[rows], teacher[rows]
    if teacher.dim() == 3:
        length = int(attention_mask.sum(dim=1).max())
        input_ids, attention_mask, teacher = input_ids[:, :length], attention_mask[:, :length], teacher[:, :length]
    return input_ids, attention_mask, teacher


def loss_and_gradients(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, teacher: torch.Tensor):
    output = model(student_inputs={"input_ids": input_ids, "attention_mask": attention_mask},
                   teacher_features=[Features(teacher)])
    output.loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    gradients = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return output.loss.detach(), gradients


def worker(rank: int, world_size: int, port: int, loss_name: str, result_path: str, pooling: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(make_model(loss_name, pooling), find_unused_parameters=True)
        shard = process_shard(rank, world_size, *make_batch(pooling))
        loss, gradients = loss_and_gradients(model, *shard)
        # What the Trainer logs: the mean over processes (a loss split between processes returns each one's
        # weighted share; the shares average to the global batch's loss).
        dist.all_reduce(loss)
        loss = loss / world_size
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


def run_two_processes(loss_name: str, result_path: str, pooling: str = "mean", deadline_seconds: float = 120.0) -> None:
    """Spawn the two ranks; a hung collective fails the test instead of hanging the suite."""
    context = mp.start_processes(worker, args=(2, free_port(), loss_name, result_path, pooling), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + deadline_seconds
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two gloo processes for {loss_name} did not finish within {deadline_seconds:.0f} s")


BATCH_LEVEL_LOSSES = sorted(name for name, cls in LOSSES.items() if cls.batch_level)
TOKEN_BATCH_LEVEL_LOSSES = sorted(name for name, cls in LOSSES.items() if cls.batch_level and cls.accepts_tokens)
CASES = [(name, "mean") for name in BATCH_LEVEL_LOSSES] + [(name, "none") for name in TOKEN_BATCH_LEVEL_LOSSES]


@pytest.mark.slow  # two gloo processes per loss
@pytest.mark.parametrize("loss_name, pooling", CASES)
def test_distributed_two_processes_equal_one_process_on_the_global_batch(loss_name, pooling) -> None:
    reference_loss, reference_gradients = loss_and_gradients(make_model(loss_name, pooling), *make_batch(pooling))
    with tempfile.TemporaryDirectory() as folder:
        result_path = os.path.join(folder, "rank0.pt")
        run_two_processes(loss_name, result_path, pooling)
        result = torch.load(result_path)
    torch.testing.assert_close(result["loss"], reference_loss, atol=1e-5, rtol=1e-5)
    assert set(result["gradients"]) == set(reference_gradients)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(result["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)
