"""Perception coherence: the chunked autograd.Function equals the direct formula, and the loss has the
properties its docstring promises (invariances, tau -> 0 limit, Spearman, float32 under autocast, memory)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_pcoh.losses import PerceptionCoherenceLoss, build_loss
from hf_pcoh.losses import perception_coherence as pc
from hf_pcoh.losses import soft_rank


def random_rows(num_references: int, batch_size: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``[m, B]`` dissimilarity rows with a zero at each reference's own column, and the reference index."""
    index = torch.randperm(batch_size)[:num_references]
    rows = torch.rand(num_references, batch_size, dtype=dtype).scatter(1, index[:, None], 0.0)
    return rows, index


def loss_and_grad(loss: PerceptionCoherenceLoss, student: torch.Tensor, teacher: torch.Tensor, seed: int = 0):
    student = student.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same sampled references for every implementation
    value = loss(student, teacher)
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), grad


@pytest.mark.parametrize("num_references", [9, 4])
def test_soft_ranks_gradcheck_float64(num_references: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny block budget forces the backward to split references *and* rows into blocks.
    monkeypatch.setattr(soft_rank, "BLOCK_ELEMENTS", 20)
    rows, index = random_rows(num_references, 9)
    rows.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_rank.soft_ranks_chunked(x, index, 0.2, 2), (rows,))


