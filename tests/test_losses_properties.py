"""Properties of the loss set that users rely on: the registry, the contract every registered loss is held to
(tests/loss_contract.py: zeros at agreement, invariances, gradients, finite numbers... as each class declares),
the Procrustes paper's counter-example to CKA and projected MSE, CosPress's training split."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import hf_pcoh
from hf_pcoh import citations
from hf_pcoh.config import DistillationConfig
from hf_pcoh.losses import (
    LOSSES,
    CKALoss,
    CosPressLoss,
    GramLoss,
    LogitKDLoss,
    ProcrustesLoss,
    ProjectedMSELoss,
    build_loss,
    check_loss_options,
    describe_loss_options,
    register_loss,
)
from hf_pcoh.losses.base import INVARIANCES
from hf_pcoh.losses.cospress import similarity_kl

from loss_contract import CONTRACT_CHECKS, transformed

# The losses shipped in hf_pcoh/losses/: the package must find and register each one (every other test here
# runs over whatever LOSSES holds).
BUILT_IN_LOSSES = {
    "perception_coherence": "PerceptionCoherenceLoss", "cospress": "CosPressLoss", "procrustes": "ProcrustesLoss",
    "gram": "GramLoss", "cka": "CKALoss", "projected_mse": "ProjectedMSELoss", "rkd_distance": "RKDDistanceLoss",
    "logit_kd": "LogitKDLoss",
}


def orthogonal(size: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))[0]


# ---- registry ---------------------------------------------------------------------------------------
def test_every_loss_module_registers_itself_and_is_exported_by_its_class_name() -> None:
    assert set(BUILT_IN_LOSSES) <= set(LOSSES)
    for name, class_name in BUILT_IN_LOSSES.items():
        assert getattr(hf_pcoh, class_name) is getattr(hf_pcoh.losses, class_name) is LOSSES[name]
        assert class_name in hf_pcoh.__all__ and class_name in hf_pcoh.losses.__all__
        assert citations.loss_citation(name) == LOSSES[name].citation  # the card's citation is the class's


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_keeps_the_contract_it_declares(name: str, check) -> None:
    check(LOSSES[name])


def test_the_contract_can_check_every_invariance_a_loss_may_declare() -> None:
    student, teacher = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    for invariance in INVARIANCES:
        assert transformed(invariance, student, teacher), invariance


def test_registration_refuses_unknown_invariances_and_taken_names() -> None:
    class Sloppy(ProjectedMSELoss):
        name = "sloppy"
        invariances = frozenset({"rotation"})

    with pytest.raises(TypeError, match=r"Sloppy.invariances names \['rotation'\], which are not invariances; use some of"):
        register_loss(Sloppy)

    class Impostor(ProjectedMSELoss):
        name = "cka"

    with pytest.raises(ValueError, match="a loss named 'cka' is already registered"):
        register_loss(Impostor)
    assert "sloppy" not in LOSSES and LOSSES["cka"] is CKALoss


def test_get_config_dict_reports_the_options_as_given() -> None:
    loss = build_loss("perception_coherence", 4, 6, temperature=0.05, dissimilarity="cosine", num_references=16)
    config = loss.get_config_dict()
    assert (config["temperature"], config["dissimilarity"], config["num_references"]) == (0.05, "cosine", 16)
    assert config["scale"] == "std" and config["teacher_dissimilarity"] is None  # defaults, as given
    assert CosPressLoss(4, 6, temperatures=(0.02, 0.04)).get_config_dict()["temperatures"] == [0.02, 0.04]


def test_unknown_loss_name_fails_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss 'procrustez'. Did you mean 'procrustes'") as error:
        build_loss("procrustez", student_dim=4, teacher_dim=4)
    assert all(name in str(error.value) for name in LOSSES)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("cospress", {"form": "joint"}, r"form='joint' must be 'full'"),
        ("cospress", {"temperatures": [0.1, 0.0]}, r"temperatures=\[0.1, 0.0\]"),
        ("procrustes", {"max_tokens": 1}, r"max_tokens=1 must be"),
        ("rkd_distance", {"delta": -1.0}, r"delta=-1.0 must be > 0"),
        ("logit_kd", {"temperature": 0}, r"temperature=0 must be > 0"),
    ],
)
def test_bad_options_name_the_option_and_the_value(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_loss(name, student_dim=4, teacher_dim=4, **options)


# ---- options: checked from the constructor's signature, when the config is built ------------------------
@pytest.fixture
def no_model_may_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Option errors must come before any model exists: building one fails the test."""
    import transformers

    def refuse(*args, **kwargs) -> None:
        raise AssertionError("a model was built before the loss options were checked")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)


