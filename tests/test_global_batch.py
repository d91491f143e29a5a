"""Batch-level losses on the global batch, computed once across processes (hf_pcoh.global_batch).

W gloo processes, each with its own rows (an uneven last batch included): every process's value averages to the
one-process loss of the whole batch, and its gradient on its own rows is W times the one-process gradient there
(DDP's average over W then gives the one-process gradient exactly). Perception coherence splits its reference
rows between the processes; the other losses compute the whole batch on each.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from hf_pcoh.losses import build_loss

from test_scale_out import free_port

STUDENT_DIM, TEACHER_DIM = 6, 9


def global_features(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(rows, STUDENT_DIM, generator=generator, dtype=torch.float64),
            torch.randn(rows, TEACHER_DIM, generator=generator, dtype=torch.float64))


def one_process_reference(name: str, options: dict, rows: int) -> tuple[float, torch.Tensor]:
    student, teacher = global_features(rows)
    student.requires_grad_(True)
    torch.manual_seed(1)
    loss = build_loss(name, student_dim=STUDENT_DIM, teacher_dim=TEACHER_DIM, **options).double()
    value = loss(student, teacher)
    (gradient,) = torch.autograd.grad(value, student)
    return float(value), gradient


CASES = [
    ("perception_coherence", {}),
    ("perception_coherence", {"soft_rank": "sorted"}),
    ("perception_coherence", {"locality": 0.2}),  # weights normalised over all rows: computed whole
    ("procrustes", {}),
    ("cospress", {}),
]


def process_body(rank: int, world_size: int, port: int, counts: list[int], results: dict) -> None:
    """Every case of CASES in one process group (spawning processes costs more than the losses)."""
    from hf_pcoh import distributed
    from hf_pcoh.global_batch import global_batch_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    distributed._FEATURE_GROUP.clear()
    try:
        student, teacher = global_features(sum(counts))
        start = sum(counts[:rank])
        for case, (name, options) in enumerate(CASES):
            own_student = student[start:start + counts[rank]].clone().requires_grad_(True)
            own_teacher = teacher[start:start + counts[rank]]
            torch.manual_seed(1)  # the same learned parameters (a projector) on every process
            loss = build_loss(name, student_dim=STUDENT_DIM, teacher_dim=TEACHER_DIM, **options).double()
            calls = []
            original = loss.forward
            loss.forward = lambda *args, original=original, calls=calls, **kwargs: (
                calls.append(kwargs.get("rows")) or original(*args, **kwargs))
            value = global_batch_loss(loss, own_student, own_teacher)
            value.backward()
            results[(case, rank)] = (float(value), own_student.grad.clone(), calls[0])
    finally:
        dist.destroy_process_group()


def run_processes(counts: list[int]) -> dict:
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    context = mp.start_processes(process_body, args=(len(counts), free_port(), counts, results), nprocs=len(counts),
                                 start_method="spawn", join=False)
    while not context.join(timeout=120):
        pass
    return dict(results)


@pytest.mark.slow  # W gloo processes
@pytest.mark.parametrize("counts", [[4, 4], [4, 3, 2]], ids=["W2", "W3-uneven"])
def test_each_process_gets_the_one_process_gradient_and_the_values_average_to_the_loss(counts) -> None:
    world_size = len(counts)
    results = run_processes(counts)
    for case, (name, options) in enumerate(CASES):
        expected_value, expected_gradient = one_process_reference(name, options, sum(counts))
        values = [results[(case, rank)][0] for rank in range(world_size)]
        assert sum(values) / world_size == pytest.approx(expected_value, rel=1e-9, abs=1e-12), (name, options)
        gradient = torch.cat([results[(case, rank)][1] for rank in range(world_size)])
        torch.testing.assert_close(gradient, world_size * expected_gradient, rtol=1e-7, atol=1e-10,
                                   msg=lambda text: f"{name} {options}: {text}")
        shared = name == "perception_coherence" and "locality" not in options
        for rank in range(world_size):
            rows = results[(case, rank)][2]
            if shared:  # each process scored only its own rows
                begin = sum(counts[:rank])
                assert rows is not None and rows.tolist() == list(range(begin, begin + counts[rank])), (name, rank)
            else:
                assert rows is None, (name, options)
