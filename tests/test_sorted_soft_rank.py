"""The sorted soft rank (``soft_rank="sorted"``): the ramp-kernel rank computed by sorting equals its direct
``[m, B, B]`` formula in value and gradient, tends to the hard rank, and the loss built on it keeps perception
coherence's properties (zero at identity, invariances, bounds, sampled references, locality)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_pcoh.losses import PerceptionCoherenceLoss
from hf_pcoh.losses import soft_rank
from hf_pcoh.losses import sorted_soft_rank
from hf_pcoh.losses.sorted_soft_rank import (
    RAMP_HALF_WIDTH, SortedRankDisagreement, fixed_sorted_soft_ranks, ramp, ramp_soft_ranks_pairwise,
    sorted_hard_ranks, sorted_soft_ranks,
)


def distance_rows(batch_size: int, num_references: int, seed: int = 0, decimals: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(batch_size, 5, dtype=torch.float64, generator=generator)
    distances = torch.cdist(points, points)
    if decimals is not None:  # coarse distances: many exact ties
        distances = torch.round(distances * 10**decimals) / 10**decimals
    index = torch.randperm(batch_size, generator=generator)[:num_references]
    return distances[index].clone(), index


def test_ramp_is_the_sigmoids_tangent_at_zero_clipped() -> None:
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert ramp(torch.tensor(0.0)).item() == 0.5
    assert ramp(torch.tensor(RAMP_HALF_WIDTH)).item() == 1.0 and ramp(torch.tensor(-RAMP_HALF_WIDTH)).item() == 0.0
    slope = (ramp(torch.tensor(1e-3, dtype=torch.float64)) - ramp(torch.tensor(-1e-3, dtype=torch.float64))) / 2e-3
    assert slope.item() == pytest.approx(0.25)  # sigmoid'(0)
    assert (ramp(x) - torch.sigmoid(x)).abs().max().item() < 0.12


@pytest.mark.parametrize("temperature", [0.03, 0.1, 1.0])
@pytest.mark.parametrize("num_references", [40, 7])
def test_sorted_ranks_equal_the_direct_ramp_formula(temperature: float, num_references: int) -> None:
    rows, index = distance_rows(40, num_references)
    torch.testing.assert_close(sorted_soft_ranks(rows, index, temperature),
                               ramp_soft_ranks_pairwise(rows, index, temperature), rtol=0, atol=1e-12)


def test_sorted_ranks_with_exact_ties_equal_the_direct_formula() -> None:
    rows, index = distance_rows(30, 10, decimals=1)
    assert len(rows[0].unique()) < 29  # ties present
    torch.testing.assert_close(sorted_soft_ranks(rows, index, 0.1), ramp_soft_ranks_pairwise(rows, index, 0.1),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(sorted_hard_ranks(rows, index), soft_rank.hard_ranks(rows, index), rtol=0, atol=0)


def test_gradcheck_and_gradient_equal_to_the_direct_formulas() -> None:
    rows, index = distance_rows(12, 5)
    rows.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sorted_soft_ranks(x, index, 0.3), (rows,))
    upstream = torch.randn(5, 12, dtype=torch.float64)
    (sorted_grad,) = torch.autograd.grad((sorted_soft_ranks(rows, index, 0.3) * upstream).sum(), rows)
    (direct_grad,) = torch.autograd.grad((ramp_soft_ranks_pairwise(rows, index, 0.3) * upstream).sum(), rows)
    torch.testing.assert_close(sorted_grad, direct_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("num_references", [30, 9])
def test_blockwise_loss_equals_autograd_of_the_sorted_ranks_in_value_and_gradient(
    weighted: bool, num_references: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sorted_soft_rank, "SORTED_BLOCK_ELEMENTS", 70)  # blocks of 2 references
    rows, index = distance_rows(30, num_references, seed=1)
    teacher_rows, _ = distance_rows(30, num_references, seed=2)
    teacher_ranks = sorted_soft_ranks(teacher_rows, index, 0.2)
    torch.testing.assert_close(fixed_sorted_soft_ranks(teacher_rows, index, 0.2), teacher_ranks, rtol=0, atol=1e-13)
    weights = torch.rand(num_references, 30, dtype=torch.float64).scatter(1, index[:, None], 0.0) if weighted else None
    rows.requires_grad_(True)
    value = SortedRankDisagreement.apply(rows, teacher_ranks, index, 0.2, weights)
    (grad,) = torch.autograd.grad(3.0 * value, rows)
    errors = sorted_soft_ranks(rows, index, 0.2) - teacher_ranks
    expected = (errors.pow(2).sum() / (num_references * 29) if weights is None
                else (weights * errors.pow(2)).sum() / weights.sum())
    (expected_grad,) = torch.autograd.grad(3.0 * expected, rows)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-14)


def test_blockwise_loss_gradcheck_with_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sorted_soft_rank, "SORTED_BLOCK_ELEMENTS", 24)
    rows, index = distance_rows(12, 12, seed=4)
    teacher_ranks = sorted_hard_ranks(torch.round(rows * 2) / 2, index)  # hard teacher ranks with ties
    rows.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: SortedRankDisagreement.apply(x, teacher_ranks, index, 0.3, None), (rows,))


def test_ranks_tend_to_hard_ranks_and_keep_the_order_of_each_row() -> None:
    rows, index = distance_rows(50, 50)
    hard = sorted_hard_ranks(rows, index)
    torch.testing.assert_close(hard, soft_rank.hard_ranks(rows, index), rtol=0, atol=0)
    errors = [(sorted_soft_ranks(rows, index, tau) - hard).abs().max().item() for tau in (1.0, 1e-1, 1e-7)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9
    ranks = sorted_soft_ranks(rows, index, 0.1)
    for reference in range(10):
        others = [j for j in range(50) if j != index[reference]]
        order = rows[reference, others].argsort()
        assert (ranks[reference, others][order].diff() >= 0).all()  # nearer point, lower rank
    assert (ranks.gather(1, index[:, None]) == 0).all() and ranks.min() > -1e-12 and ranks.max() < 1 + 1e-12


def test_float32_rows_of_large_scaled_distances_keep_their_precision() -> None:
    rows, index = distance_rows(200, 200)
    rows = rows.float()  # scaled values up to ~5000 at tau = 1e-3: float32 sums would cancel to ~1e-3 counts
    direct = ramp_soft_ranks_pairwise(rows.double(), index, 1e-3)  # no sums of large numbers
    assert sorted_soft_ranks(rows, index, 1e-3).dtype == torch.float32
    torch.testing.assert_close(sorted_soft_ranks(rows, index, 1e-3).double(), direct, rtol=0, atol=1e-7)


def test_loss_is_zero_at_identity_invariant_to_rigid_motions_and_scale_and_bounded() -> None:
    teacher = torch.randn(40, 6, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(6, 6, soft_rank="sorted")
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)
    student = torch.randn(40, 4, dtype=torch.float64)
    base = loss(student, teacher).item()
    assert 0.0 < base <= 1.0
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    moved = 3.7 * student @ rotation + torch.randn(1, 4, dtype=torch.float64)
    teacher_rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert loss(moved, teacher @ teacher_rotation - 5.0).item() == pytest.approx(base, rel=1e-9)


def test_loss_equals_the_written_out_ramp_loss_with_sampled_references_and_locality() -> None:
    student, teacher = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(4, 5, soft_rank="sorted", num_references=11, locality=0.2, dissimilarity="cosine")
    torch.manual_seed(3)
    value = loss(student, teacher)
    torch.manual_seed(3)
    index = torch.randperm(30)[:11]

    def scaled_rows(features: torch.Tensor) -> torch.Tensor:
        normalised = torch.nn.functional.normalize(features, dim=1)
        distances = 1.0 - normalised @ normalised.T
        return (distances / distances[~torch.eye(30, dtype=torch.bool)].std())[index]

    student_ranks = ramp_soft_ranks_pairwise(scaled_rows(student), index, 0.1)
    teacher_ranks = ramp_soft_ranks_pairwise(scaled_rows(teacher), index, 0.1)
    weights = torch.exp(-teacher_ranks / 0.2).scatter(1, index[:, None], 0.0)
    expected = (weights * (student_ranks - teacher_ranks).pow(2)).sum() / weights.sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_gradcheck_through_features() -> None:
    teacher = torch.randn(10, 3, dtype=torch.float64)
    student = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    loss = PerceptionCoherenceLoss(2, 3, soft_rank="sorted", temperature=0.5)
    assert torch.autograd.gradcheck(lambda x: loss(x, teacher), (student,))


def test_training_on_the_sorted_loss_raises_the_exact_rank_agreement() -> None:
    """A student trained on the sorted (ramp) loss improves the *sigmoid* loss too: the two ranks agree."""
    torch.manual_seed(0)
    teacher = torch.randn(64, 8)
    student = torch.nn.Parameter(torch.randn(64, 3))
    sorted_loss = PerceptionCoherenceLoss(3, 8, soft_rank="sorted")
    exact_loss = PerceptionCoherenceLoss(3, 8)
    before = exact_loss(student, teacher).item()
    optimiser = torch.optim.Adam([student], lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        sorted_loss(student, teacher).backward()
        optimiser.step()
    assert exact_loss(student, teacher).item() < 0.5 * before


def test_sorted_at_batch_1024_keeps_no_quadratic_per_reference_tensor() -> None:
    """Memory O(m B): the tensors autograd saves stay within a small multiple of B^2 (the exact path's
    would be B^3 without its analytic backward)."""
    from autograd_memory import largest_kept

    batch_size = 1024
    student = torch.randn(batch_size, 16, requires_grad=True)
    teacher = torch.randn(batch_size, 16)
    value, largest = largest_kept(lambda: PerceptionCoherenceLoss(16, 16, soft_rank="sorted")(student, teacher))
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(student.grad).all()
    # saved tensors and ctx attributes alike: the features and [B, B] rows, nothing per (reference, pair)
    assert largest <= batch_size * batch_size


def test_sorted_options_are_validated() -> None:
    with pytest.raises(ValueError, match="soft_rank='bogus' must be 'pairwise'"):
        PerceptionCoherenceLoss(4, 4, soft_rank="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drop implementation"):
        PerceptionCoherenceLoss(4, 4, soft_rank="sorted", implementation="reference")