def distillation_config(tmp_path, **fields) -> DistillationConfig:
    return DistillationConfig(
        output_dir=str(tmp_path), report_to="none", teacher_config={"model_type": "bert", "hidden_size": 32},
        student_config={"num_hidden_layers": 1}, **fields,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"loss_kwargs": {"perception_coherence": {"temprature": 0.05}}},
         r"^loss_kwargs\['perception_coherence'\]: unknown perception_coherence option 'temprature'. Did you mean "
         r"'temperature'\? Known: dissimilarity, hard_teacher_ranks, implementation, locality, locality_sides, "
         r"num_references, reference_chunk_size, scale, soft_rank, teacher_dissimilarity, temperature, top_k.$"),
        ({"loss_kwargs": {"perception_coherence": {"num_references": 16.5}}},
         r"^loss_kwargs\['perception_coherence'\]: option num_references=16.5 has type float, but perception_coherence "
         r"expects int \| None \(default None\)$"),
        ({"loss_kwargs": {"perception_coherence": {"temperature": "0.1"}}},
         r"option temperature='0.1' has type str, but perception_coherence expects float \(default 0.1\)"),
        ({"loss_kwargs": {"perception_coherence": {"hard_teacher_ranks": 1}}},
         r"option hard_teacher_ranks=1 has type int, but perception_coherence expects bool \(default False\)"),
        ({"loss_kwargs": {"perception_coherence": {"scale": 2}}},
         r"option scale=2 has type int, but perception_coherence expects 'std' \| 'median' \| 'none' \(default 'std'\)"),
        ({"loss_kwargs": {"perception_coherence": {"scale": "mad"}}},
         r"^loss_kwargs\['perception_coherence'\]: scale='mad' must be one of 'std', 'median', 'none'$"),
        ({"losses": ["cospress"], "loss_kwargs": {"cospress": {"temperatures": 0.05}}},
         r"option temperatures=0.05 has type float, but cospress expects list of float"),
        ({"loss_kwargs": {"perception_coherence": {"temperature": 0}}},
         r"^loss_kwargs\['perception_coherence'\]: temperature=0 must be > 0 \(try 0.1\)$"),
        ({"loss_kwargs": {"perception_coherence": {"dissimilarity": "manhattan"}}},
         r"loss_kwargs\['perception_coherence'\]: unknown dissimilarity 'manhattan'"),
        ({"loss_kwargs": {"cka": {"max_tokens": 64}}},
         r"^loss_kwargs has options for 'cka', which this run does not use \(losses=\['perception_coherence'\]\): "
         r"add 'cka' to --losses or remove its options$"),
        ({"loss_kwargs": {"procrustez": {}}}, r"loss_kwargs: unknown loss 'procrustez'. Did you mean 'procrustes'"),
        ({"loss_kwargs": {"perception_coherence": 0.05}},
         r"^loss_kwargs\['perception_coherence'\]: the options of loss 'perception_coherence' must be a mapping of "
         r"option names to values, e.g. "
         r"\{'perception_coherence': \{'temperature': ...\}\}, got 0.05$"),
    ],
    ids=["unknown option", "float for int", "string for float", "int for bool", "int for a Literal of str", "value outside a Literal",
         "number for a list", "bad value", "unknown dissimilarity", "options for an unused loss", "unknown loss",
         "options not a mapping"],
)
def test_bad_loss_options_fail_when_the_config_is_built(fields: dict, message: str, tmp_path, no_model_may_be_built) -> None:
    with pytest.raises(ValueError, match=message):
        distillation_config(tmp_path, **fields)


