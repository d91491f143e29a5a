"""Batch-level losses on the global batch, computed once across processes (hf_pcoh.global_batch).

W gloo processes, each with its own rows (an uneven last batch included): every process's value averages to the
one-process loss of the whole batch, and its gradient on its own rows is W times the one-process gradient there
(DDP's average over W then gives the one-process gradient exactly). Perception coherence splits its reference
rows between the processes; the other losses compute the whole batch on each. Token features of the set-geometry
losses are sub-sampled to ``max_tokens`` rows before the gather, the same rows on every process.
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
    return float(value.detach()), gradient


CASES = [
    ("perception_coherence", {}),
    ("perception_coherence", {"soft_rank": "sorted"}),
    ("perception_coherence", {"locality": 0.2}),  # weights normalised over all rows: each share divides by their sum
    ("perception_coherence", {"soft_rank": "sorted", "locality": 0.2, "locality_sides": "both", "top_k": 3}),
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


def run_processes(counts: list[int], body=process_body) -> dict:
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    context = mp.start_processes(body, args=(len(counts), free_port(), counts, results), nprocs=len(counts),
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
        shared = name == "perception_coherence"
        for rank in range(world_size):
            rows = results[(case, rank)][2]
            if shared:  # each process scored only its own rows
                begin = sum(counts[:rank])
                assert rows is not None and rows.tolist() == list(range(begin, begin + counts[rank])), (name, rank)
            else:
                assert rows is None, (name, options)


# Token features: real tokens per example of the global batch, each process's examples padded to its own longest.
TOKEN_LENGTHS = [5, 2, 7, 3, 6, 4, 1, 5, 3]  # N = 36 valid tokens
SUBSAMPLED, WHOLE = 16, 64  # max_tokens below N (rows chosen before the gather), and at least N (all rows)
TOKEN_CASES = [(name, max_tokens) for max_tokens in (SUBSAMPLED, WHOLE) for name in ("procrustes", "gram", "cka")]


def token_features(counts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every process's ``(student [b_r, T_r, d_s], teacher [b_r, T_r, d_t], mask [b_r, T_r])``, ``T_r`` its longest."""
    generator = torch.Generator().manual_seed(2)
    longest = max(TOKEN_LENGTHS)
    student = torch.randn(len(TOKEN_LENGTHS), longest, STUDENT_DIM, generator=generator, dtype=torch.float64)
    teacher = torch.randn(len(TOKEN_LENGTHS), longest, TEACHER_DIM, generator=generator, dtype=torch.float64)
    mask = (torch.arange(longest)[None, :] < torch.tensor(TOKEN_LENGTHS)[:, None]).long()
    shards, start = [], 0
    for count in counts:
        rows = slice(start, start + count)
        length = max(TOKEN_LENGTHS[rows])
        shards.append((student[rows, :length], teacher[rows, :length], mask[rows, :length]))
        start += count
    return shards


def token_process_body(rank: int, world_size: int, port: int, counts: list[int], results: dict) -> None:
    """Every case of TOKEN_CASES through GlobalBatches (the trainer's path), and, when all rows are kept, through the
    whole gather of the padded token features (the path before rows were chosen before the gather)."""
    from hf_pcoh import distributed
    from hf_pcoh.global_batch import GlobalBatches, gather_global_batch, loss_on_global_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    distributed._FEATURE_GROUP.clear()
    try:
        student, teacher, mask = token_features(counts)[rank]
        for case, (name, max_tokens) in enumerate(TOKEN_CASES):
            torch.manual_seed(10 * case + rank)  # each process draws its own seed; rank 0's must be used by all
            loss = build_loss(name, student_dim=STUDENT_DIM, teacher_dim=TEACHER_DIM, max_tokens=max_tokens).double()
            own_student = student.clone().requires_grad_(True)
            batches = GlobalBatches()
            value = batches.loss_value(0, loss, own_student, teacher, mask)
            value.backward()
            batch = batches.batch(0, loss, own_student, teacher, mask)  # the one gathered above
            results[(case, rank)] = (float(value), own_student.grad.clone(), batch.size, batch.token_seed)
            if max_tokens >= sum(TOKEN_LENGTHS):
                whole_student = student.clone().requires_grad_(True)
                whole_value = loss_on_global_batch(loss, gather_global_batch(whole_student, teacher, mask))
                whole_value.backward()
                results[(case, rank, "whole")] = (float(whole_value), whole_student.grad.clone())
    finally:
        dist.destroy_process_group()


