"""Two-sided locality and top-k of perception coherence (``locality_sides="both"``, ``top_k``; ours, the candidates
registered in docs/study.md): the loss equals the registration's formula written out over ``[B, B, B]`` tensors, in
value and gradient, for the pairwise (chunked and reference) and the sorted soft rank; ``top_k = B - 1`` and a huge
locality give back the plain loss; an intruder weighs as a near neighbour; the plain loss's invariances hold;
shares of rows add up to the whole batch; and the loss contract holds with the options on."""

from __future__ import annotations

import pytest
import torch

from hf_pcoh.losses import PerceptionCoherenceLoss
from hf_pcoh.losses import soft_rank, sorted_soft_rank
from loss_contract import (
    check_degenerate_batches, check_finite_value_and_gradients, check_gradient, check_invariances,
    check_zero_at_agreement,
)

# (soft_rank, implementation) of every way the loss is computed.
KERNELS = [("pairwise", "chunked"), ("pairwise", "reference"), ("sorted", "auto")]
KERNEL_IDS = ["chunked", "reference", "sorted"]


def make_loss(student_dim: int, teacher_dim: int, kernel: tuple[str, str], **options) -> PerceptionCoherenceLoss:
    soft_rank_name, implementation = kernel
    return PerceptionCoherenceLoss(student_dim, teacher_dim, soft_rank=soft_rank_name, implementation=implementation,
                                   **options)


def loss_and_grad(loss: PerceptionCoherenceLoss, student: torch.Tensor, teacher: torch.Tensor, **inputs):
    student = student.detach().clone().requires_grad_(True)
    value = loss(student, teacher, **inputs)
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), grad