def test_good_loss_options_pass_and_json_from_the_command_line_is_parsed(tmp_path, no_model_may_be_built) -> None:
    config = distillation_config(
        tmp_path, losses=["perception_coherence", "cospress"],
        loss_kwargs='{"perception_coherence": {"temperature": 0.05, "locality": 0.1, "num_references": 16}, '
                    '"cospress": {"temperatures": [0.02, 0.04], "lambda_local": 0}}',
    )
    assert config.loss_options("perception_coherence") == {"temperature": 0.05, "locality": 0.1, "num_references": 16}
    assert config.loss_options("cospress") == {"temperatures": [0.02, 0.04], "lambda_local": 0}


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_config_help_lists_every_loss_with_its_options(name: str) -> None:
    help_text = DistillationConfig.__dataclass_fields__["loss_kwargs"].metadata["help"]
    assert f"{name}: {describe_loss_options(name)}" in help_text


def test_checking_options_builds_nothing_and_draws_no_random_numbers() -> None:
    state = torch.random.get_rng_state()
    assert check_loss_options("cospress", {"lambda_token": 0.5}) == {"lambda_token": 0.5}
    assert check_loss_options("projected_mse", {"projector": "linear"}) == {"projector": "linear"}
    assert torch.equal(torch.random.get_rng_state(), state)


def test_build_loss_checks_option_names_and_types_too() -> None:
    with pytest.raises(ValueError, match=r"unknown rkd_distance option 'delt'. Did you mean 'delta'\? Known: delta."):
        build_loss("rkd_distance", 4, 4, delt=2.0)
    with pytest.raises(ValueError, match=r"option max_tokens=True has type bool, but gram expects int \(default 4096\)"):
        build_loss("gram", 4, 4, max_tokens=True)


# ---- zero at agreement (the others: the contract's zero_at_agreement) ------------------------------
def test_projected_mse_is_exactly_zero_at_agreement() -> None:
    features = torch.randn(8, 6)
    assert ProjectedMSELoss(6, 6)(features, features).item() == 0.0


def test_cospress_vanishes_when_h_preserves_cosines_and_student_equals_h_of_teacher() -> None:
    teacher = torch.randn(6, 5, 8)
    teacher = (teacher - teacher.mean(-1, keepdim=True)) / teacher.std(-1, unbiased=False, keepdim=True)
    loss = CosPressLoss(8, 8)
    with torch.no_grad():  # h = LayerNorm (identity on these standardised rows) + identity map
        loss.compression[1].weight.copy_(torch.eye(8))
        loss.compression[1].bias.zero_()
        student = loss.compress(teacher)
    assert loss(student, teacher).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(student[:, 0], teacher[:, 0]).item() == pytest.approx(0.0, abs=1e-5)


# ---- set geometry (the invariances: the contract) --------------------------------------------------
@pytest.mark.parametrize("loss_class", [ProcrustesLoss, GramLoss, CKALoss])
def test_set_losses_are_invariant_to_all_moves_at_once_and_lie_in_their_range(loss_class: type) -> None:
    student, teacher = torch.randn(30, 5, dtype=torch.float64), torch.randn(30, 9, dtype=torch.float64)
    loss = loss_class(5, 9)  # different widths
    base = loss(student, teacher).item()
    moved_student = 0.01 * student @ orthogonal(5) + 4.0
    moved_teacher = 250.0 * teacher @ orthogonal(9) - 1.0
    assert loss(moved_student, moved_teacher).item() == pytest.approx(base, rel=1e-9, abs=1e-12)
    assert 0.0 < base < (1.0 if loss_class is CKALoss else 2.0)


def test_procrustes_equals_the_explicit_orthogonal_alignment_for_different_widths() -> None:
    student, teacher = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 6, dtype=torch.float64)

    def normalised(x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(0)
        return centred / centred.norm()

    s, t = normalised(student), normalised(teacher)
    u, _, vh = torch.linalg.svd(s.T @ t, full_matrices=False)
    aligned = s @ (u @ vh)  # Q [3, 6] with orthonormal rows: the best rotation of S into T's space
    explicit = (aligned - t).pow(2).sum().item()
    assert ProcrustesLoss(3, 6)(student, teacher).item() == pytest.approx(explicit, rel=1e-9)
    for _ in range(5):  # no other Q with orthonormal rows does better
        other = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))[0].T
        assert (s @ other - t).pow(2).sum().item() >= explicit