def token_reference(name: str, max_tokens: int, counts: list[int], seed: int) -> tuple[float, list[torch.Tensor]]:
    """The one-process loss of the token features of the whole batch restricted to the chosen rows (a mask that
    keeps only them, so the loss itself sub-samples nothing), and its gradient on each process's features."""
    from hf_pcoh.global_batch import shared_token_rows, valid_tokens

    shards = token_features(counts)
    students = [student.clone().requires_grad_(True) for student, _, _ in shards]
    token_counts = [int(mask.sum()) for _, _, mask in shards]
    chosen = shared_token_rows(token_counts, max_tokens, seed)
    assert len(chosen) == min(sum(token_counts), max_tokens)
    longest = max(TOKEN_LENGTHS)
    pad = lambda tensor: torch.nn.functional.pad(tensor, [0, 0, 0, longest - tensor.shape[1]])  # noqa: E731
    student = torch.cat([pad(own) for own in students])  # [B, T, d_s]
    teacher = torch.cat([pad(own_teacher) for _, own_teacher, _ in shards])
    mask = torch.cat([torch.nn.functional.pad(own_mask, [0, longest - own_mask.shape[1]]) for _, _, own_mask in shards])
    chosen_mask = torch.zeros(int(mask.sum()), dtype=torch.long)
    chosen_mask[chosen] = 1
    restricted = torch.zeros_like(mask)
    restricted[mask.bool()] = chosen_mask  # the valid tokens in row-major order: rank order, as shared_token_rows
    assert torch.equal(valid_tokens(student, restricted), torch.cat([valid_tokens(s, m) for s, (_, _, m) in
                                                                    zip(students, shards)])[chosen])
    loss = build_loss(name, student_dim=STUDENT_DIM, teacher_dim=TEACHER_DIM, max_tokens=max_tokens).double()
    value = loss(student, teacher, mask=restricted)
    gradients = list(torch.autograd.grad(value, students))
    return float(value.detach()), gradients


@pytest.mark.slow  # W gloo processes
@pytest.mark.parametrize("counts", [[5, 4], [4, 3, 2]], ids=["W2-uneven", "W3-uneven"])
def test_token_rows_of_set_geometry_losses_are_chosen_before_the_gather_alike_on_every_process(counts) -> None:
    world_size = len(counts)
    tokens = sum(TOKEN_LENGTHS)
    results = run_processes(counts, token_process_body)
    for case, (name, max_tokens) in enumerate(TOKEN_CASES):
        seeds = {results[(case, rank)][3] for rank in range(world_size)}
        assert len(seeds) == 1 and None not in seeds, (name, seeds)  # one seed, rank 0's, on every process
        expected_value, expected_gradients = token_reference(name, max_tokens, counts, seeds.pop())
        values = [results[(case, rank)][0] for rank in range(world_size)]
        assert sum(values) / world_size == pytest.approx(expected_value, rel=1e-9, abs=1e-12), (name, max_tokens)
        for rank in range(world_size):
            value, gradient, gathered_rows, _ = results[(case, rank)]
            assert gathered_rows == min(tokens, max_tokens) <= max_tokens, (name, rank)
            torch.testing.assert_close(gradient, world_size * expected_gradients[rank], rtol=1e-7, atol=1e-10,
                                       msg=lambda text: f"{name} max_tokens={max_tokens} rank {rank}: {text}")
            if max_tokens >= tokens:  # all rows: the same as gathering the token features whole
                whole_value, whole_gradient = results[(case, rank, "whole")]
                assert value == pytest.approx(whole_value, rel=1e-12, abs=1e-14), (name, rank)
                torch.testing.assert_close(gradient, whole_gradient, rtol=1e-9, atol=1e-12)
        if max_tokens < tokens:  # the sub-sample is a real one: some processes' gradients miss some tokens
            assert any((gradient.abs().sum(-1) == 0).logical_and(mask.bool()).any()
                       for (gradient, (_, _, mask)) in zip(expected_gradients, token_features(counts)))