@pytest.mark.parametrize("batch_size", [3, 4, 5, 10, 33])
@pytest.mark.parametrize("block_elements", [None, 40])
def test_folded_ranks_and_gradients_equal_the_direct_formula(
    batch_size: int, block_elements: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Odd and even B (the o = B/2 pairs), all or sampled references, one block or many."""
    if block_elements is not None:
        monkeypatch.setattr(soft_rank, "BLOCK_ELEMENTS", block_elements)
    for num_references in sorted({batch_size, max(1, batch_size // 2)}):
        rows, index = random_rows(num_references, batch_size)
        rows = (rows * 8).requires_grad_(True)  # some comparisons beyond the saturation (30) at tau = 0.2
        weights = torch.randn(num_references, batch_size, dtype=rows.dtype)
        chunked = soft_rank.soft_ranks_chunked(rows, index, 0.2)
        (chunked_grad,) = torch.autograd.grad((chunked * weights).sum(), rows)
        direct = soft_rank.soft_ranks_reference(rows, index, 0.2)
        (direct_grad,) = torch.autograd.grad((direct * weights).sum(), rows)
        torch.testing.assert_close(chunked, direct, rtol=0, atol=1e-12)
        torch.testing.assert_close(chunked_grad, direct_grad, rtol=0, atol=1e-11)
        hard_rows = torch.randint(0, 4, (num_references, batch_size), dtype=rows.dtype)  # many ties
        torch.testing.assert_close(soft_rank.hard_ranks_chunked(hard_rows, index), soft_rank.hard_ranks(hard_rows, index), rtol=0, atol=1e-15)


def test_loss_gradcheck_through_features_and_scaling() -> None:
    student = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 5, dtype=torch.float64)
    for scale in ("std", "median", "none"):
        loss = PerceptionCoherenceLoss(3, 5, temperature=0.5, scale=scale, reference_chunk_size=2)
        assert torch.autograd.gradcheck(lambda x: loss(x, teacher), (student,))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dissimilarity": "cosine"},
        {"dissimilarity": "squared_euclidean", "scale": "median", "temperature": 0.03},
        {"hard_teacher_ranks": True, "num_references": 20},
        {"teacher_dissimilarity": "cosine", "scale": "none", "reference_chunk_size": 7},
        {"locality": 0.1, "num_references": 20},
        {"locality": 0.3, "hard_teacher_ranks": True, "reference_chunk_size": 5},
    ],
)
def test_chunked_equals_reference(options: dict) -> None:
    student, teacher = torch.randn(96, 12), torch.randn(96, 20)
    chunked = loss_and_grad(build_loss("perception_coherence", 12, 20, implementation="chunked", **options), student, teacher)
    reference = loss_and_grad(build_loss("perception_coherence", 12, 20, implementation="reference", **options), student, teacher)
    torch.testing.assert_close(chunked[0], reference[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked[1], reference[1], atol=1e-6 * reference[1].abs().max().item(), rtol=1e-5)


def test_chunked_equals_reference_at_batch_512_with_sampled_references() -> None:
    student, teacher = torch.randn(512, 32), torch.randn(512, 48)
    options = dict(num_references=48)
    chunked = loss_and_grad(PerceptionCoherenceLoss(32, 48, implementation="auto", **options), student, teacher, seed=3)
    reference = loss_and_grad(PerceptionCoherenceLoss(32, 48, implementation="reference", **options), student, teacher, seed=3)
    assert abs(chunked[0].item() - reference[0].item()) <= 1e-5 * max(reference[0].item(), 1e-3)
    assert (chunked[1] - reference[1]).abs().max() <= 1e-5 * reference[1].abs().max()


def test_chunked_keeps_no_cubic_tensor_for_backward() -> None:
    """What autograd keeps between forward and backward: O(B^2) for chunked, O(B^3) for the direct formula."""
    batch_size = 128

    from autograd_memory import largest_kept

    def largest(implementation: str) -> int:
        student = torch.randn(batch_size, 8, requires_grad=True)
        loss = PerceptionCoherenceLoss(8, 8, implementation=implementation)
        return largest_kept(lambda: loss(student, torch.randn(batch_size, 8)))[1]

    # saved tensors and the Function's ctx attributes alike (a saved_tensors_hooks count misses the latter)
    assert largest("chunked") <= 4 * batch_size**2
    assert largest("reference") >= batch_size**3 // 2
    # Beyond saved tensors, the chunked path keeps one block of sigmoids, at most BLOCK_ELEMENTS values
    # (next test), so what it holds is bounded whatever the batch size.


def test_single_block_of_sigmoids_is_reused_in_backward_only_when_it_fits_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small batches keep forward's one block for backward; larger ones keep nothing cubic and recompute."""
    rows, index = random_rows(16, 16)

    def ranks_and_grad() -> tuple[torch.Tensor | None, torch.Tensor]:
        leaf = rows.clone().requires_grad_(True)
        ranks = soft_rank.soft_ranks_chunked(leaf, index, 0.3)
        kept = ranks.grad_fn.kept_block
        kept_shape = None if kept is None else tuple(kept.shape)
        (ranks * torch.linspace(-1, 1, 16, dtype=rows.dtype)).sum().backward()
        return kept_shape, leaf.grad

    kept_shape, kept_grad = ranks_and_grad()
    assert kept_shape == (16, 8, 8 + 16)  # offsets 1..8, each row padded by 8
    monkeypatch.setattr(soft_rank, "BLOCK_ELEMENTS", 3 * 8 * 24)  # several blocks: nothing kept
    recomputed_shape, recomputed_grad = ranks_and_grad()
    assert recomputed_shape is None
    torch.testing.assert_close(kept_grad, recomputed_grad, rtol=1e-12, atol=1e-14)


def test_second_backward_with_retain_graph_recomputes_the_consumed_block() -> None:
    student, teacher = torch.randn(24, 4, requires_grad=True), torch.randn(24, 6)
    value = PerceptionCoherenceLoss(4, 6)(student, teacher)
    (first,) = torch.autograd.grad(value, student, retain_graph=True)
    (second,) = torch.autograd.grad(value, student)
    torch.testing.assert_close(first, second, rtol=1e-6, atol=1e-9)


def test_checkpointed_student_dissimilarities_give_the_same_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    student, teacher = torch.randn(40, 6, dtype=torch.float64), torch.randn(40, 9, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(6, 9)
    kept = loss_and_grad(loss, student, teacher)
    monkeypatch.setattr(pc, "CHECKPOINT_MIN_BATCH", 2)  # recompute the [B, B] matrix in backward
    recomputed = loss_and_grad(loss, student, teacher)
    torch.testing.assert_close(kept, recomputed, rtol=1e-12, atol=1e-15)


def test_zero_when_student_equals_teacher_and_invariant_to_rigid_motions_and_scale() -> None:
    teacher = torch.randn(40, 6, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(6, 6)
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)
    student = torch.randn(40, 4, dtype=torch.float64)
    base = loss(student, teacher).item()
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    moved = 3.7 * student @ rotation + torch.randn(1, 4, dtype=torch.float64)  # rotate, scale, translate
    teacher_rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert loss(moved, teacher @ teacher_rotation - 5.0).item() == pytest.approx(base, rel=1e-9)


def test_soft_ranks_tend_to_hard_ranks_as_temperature_vanishes() -> None:
    rows, index = random_rows(10, 30)
    hard = soft_rank.hard_ranks(rows, index)
    torch.testing.assert_close(soft_rank.hard_ranks_chunked(rows, index, 3), hard)
    errors = [(soft_rank.soft_ranks_chunked(rows, index, tau) - hard).abs().max().item() for tau in (1e-1, 1e-2, 1e-6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9


def test_loss_with_near_hard_ranks_is_affine_in_spearman_rho() -> None:
    """With hard ranks on both sides, L = mean_i (1 - rho_i) * B / (6 (B - 2)), rho_i Spearman's rho at i."""
    batch_size = 25
    student, teacher = torch.randn(batch_size, 5, dtype=torch.float64), torch.randn(batch_size, 5, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(5, 5, temperature=1e-7, hard_teacher_ranks=True, scale="none")
    student_d, teacher_d = torch.cdist(student, student), torch.cdist(teacher, teacher)
    rhos = []
    for i in range(batch_size):
        others = [j for j in range(batch_size) if j != i]
        student_rank = student_d[i, others].argsort().argsort().double()
        teacher_rank = teacher_d[i, others].argsort().argsort().double()
        rhos.append(torch.corrcoef(torch.stack([student_rank, teacher_rank]))[0, 1].item())
    expected = sum(1 - rho for rho in rhos) / batch_size * batch_size / (6 * (batch_size - 2))
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_bf16_autocast_computes_in_float32() -> None:
    student = torch.randn(32, 8).bfloat16().requires_grad_(True)
    teacher = torch.randn(32, 8).bfloat16()
    loss = PerceptionCoherenceLoss(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(student, teacher)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(student.float(), teacher.float()).item(), rel=1e-6)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()


def test_options_are_validated_with_the_value_and_what_works() -> None:
    with pytest.raises(ValueError, match=r"implementation='fast'.*'auto', 'chunked', 'reference'"):
        PerceptionCoherenceLoss(4, 4, implementation="fast")
    with pytest.raises(ValueError, match=r"reference_chunk_size=0"):
        PerceptionCoherenceLoss(4, 4, reference_chunk_size=0)
    with pytest.raises(ValueError, match="at least 3 points"):
        PerceptionCoherenceLoss(4, 4)(torch.randn(2, 4), torch.randn(2, 4))


@st.composite
def degenerate_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Small batches with duplicated rows, zero rows or all-zero sides, at scales from 1e-30 to 1e30."""
    batch_size = draw(st.integers(3, 9))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    student, teacher = torch.randn(batch_size, 4, generator=generator), torch.randn(batch_size, 5, generator=generator)
    kind = draw(st.sampled_from(["duplicates", "zero_rows", "all_zero_student", "all_equal_teacher", "plain"]))
    if kind == "duplicates":
        student[1:] = student[0]
        teacher[-1] = teacher[0]
    elif kind == "zero_rows":
        student[0] = 0.0
        teacher[:2] = 0.0
    elif kind == "all_zero_student":
        student.zero_()
    elif kind == "all_equal_teacher":
        teacher[:] = teacher[0]
    scale = 10.0 ** draw(st.sampled_from([-30, -8, 0, 8, 30]))
    return student * scale, teacher * draw(st.sampled_from([1e-20, 1.0, 1e20]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=degenerate_batches(), implementation=st.sampled_from(["chunked", "reference"]))
def test_finite_value_and_gradient_on_degenerate_batches(batch: tuple[torch.Tensor, torch.Tensor], implementation: str) -> None:
    student, teacher = batch
    student.requires_grad_(True)
    value = PerceptionCoherenceLoss(4, 5, implementation=implementation)(student, teacher)
    value.backward()
    assert math.isfinite(value.item()) and 0.0 <= value.item() <= 1.0
    assert torch.isfinite(student.grad).all()


# ---- local perception coherence (locality) -------------------------------------------------------------
def written_out_soft_ranks(dissimilarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """``R_i(j) = 1/(B-2) sum_{k != i, j} sigmoid((d_ij - d_ik) / tau)`` for every reference: ``[B, B]``."""
    size = dissimilarities.shape[0]
    eye = torch.eye(size, dtype=torch.bool)
    valid = ~eye[:, :, None] & ~eye[:, None, :] & ~eye[None, :, :]  # j != i, k != i, k != j
    comparisons = (dissimilarities[:, :, None] - dissimilarities[:, None, :]) / temperature  # [i, j, k]
    return (torch.sigmoid(comparisons) * valid).sum(dim=2) / (size - 2)


def written_out_local_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, locality: float, references: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_i sum_{j != i} w_ij (R^S_i(j) - R^T_i(j))^2 / sum w``, ``w_ij = exp(-R^T_i(j) / locality)``,
    euclidean distances divided by the std of their off-diagonal entries, as plainly as it can be written."""
    def scaled(features: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(features, features)
        return distances / distances[~torch.eye(len(features), dtype=torch.bool)].std()

    student_ranks = written_out_soft_ranks(scaled(student), temperature)
    teacher_ranks = written_out_soft_ranks(scaled(teacher), temperature).detach()
    weights = torch.exp(-teacher_ranks / locality) * (1.0 - torch.eye(len(student), dtype=student.dtype))
    if references is not None:
        student_ranks, teacher_ranks, weights = student_ranks[references], teacher_ranks[references], weights[references]
    return (weights * (student_ranks - teacher_ranks).pow(2)).sum() / weights.sum()


@pytest.mark.parametrize("implementation", ["chunked", "reference"])
def test_locality_none_is_the_uniform_loss_bit_for_bit(implementation: str) -> None:
    student, teacher = torch.randn(33, 5), torch.randn(33, 7)
    uniform = loss_and_grad(PerceptionCoherenceLoss(5, 7, implementation=implementation), student, teacher)
    explicit_none = loss_and_grad(PerceptionCoherenceLoss(5, 7, implementation=implementation, locality=None), student, teacher)
    assert torch.equal(uniform[0], explicit_none[0]) and torch.equal(uniform[1], explicit_none[1])
    # ... and that is today's formula: the unweighted mean of rank_disagreement over the direct ranks.
    loss = PerceptionCoherenceLoss(5, 7, implementation="reference")
    index = torch.arange(33)
    student_ranks = pc.soft_ranks_reference(loss.scaled_dissimilarities(student, loss.dissimilarity), index, 0.1)
    teacher_ranks = pc.soft_ranks_reference(loss.scaled_dissimilarities(teacher, loss.teacher_dissimilarity), index, 0.1)
    today = pc.rank_disagreement(student_ranks, teacher_ranks, index)
    torch.testing.assert_close(uniform[0], today, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("implementation", ["chunked", "reference"])
def test_a_very_large_locality_gives_the_uniform_loss(implementation: str) -> None:
    student, teacher = torch.randn(40, 6), torch.randn(40, 9)
    uniform = loss_and_grad(PerceptionCoherenceLoss(6, 9, implementation=implementation), student, teacher)
    wide = loss_and_grad(PerceptionCoherenceLoss(6, 9, implementation=implementation, locality=1e6), student, teacher)
    torch.testing.assert_close(wide[0], uniform[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(wide[1], uniform[1], rtol=1e-5, atol=1e-5 * uniform[1].abs().max().item())


@pytest.mark.parametrize("implementation", ["chunked", "reference"])
def test_local_loss_value_and_gradient_equal_the_written_out_formula(
    implementation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float64, B = 7: value, autograd of the written-out formula, and gradcheck; several blocks when chunked."""
    monkeypatch.setattr(soft_rank, "BLOCK_ELEMENTS", 30)
    student = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 5, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(3, 5, temperature=0.5, locality=0.2, implementation=implementation, reference_chunk_size=2)
    value = loss(student, teacher)
    expected = written_out_local_loss(student, teacher, 0.5, 0.2)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad(value, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: loss(x, teacher), (student,))


def test_weighted_rank_disagreement_kernel_gradcheck_with_sampled_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soft_rank, "BLOCK_ELEMENTS", 20)
    rows, index = random_rows(4, 9)
    rows.requires_grad_(True)
    teacher_rows = torch.rand(4, 9, dtype=torch.float64).scatter(1, index[:, None], 0.0)
    teacher_ranks = soft_rank.soft_ranks_reference(teacher_rows, index, 0.3)
    weights = soft_rank.locality_weights(teacher_ranks, index, 0.15)
    assert (weights.gather(1, index[:, None]) == 0).all() and (weights <= 1).all()

    def chunked(x: torch.Tensor) -> torch.Tensor:
        return soft_rank.SoftRankDisagreement.apply(x, teacher_ranks, index, 0.3, 2, weights)

    def direct(x: torch.Tensor) -> torch.Tensor:
        return soft_rank.rank_disagreement(soft_rank.soft_ranks_reference(x, index, 0.3), teacher_ranks, index, weights)

    torch.testing.assert_close(chunked(rows), direct(rows), rtol=1e-12, atol=1e-14)
    (chunked_grad,) = torch.autograd.grad(chunked(rows), rows)
    (direct_grad,) = torch.autograd.grad(direct(rows), rows)
    torch.testing.assert_close(chunked_grad, direct_grad, rtol=1e-10, atol=1e-13)
    assert torch.autograd.gradcheck(chunked, (rows,))


@pytest.mark.parametrize("implementation", ["chunked", "reference"])
def test_local_loss_with_sampled_references_equals_the_written_out_formula_over_them(implementation: str) -> None:
    student, teacher = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 6, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(4, 6, temperature=0.2, locality=0.1, num_references=11, implementation=implementation)
    torch.manual_seed(5)
    value = loss(student, teacher)
    torch.manual_seed(5)
    references = torch.randperm(30)[:11]  # the loss's own draw
    expected = written_out_local_loss(student, teacher, 0.2, 0.1, references)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("implementation", ["chunked", "reference"])
@pytest.mark.parametrize("hard_teacher_ranks", [False, True])
def test_local_loss_is_zero_when_student_equals_teacher(implementation: str, hard_teacher_ranks: bool) -> None:
    features = torch.randn(25, 6, dtype=torch.float64)
    loss = PerceptionCoherenceLoss(
        6, 6, locality=0.05, implementation=implementation, hard_teacher_ranks=hard_teacher_ranks, temperature=1e-6
    )
    assert loss(features, features).item() == pytest.approx(0.0, abs=1e-12)
    soft = PerceptionCoherenceLoss(6, 6, locality=0.05, implementation=implementation)
    assert soft(features, features).item() == pytest.approx(0.0, abs=1e-12)


def test_small_locality_makes_near_neighbour_mistakes_cost_more_than_far_ones() -> None:
    """Swapping the student's ranks of the teacher's two nearest neighbours costs more than swapping its two
    farthest ones; with uniform weights (locality=None) the two mistakes cost the same."""
    batch_size = 12
    index = torch.arange(batch_size)
    order = torch.arange(batch_size - 1, dtype=torch.float64) / (batch_size - 2)  # ranks 0 .. 1 of the others
    teacher_ranks = torch.zeros(batch_size, batch_size, dtype=torch.float64)
    for i in range(batch_size):
        others = [j for j in range(batch_size) if j != i]
        teacher_ranks[i, others] = order
    near_swapped, far_swapped = teacher_ranks.clone(), teacher_ranks.clone()
    near_swapped[0, [1, 2]] = teacher_ranks[0, [2, 1]]
    far_swapped[0, [-2, -1]] = teacher_ranks[0, [-1, -2]]
    weights = soft_rank.locality_weights(teacher_ranks, index, 0.1)
    near = soft_rank.rank_disagreement(near_swapped, teacher_ranks, index, weights).item()
    far = soft_rank.rank_disagreement(far_swapped, teacher_ranks, index, weights).item()
    assert near > 100 * far
    uniform_near = soft_rank.rank_disagreement(near_swapped, teacher_ranks, index).item()
    uniform_far = soft_rank.rank_disagreement(far_swapped, teacher_ranks, index).item()
    assert uniform_near == pytest.approx(uniform_far, rel=1e-12)


def test_locality_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match=r"locality=0 must be > 0 .* or None \(uniform weights\)"):
        PerceptionCoherenceLoss(4, 4, locality=0)
    with pytest.raises(ValueError, match=r"option locality='near' has type str, but perception_coherence expects float \| None"):
        build_loss("perception_coherence", 4, 4, locality="near")


def test_the_memory_probe_sees_tensors_a_function_keeps_on_ctx() -> None:
    """The check above is not blind to ctx attributes: a Function hiding a cubic tensor there is caught."""
    from autograd_memory import largest_kept

    class HidesATensor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows):
            ctx.hidden = rows[:, :, None] * rows[:, None, :]  # [B, B, B], not through save_for_backward
            return rows.sum()

        @staticmethod
        def backward(ctx, grad):
            return grad * torch.ones_like(ctx.hidden[:, :, 0])

    rows = torch.randn(32, 32, requires_grad=True)
    _, largest = largest_kept(lambda: HidesATensor.apply(rows))
    assert largest == 32**3
