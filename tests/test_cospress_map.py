"""CosPress's map options: ``map_init="identity"`` and ``map_layer_norm=False`` (for a student initialised from the
teacher), and why the recipe's LayerNorm changes the geometry the map preserves."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hf_pcoh.losses import build_loss


def test_an_identity_map_without_layer_norm_starts_at_the_teacher_and_has_nothing_to_learn() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 8, dtype=torch.float32) * 3 + 1
    loss = build_loss("cospress", student_dim=8, teacher_dim=8, map_init="identity", map_layer_norm=False)
    torch.testing.assert_close(loss.compress(teacher), teacher)
    student = torch.randn(16, 8, requires_grad=True)
    value = loss(student, teacher)
    assert loss.parts["global_map"].item() == pytest.approx(0.0, abs=1e-6)  # cosines kept exactly
    expected_token = (1 - F.cosine_similarity(student, teacher, dim=1)).mean()
    assert loss.parts["token"].item() == pytest.approx(expected_token.item(), rel=1e-5)
    value.backward()
    assert loss.compression[1].weight.grad.abs().max().item() < 1e-5  # the map sits at its optimum
    assert loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)  # zero at the teacher


def test_the_recipes_layer_norm_makes_the_map_preserve_correlations_not_cosines() -> None:
    """cos(LN t_i, LN t_j) is the Pearson correlation of t_i and t_j over their coordinates."""
    torch.manual_seed(1)
    teacher = torch.randn(10, 32) + torch.linspace(0, 3, 32)  # a shared offset: cosine and correlation differ
    loss = build_loss("cospress", student_dim=32, teacher_dim=32, map_init="identity")
    compressed = F.normalize(loss.compress(teacher), dim=1)
    correlations = torch.corrcoef(teacher)
    torch.testing.assert_close(compressed @ compressed.T, correlations, rtol=0, atol=1e-4)
    cosines = F.normalize(teacher, dim=1) @ F.normalize(teacher, dim=1).T
    assert (cosines - correlations).abs().max().item() > 0.3


def test_identity_init_of_a_narrower_student_keeps_the_first_coordinates() -> None:
    loss = build_loss("cospress", student_dim=3, teacher_dim=5, map_init="identity", map_layer_norm=False)
    teacher = torch.arange(10.0).reshape(2, 5)
    torch.testing.assert_close(loss.compress(teacher), teacher[:, :3])


def test_the_default_map_is_the_recipes_and_draws_the_same_random_numbers() -> None:
    torch.manual_seed(3)
    default = build_loss("cospress", student_dim=4, teacher_dim=6)
    after_default = torch.rand(1)
    torch.manual_seed(3)
    build_loss("cospress", student_dim=4, teacher_dim=6, map_init="identity", map_layer_norm=False)
    assert torch.equal(torch.rand(1), after_default)  # the option changes no later random draw
    assert isinstance(default.compression[0], torch.nn.LayerNorm) and default.map_init == "random"
    with pytest.raises(ValueError, match="map_init='zeros' must be 'random'"):
        build_loss("cospress", student_dim=4, teacher_dim=6, map_init="zeros")