# ---- the registration's formula, written out -------------------------------------------------------------
def scaled_distances(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances divided by the std of their off-diagonal entries (the loss's defaults): ``[B, B]``."""
    distances = torch.cdist(features, features)
    return distances / distances[~torch.eye(len(features), dtype=torch.bool)].std()


def comparison_mask(size: int) -> torch.Tensor:
    eye = torch.eye(size, dtype=torch.bool)
    return ~eye[:, :, None] & ~eye[:, None, :] & ~eye[None, :, :]  # [i, j, k]: j != i, k != i, k != j


def written_out_soft_ranks(dissimilarities: torch.Tensor, temperature: float, kernel: str) -> torch.Tensor:
    """``R_i(j) = 1/(B-2) sum_{k != i, j} g((d_ij - d_ik) / tau)``, ``g`` the sigmoid or the ramp: ``[B, B]``."""
    size = len(dissimilarities)
    comparisons = (dissimilarities[:, :, None] - dissimilarities[:, None, :]) / temperature  # [i, j, k]
    steps = torch.sigmoid(comparisons) if kernel == "pairwise" else (0.5 + comparisons / 4).clamp(0, 1)
    return (steps * comparison_mask(size)).sum(dim=2) / (size - 2)


def integer_ranks(dissimilarities: torch.Tensor) -> torch.Tensor:
    """The registration's hard ranks: ``R_i(j) = 1 + #{k != i, j : d_ik < d_ij}`` (ties 1/2), 1 = nearest."""
    nearer = (dissimilarities[:, None, :] < dissimilarities[:, :, None]).double()  # [i, j, k]: d_ik < d_ij
    tied = (dissimilarities[:, None, :] == dissimilarities[:, :, None]).double()
    return 1.0 + ((nearer + 0.5 * tied) * comparison_mask(len(dissimilarities))).sum(dim=2)


def strictly_nearer(dissimilarities: torch.Tensor) -> torch.Tensor:
    """``#{k != i, j : d_ik < d_ij}``: ``j`` is among the ``k`` nearest of ``i`` when this is below ``k``."""
    nearer = (dissimilarities[:, None, :] < dissimilarities[:, :, None]).double()
    return (nearer * comparison_mask(len(dissimilarities))).sum(dim=2)


def registered_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, kernel: str,
    decay_per_rank: float | None = None, top_k: int | None = None,
) -> torch.Tensor:
    """``sum_ij w_ij (R^S_i(j) - R^T_i(j))^2 / sum w`` with ``w_ij = max(exp(-(R^T_i(j) - 1) lambda'),
    exp(-(R^S_i(j) - 1) lambda'))`` on integer hard ranks (``decay_per_rank`` = lambda', or 1) times ``1[j among the
    top_k nearest of i in either space]`` (or 1), ``w_ii = 0``: the registered candidates, as plainly as possible."""
    student_d, teacher_d = scaled_distances(student), scaled_distances(teacher).detach()
    errors = (written_out_soft_ranks(student_d, temperature, kernel) - written_out_soft_ranks(teacher_d, temperature, kernel)) ** 2
    weights = 1.0 - torch.eye(len(student), dtype=student.dtype)
    student_d = student_d.detach()
    if decay_per_rank is not None:
        weights = weights * torch.maximum(torch.exp(-(integer_ranks(teacher_d) - 1) * decay_per_rank),
                                          torch.exp(-(integer_ranks(student_d) - 1) * decay_per_rank))
    if top_k is not None:
        weights = weights * ((strictly_nearer(teacher_d) < top_k) | (strictly_nearer(student_d) < top_k)).double()
    return (weights * errors).sum() / weights.sum()


def locality_for(decay_per_rank: float, batch_size: int) -> float:
    """The loss's ``locality`` for the registration's decay per rank: ``1 / ((B - 2) lambda')``."""
    return 1.0 / ((batch_size - 2) * decay_per_rank)


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize(("decay_per_rank", "top_k"), [(0.3, None), (None, 3), (0.1, 4), (1.0, 1)],
                         ids=["two-sided", "top-3", "two-sided+top-4", "steep+top-1"])
def test_value_and_gradient_equal_the_registered_formula(
    kernel: tuple[str, str], decay_per_rank: float | None, top_k: int | None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """float64, B = 9: value and gradient against autograd of the written-out formula, and gradcheck; several
    blocks of comparisons when chunked."""
    monkeypatch.setattr(soft_rank, "BLOCK_ELEMENTS", 30)
    batch_size = 9
    student = torch.randn(batch_size, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(batch_size, 5, dtype=torch.float64)
    options = {"top_k": top_k}
    if decay_per_rank is not None:
        options.update(locality=locality_for(decay_per_rank, batch_size), locality_sides="both")
    loss = make_loss(3, 5, kernel, temperature=0.5, reference_chunk_size=2 if kernel[1] == "chunked" else None, **options)
    value = loss(student, teacher)
    expected = registered_loss(student, teacher, 0.5, kernel[0], decay_per_rank, top_k)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad(value, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: loss(x, teacher), (student,))


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_top_k_of_every_other_point_and_a_huge_two_sided_locality_give_the_plain_loss(kernel: tuple[str, str]) -> None:
    student, teacher = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 6, dtype=torch.float64)
    plain = loss_and_grad(make_loss(4, 6, kernel), student, teacher)
    for options in ({"top_k": 29}, {"top_k": 1000}, {"locality": 1e9, "locality_sides": "both"}):
        value, grad = loss_and_grad(make_loss(4, 6, kernel, **options), student, teacher)
        torch.testing.assert_close(value, plain[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grad, plain[1], rtol=1e-7, atol=1e-9 * plain[1].abs().max().item())


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_a_top_k_of_few_points_is_the_mean_over_those_terms_only(kernel: tuple[str, str]) -> None:
    """The plain loss's per-pair errors (each rank against the whole row), averaged over the chosen pairs only."""
    student, teacher = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    loss = make_loss(3, 3, kernel, top_k=2)
    with torch.no_grad():
        selection = sorted_soft_rank.top_k_selection(
            loss.scaled_dissimilarities(teacher, loss.teacher_dissimilarity),
            loss.scaled_dissimilarities(student, loss.dissimilarity), torch.arange(12), 2)
    # each row keeps its 2 nearest in either space: between 2 and 4 points, never the reference itself
    assert ((selection.sum(dim=1) >= 2) & (selection.sum(dim=1) <= 4)).all() and (selection.diagonal() == 0).all()
    plain = make_loss(3, 3, ("pairwise", "reference") if kernel[0] == "pairwise" else kernel)
    index = torch.arange(12)
    if kernel[0] == "pairwise":
        student_ranks = soft_rank.soft_ranks_reference(plain.scaled_dissimilarities(student, plain.dissimilarity), index, 0.1)
    else:
        student_ranks = sorted_soft_rank.sorted_soft_ranks(plain.scaled_dissimilarities(student, plain.dissimilarity), index, 0.1)
    teacher_ranks = plain.teacher_ranks(plain.scaled_dissimilarities(teacher, plain.teacher_dissimilarity), index)
    errors = (student_ranks - teacher_ranks) ** 2
    expected = (errors * selection).sum() / selection.sum()
    torch.testing.assert_close(loss(student, teacher), expected, rtol=1e-10, atol=1e-13)


def test_two_sided_weights_are_never_below_one_sided_ones_and_an_intruder_weighs_as_a_nearest_neighbour() -> None:
    """With hard teacher ranks both weighings rank the teacher alike, so ``max(., .)`` can only add. An intruder —
    the teacher's farthest point from reference 0, put next to it by the student — weighs ``exp(-1 / lambda)``
    one-sided and 1 (a nearest neighbour's weight) two-sided."""
    torch.manual_seed(0)
    batch_size = 20
    teacher = torch.randn(batch_size, 5, dtype=torch.float64)
    student = teacher.clone()
    farthest = int(torch.cdist(teacher[:1], teacher)[0].argmax())
    student[farthest] = teacher[0] + 1e-3
    references = torch.arange(batch_size)
    weights = {}
    for sides in ("teacher", "both"):
        loss = PerceptionCoherenceLoss(5, 5, locality=0.1, locality_sides=sides, hard_teacher_ranks=True)
        teacher_d = loss.scaled_dissimilarities(teacher, loss.teacher_dissimilarity)
        student_d = loss.scaled_dissimilarities(student, loss.dissimilarity)
        weights[sides], normaliser = loss.pair_weights(teacher_d, student_d, loss.teacher_ranks(teacher_d, references),
                                                       references, shared=False)
        assert normaliser is None
    assert (weights["both"] >= weights["teacher"]).all()
    assert weights["teacher"][0, farthest].item() == pytest.approx(torch.exp(torch.tensor(-1 / 0.1)).item())
    assert weights["both"][0, farthest].item() == 1.0
    # and the intruder costs more under two-sided weights: the loss rises above the one-sided one
    one_sided = PerceptionCoherenceLoss(5, 5, locality=0.1, hard_teacher_ranks=True)(student, teacher)
    two_sided = PerceptionCoherenceLoss(5, 5, locality=0.1, locality_sides="both", hard_teacher_ranks=True)(student, teacher)
    assert two_sided > one_sided


OPTIONS = [{"locality": 0.2, "locality_sides": "both"}, {"top_k": 3}, {"locality": 0.1, "locality_sides": "both", "top_k": 5}]
OPTION_IDS = ["two-sided", "top-3", "two-sided+top-5"]


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_zero_when_the_student_ranks_as_the_teacher_and_invariant_to_rigid_motions_and_scale(
    kernel: tuple[str, str], options: dict,
) -> None:
    teacher = torch.randn(25, 6, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    loss = make_loss(6, 6, kernel, **options)
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(0.3 * teacher @ rotation + 2.0, teacher).item() == pytest.approx(0.0, abs=1e-12)  # same ranks
    student = torch.randn(25, 4, dtype=torch.float64)
    loss = make_loss(4, 6, kernel, **options)
    base = loss(student, teacher).item()
    student_rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    moved = 3.7 * student @ student_rotation + torch.randn(1, 4, dtype=torch.float64)
    assert loss(moved, 0.01 * teacher @ rotation - 5.0).item() == pytest.approx(base, rel=1e-9)
    cosine = make_loss(4, 6, kernel, dissimilarity="cosine", **options)
    assert cosine(40.0 * student, 1e-3 * teacher).item() == pytest.approx(cosine(student, teacher).item(), rel=1e-9)


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("options", [{}, {"locality": 0.2}, *OPTIONS], ids=["plain", "one-sided", *OPTION_IDS])
def test_shares_of_rows_add_up_to_the_whole_batch(kernel: tuple[str, str], options: dict) -> None:
    """What the global batch does with several processes (``hf_pcoh.global_batch``): each scores its own rows, weighed
    by its share ``n_r / B``; the shares' sum is the one-process value and gradient."""
    student, teacher = torch.randn(11, 3, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
    loss = make_loss(3, 5, kernel, **options)
    assert loss.scores_row_shares()
    whole = loss_and_grad(loss, student, teacher)
    value, grad = torch.zeros((), dtype=torch.float64), torch.zeros_like(student)
    for rows in (torch.arange(0, 3), torch.arange(3, 8), torch.arange(8, 11)):
        share = loss_and_grad(loss, student, teacher, rows=rows)
        value += len(rows) / 11 * share[0]
        grad += len(rows) / 11 * share[1]
    torch.testing.assert_close(value, whole[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, whole[1], rtol=1e-9, atol=1e-12)


def test_sampled_references_still_refuse_shares_of_rows() -> None:
    loss = PerceptionCoherenceLoss(3, 3, top_k=2, num_references=4)
    assert not loss.scores_row_shares()
    with pytest.raises(ValueError, match="only with every row a reference"):
        loss(torch.randn(8, 3), torch.randn(8, 3), rows=torch.arange(4))


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("check", [check_finite_value_and_gradients, check_degenerate_batches, check_gradient,
                                   check_zero_at_agreement, check_invariances])
def test_the_loss_contract_holds_with_the_options_on(kernel: tuple[str, str], options: dict, check) -> None:
    """The contract's checks on values (tests/loss_contract.py), with these options instead of the defaults."""
    configured = {**options, "soft_rank": kernel[0], "implementation": kernel[1]}

    class Configured(PerceptionCoherenceLoss):
        def __init__(self, student_dim: int, teacher_dim: int, **overrides) -> None:
            super().__init__(student_dim, teacher_dim, **{**configured, **overrides})

    check(Configured)


def test_options_are_validated_with_the_value_and_what_works() -> None:
    with pytest.raises(ValueError, match=r"locality_sides='student' must be 'teacher' .* or 'both'"):
        PerceptionCoherenceLoss(4, 4, locality=0.1, locality_sides="student")
    with pytest.raises(ValueError, match=r"locality_sides='both' weighs pairs by locality, which is None"):
        PerceptionCoherenceLoss(4, 4, locality_sides="both")
    for top_k in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match=rf"top_k={top_k!r} must be a positive integer"):
            PerceptionCoherenceLoss(4, 4, top_k=top_k)
    loss = PerceptionCoherenceLoss(4, 4, locality=0.1, locality_sides="both", top_k=10, soft_rank="sorted")
    assert loss.get_config_dict()["locality_sides"] == "both" and loss.get_config_dict()["top_k"] == 10
    assert "locality_sides='both', top_k=10" in repr(loss)