def test_gram_loss_is_the_distance_between_normalised_gram_matrices_either_way_round() -> None:
    student, teacher = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 4, dtype=torch.float64)
    small_widths = GramLoss(3, 4)(student, teacher).item()  # N > d_s + d_t: computed through the widths
    s, t = student - student.mean(0), teacher - teacher.mean(0)
    s, t = s / s.norm(), t / t.norm()
    assert small_widths == pytest.approx((s @ s.T - t @ t.T).pow(2).sum().item(), rel=1e-9)


def test_geometry_counter_example_cka_and_projected_mse_vanish_but_procrustes_does_not() -> None:
    """Bhattarai et al.'s point: the teacher is two antiparallel clusters whose points are each nudged along
    their own orthogonal direction; the student keeps the clusters but crushes the nudges 1000-fold. A linear
    map undoes the squashing (projected MSE = 0) and CKA is blind to low-variance directions (1 - CKA ~ 1e-5),
    yet the geometry differs and the Procrustes distance sees it."""
    points, nudged, nudge = 200, 100, 0.3
    teacher = torch.zeros(points, nudged + 1, dtype=torch.float64)
    teacher[:, 0] = torch.where(torch.arange(points) % 2 == 0, 1.0, -1.0)
    teacher[torch.arange(nudged), 1 + torch.arange(nudged)] = nudge
    student = teacher.clone()
    student[:, 1:] *= 1e-3
    width = nudged + 1
    mse = ProjectedMSELoss(width, width, projector="linear").double()
    with torch.no_grad():
        mse.projector.weight.copy_(torch.linalg.lstsq(student, teacher).solution.T)
    relative_mse = mse(student, teacher).item() / teacher.pow(2).mean().item()
    cka_loss = CKALoss(width, width)(student, teacher).item()
    procrustes = ProcrustesLoss(width, width)(student, teacher).item()
    assert relative_mse < 1e-6
    assert cka_loss < 5e-5
    assert procrustes > 0.03 and procrustes > 500 * cka_loss


def test_token_level_rows_follow_the_mask_and_are_subsampled() -> None:
    student, teacher = torch.randn(3, 6, 4), torch.randn(3, 6, 5)
    mask = torch.ones(3, 6)
    mask[1, 3:] = 0
    padded = student.clone()
    padded[1, 3:] = 1e6  # padding must not matter
    for loss_class in (ProcrustesLoss, GramLoss, CKALoss):
        loss = loss_class(4, 5)
        assert loss(padded, teacher, mask=mask).item() == pytest.approx(loss(student, teacher, mask=mask).item(), rel=1e-5)
        kept = mask.bool()
        assert loss(student, teacher, mask=mask).item() == pytest.approx(loss(student[kept], teacher[kept]).item(), rel=1e-5)
    subsampled = ProcrustesLoss(4, 5, max_tokens=5)(student, teacher, mask=mask)
    assert math.isfinite(subsampled.item())


# ---- CosPress ------------------------------------------------------------------------------------
def test_cospress_full_form_is_the_symmetrised_joint_kl() -> None:
    """``full`` = KL between t-SNE-style joints P_ij ∝ p(j|i) + p(i|j), written out directly here."""
    teacher_cos, compressed_cos = torch.rand(6, 6) * 2 - 1, torch.rand(6, 6) * 2 - 1
    valid = ~torch.eye(6, dtype=torch.bool)

    def joint(cosines: torch.Tensor, tau: float) -> torch.Tensor:
        weights = torch.exp(cosines / tau) * valid
        conditional = weights / weights.sum(1, keepdim=True)
        symmetric = conditional + conditional.T
        return symmetric / symmetric.sum()

    for tau in (0.5, 0.05):
        p, q = joint(teacher_cos, tau), joint(compressed_cos, tau)
        expected = (p[valid] * (p[valid] / q[valid]).log()).sum()
        torch.testing.assert_close(similarity_kl(teacher_cos, compressed_cos, valid, tau, "full"), expected, rtol=1e-4, atol=1e-6)
        rowwise = F.kl_div(F.log_softmax(compressed_cos / tau - 1e9 * ~valid, 1), F.log_softmax(teacher_cos / tau - 1e9 * ~valid, 1), log_target=True, reduction="batchmean")
        torch.testing.assert_close(similarity_kl(teacher_cos, compressed_cos, valid, tau, "rowwise"), rowwise, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("form", ["full", "rowwise"])
def test_cospress_analytic_gradient_equals_autograd_of_the_written_out_kl(form: str) -> None:
    """Two token sets, the second with two padding tokens, two temperatures at once, float64."""
    generator = torch.Generator().manual_seed(0)
    teacher_cos = torch.rand(2, 5, 5, generator=generator, dtype=torch.float64) * 2 - 1
    compressed_cos = (torch.rand(2, 5, 5, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    real = torch.tensor([[True] * 5, [True, True, True, False, False]])
    valid = real[:, :, None] & real[:, None, :] & ~torch.eye(5, dtype=torch.bool)
    taus = torch.tensor([0.5, 0.2], dtype=torch.float64).view(2, 1, 1, 1)

    def written_out(cosines: torch.Tensor) -> torch.Tensor:
        weights = torch.exp(cosines / taus) * valid
        conditional = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
        if form == "full":
            symmetric = conditional + conditional.transpose(-1, -2)
            return symmetric / symmetric.sum(dim=(-2, -1), keepdim=True)
        return conditional

    p, q = written_out(teacher_cos), written_out(compressed_cos)
    terms = torch.where(valid, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), 0.0)
    rows = valid.any(-1)
    expected = terms.sum((-2, -1)) if form == "full" else (terms.sum(-1) * rows).sum(-1) / rows.sum(-1)
    actual = similarity_kl(teacher_cos, compressed_cos, valid, taus, form)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    weights = torch.randn(2, 2, dtype=torch.float64, generator=generator)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), compressed_cos)
    (actual_grad,) = torch.autograd.grad((actual * weights).sum(), compressed_cos)
    torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-8, atol=1e-12)
    assert torch.autograd.gradcheck(lambda cosines: similarity_kl(teacher_cos, cosines, valid, taus, form), (compressed_cos,))


def test_cospress_map_losses_train_h_only_and_feature_losses_train_the_student_only() -> None:
    student = torch.randn(4, 5, 6, requires_grad=True)
    teacher = torch.randn(4, 5, 10)
    maps_only = CosPressLoss(6, 10, lambda_feature=0.0, lambda_token=0.0)
    maps_only(student, teacher).backward()
    assert student.grad is None and maps_only.compression[1].weight.grad.abs().sum() > 0
    features_only = CosPressLoss(6, 10, lambda_local=0.0, lambda_global=0.0)
    features_only(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and features_only.compression[1].weight.grad is None


def test_cospress_reports_each_term_and_the_total_is_their_weighted_sum() -> None:
    student, teacher = torch.randn(4, 5, 6), torch.randn(4, 5, 10)
    mask = torch.ones(4, 5)
    mask[2, 3:] = 0
    loss = CosPressLoss(6, 10, lambda_local=0.5, lambda_global=2.0, lambda_feature=1.5, lambda_token=0.25)
    total = loss(student, teacher, mask=mask)
    assert set(loss.parts) == {"global_map", "token", "local_map", "feature"}
    weights = {"global_map": 2.0, "token": 0.25, "local_map": 0.5, "feature": 1.5}
    expected = sum(weights[part] * value for part, value in loss.parts.items())
    torch.testing.assert_close(total.detach(), expected, rtol=1e-6, atol=1e-7)
    assert all(not value.requires_grad and value.dim() == 0 for value in loss.parts.values())
    loss(student[:, 0], teacher[:, 0])  # pooled: no token-level terms
    assert set(loss.parts) == {"global_map", "token"}
    CosPressLoss(6, 10, lambda_token=0.0)(student[:, 0], teacher[:, 0])
    single_term = CosPressLoss(6, 10, lambda_token=0.0)
    single_term(student[:, 0], teacher[:, 0])
    assert set(single_term.parts) == {"global_map"}
    assert ProjectedMSELoss(6, 6)(student[..., :6], student[..., :6]).item() == 0.0
    assert ProjectedMSELoss(6, 6).parts == {}  # single-term losses report no parts


def test_cospress_rejects_token_maps_of_different_lengths() -> None:
    with pytest.raises(ValueError, match=r"same B \(and T\), got \(2, 5, 4\) and \(2, 7, 8\)"):
        CosPressLoss(4, 8)(torch.randn(2, 5, 4), torch.randn(2, 7, 8))


def test_cospress_local_loss_ignores_padding_tokens() -> None:
    student, teacher = torch.randn(2, 6, 4), torch.randn(2, 6, 8)
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    loss = CosPressLoss(4, 8, lambda_global=0.0, lambda_token=0.0)
    padded = loss(student, teacher, mask=mask).item()
    altered_teacher = teacher.clone()
    altered_teacher[1, 4:] = torch.randn(2, 8) * 100  # padding content must not matter
    assert loss(student, altered_teacher, mask=mask).item() == pytest.approx(padded, rel=1e-6)
    separately = (loss(student[:1], teacher[:1]).item() + loss(student[1:, :4], teacher[1:, :4]).item()) / 2
    assert padded == pytest.approx(separately, rel=1e-5)


def test_cospress_training_h_preserves_teacher_cosines_better() -> None:
    teacher = torch.randn(32, 16) @ torch.randn(16, 16)
    loss = CosPressLoss(4, 16, lambda_token=0.0)  # pooled: only the global map loss is left
    optimiser = torch.optim.Adam(loss.parameters(), lr=3e-2)
    values = []
    for _ in range(40):
        value = loss(torch.randn(32, 4), teacher)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        values.append(value.item())
    assert values[-1] < 0.7 * values[0]


# ---- logit KD ------------------------------------------------------------------------------------
def test_logit_kd_is_temperature_squared_kl_and_shift_invariant() -> None:
    student, teacher = torch.randn(6, 7), torch.randn(6, 7)
    loss = LogitKDLoss(7, 7, temperature=3.0)
    expected = 9.0 * F.kl_div(F.log_softmax(student / 3, -1), F.log_softmax(teacher / 3, -1), log_target=True, reduction="batchmean")
    assert loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(student + 5.0, teacher - 2.0).item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="student_dim=7 and teacher_dim=5"):
        LogitKDLoss(7, 5)


# ---- precision -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_autocast_inputs_are_compared_in_float32(name: str) -> None:
    student = torch.randn(16, 6).bfloat16().requires_grad_(True)
    teacher = torch.randn(16, 6).bfloat16()
    loss = build_loss(name, student_dim=6, teacher_dim=6)  # equal widths: no learned projector, which autocast would run in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(student, teacher)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(student.float(), teacher.float()).item(), rel=1e-5, abs=1e-6)


# ---- numbers stay finite (the contract checks fixed degenerate batches; these are drawn at random) ---------
@st.composite
def degenerate_batches(draw: st.DrawFn) -> tuple[str, torch.Tensor, torch.Tensor]:
    name = draw(st.sampled_from(list(LOSSES)))
    batch_size = draw(st.integers(max(3, LOSSES[name].min_batch_size), 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    teacher_dim = 4 if LOSSES[name].equal_widths else 6
    student, teacher = torch.randn(batch_size, 4, generator=generator), torch.randn(batch_size, teacher_dim, generator=generator)
    kind = draw(st.sampled_from(["duplicates", "zero_rows", "all_zero", "plain"]))
    if kind == "duplicates":
        student[1:] = student[0]
        teacher[2:] = teacher[1]
    elif kind == "zero_rows":
        student[:2] = 0.0
        teacher[0] = 0.0
    elif kind == "all_zero":
        student.zero_()
        teacher.zero_()
    # A loss that grows with the features' scale (an MSE) is held to scales whose squares fit float32.
    scale_invariant = "student_scale" in LOSSES[name].invariances
    student_exponents, teacher_exponents = ([-30, -6, 0, 6, 30], [-20, 0, 20]) if scale_invariant else ([-6, 0, 6], [-6, 0, 6])
    return (name, student * 10.0 ** draw(st.sampled_from(student_exponents)),
            teacher * 10.0 ** draw(st.sampled_from(teacher_exponents)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=degenerate_batches())
def test_finite_values_and_gradients_on_degenerate_batches(batch: tuple[str, torch.Tensor, torch.Tensor]) -> None:
    name, student, teacher = batch
    student.requires_grad_(True)
    loss = build_loss(name, student_dim=4, teacher_dim=teacher.shape[1])
    value = loss(student, teacher)
    value.backward()
    assert math.isfinite(value.item())
    assert torch.isfinite(student.grad).all()
    assert all(torch.isfinite(parameter.grad).all() for parameter in loss.parameters() if parameter.grad is not None)
