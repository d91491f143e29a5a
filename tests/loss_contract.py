"""The contract every registered loss is held to, from what its class declares (``DistillationLoss``).

Each ``check_*`` function takes a loss class and fails with an assertion naming the loss; ``CONTRACT_CHECKS``
lists them and :func:`check_loss_contract` runs them all. ``tests/test_losses_properties.py`` runs every check
on every loss of ``LOSSES``, so a newly registered loss is checked without editing a test:

* its declarations are valid and its docstring has ``Args:`` (naming every option), ``Inputs:`` and
  ``References:``; its citation is one BibTeX entry;
* its options: defaults fit their type hints, ``--help`` lists them, ``get_config_dict()`` reports each;
* a finite scalar on a random batch, finite gradients, also on degenerate batches (duplicates, zeros,
  huge and tiny values), and a gradient equal to finite differences (``torch.autograd.gradcheck``, float64);
* what it declares: 0 at agreement, each invariance, a mean over examples when not batch-level, padding
  that changes nothing when it accepts tokens, which of its parameters train and whether it trains the student.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable

import pytest
import torch

from hf_pcoh.losses import INVARIANCES, LOSSES, DistillationLoss, loss_options_help
from hf_pcoh.losses.base import INPUT_KINDS, check_option_names_and_types, config_value, loss_option_parameters

LossClass = type[DistillationLoss]
SECTIONS = ("Args:", "Inputs:", "References:")


# ---- inputs -------------------------------------------------------------------------------------------
def widths(loss_class: LossClass) -> tuple[int, int]:
    """Different widths (the harder case) unless the loss needs equal ones."""
    return (5, 5) if loss_class.equal_widths else (5, 7)


def batch_size(loss_class: LossClass) -> int:
    return max(8, loss_class.min_batch_size)


def build(loss_class: LossClass, student_dim: int, teacher_dim: int, dtype: torch.dtype = torch.float64,
          **options) -> DistillationLoss:
    """The loss with its default options (learned parameters drawn from seed 0), in ``dtype``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return loss_class(student_dim=student_dim, teacher_dim=teacher_dim, **options).to(dtype)


def random_features(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def orthogonal(size: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(random_features(size, size, seed=seed))[0]


def pair(loss_class: LossClass, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A random student ``[B, d_s]`` and teacher ``[B, d_t]`` batch."""
    student_dim, teacher_dim = widths(loss_class)
    rows = batch_size(loss_class)
    return random_features(rows, student_dim, seed=1, dtype=dtype), random_features(rows, teacher_dim, seed=2, dtype=dtype)


def value(loss: DistillationLoss, student: torch.Tensor, teacher: torch.Tensor, **inputs) -> float:
    with torch.no_grad():
        return loss(student, teacher, **inputs).item()


def assert_same_value(actual: float, expected: float, loss: DistillationLoss, what: str, full_precision: bool) -> None:
    """Equal up to rounding: float64 arithmetic when the loss keeps float64 inputs, float32 otherwise."""
    relative, absolute = (1e-5, 1e-8) if full_precision else (1e-4, 1e-6)
    assert actual == pytest.approx(expected, rel=relative, abs=absolute), f"{loss.name}: {what} changed {expected} to {actual}"


def keeps_float64(loss: DistillationLoss, student: torch.Tensor, teacher: torch.Tensor) -> bool:
    with torch.no_grad():
        return loss(student, teacher).dtype == torch.float64


# ---- the checks ---------------------------------------------------------------------------------------
def check_declarations(loss_class: LossClass) -> None:
    """Registered under its name, with valid declarations and one BibTeX entry as its citation."""
    name = loss_class.name
    assert name and LOSSES.get(name) is loss_class, f"{loss_class.__qualname__} is not registered as {name!r}"
    assert set(loss_class.invariances) <= set(INVARIANCES), (name, loss_class.invariances)
    assert loss_class.input_kind in INPUT_KINDS, (name, loss_class.input_kind)
    assert isinstance(loss_class.min_batch_size, int) and loss_class.min_batch_size >= 1, name
    assert loss_class.batch_level or loss_class.min_batch_size == 1, f"{name}: a mean over examples needs no minimum batch"
    entry = loss_class.citation.strip()
    match = re.fullmatch(r"@(\w+)\{([^,\s]+),\n(.*)\}", entry, flags=re.S)
    assert match, f"{name}.citation is not one BibTeX entry: {entry[:80]!r}"
    fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?$", match.group(3), flags=re.M))
    assert {"title", "author", "year"} <= set(fields), f"{name}.citation lacks a title, author or year: {fields}"


def check_docstring(loss_class: LossClass) -> None:
    """``Args:`` naming the widths and every option, ``Inputs:`` with shapes, ``References:``, an example."""
    documentation = inspect.getdoc(loss_class) or ""
    name = loss_class.name
    for section in SECTIONS:
        assert re.search(rf"^{section}$", documentation, flags=re.M), f"{name}'s docstring has no {section} section"
    args = documentation.split("Args:", 1)[1].split("Inputs:", 1)[0]
    for argument in ("student_dim", "teacher_dim", *loss_option_parameters(loss_class)):
        assert re.search(rf"^\s*{argument}( \(.*\))?:", args, flags=re.M), f"{name}'s Args: does not describe {argument}"
    inputs = documentation.split("Inputs:", 1)[1].split("References:", 1)[0]
    assert re.search(r"\[B, .*\]", inputs), f"{name}'s Inputs: gives no shapes"
    assert "Example::" in documentation, f"{name}'s docstring has no Example::"


def check_options(loss_class: LossClass) -> None:
    """Defaults fit the type hints; ``--help`` lists each option; ``get_config_dict`` reports each, JSON-ready."""
    name = loss_class.name
    parameters = loss_option_parameters(loss_class)
    defaults = {option: parameter.default for option, parameter in parameters.items()}
    assert all(default is not inspect.Parameter.empty for default in defaults.values()), f"{name}: every option needs a default"
    assert check_option_names_and_types(name, defaults) == defaults
    help_text = loss_options_help()
    for option, default in defaults.items():
        assert f"{option} (" in help_text and f"default {default!r})" in help_text, f"{name}: --help misses {option}"
    loss = build(loss_class, *widths(loss_class))
    config = loss.get_config_dict()
    assert list(config) == list(parameters), f"{name}.get_config_dict() reports {list(config)}, options are {list(parameters)}"
    assert config == {option: config_value(default) for option, default in defaults.items()}, name
    json.dumps(config)  # a model card serialises it
    assert build(loss_class, *widths(loss_class), **defaults).get_config_dict() == config, name


def check_finite_value_and_gradients(loss_class: LossClass) -> None:
    """A float32 batch gives a finite float32 scalar; the student and the loss's own parameters get finite gradients."""
    student, teacher = pair(loss_class, torch.float32)
    loss = build(loss_class, *widths(loss_class), dtype=torch.float32)
    student.requires_grad_(True)
    result = loss(student, teacher)
    assert result.dim() == 0 and result.dtype == torch.float32 and torch.isfinite(result), (loss_class.name, result)
    result.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all(), loss_class.name
    assert student.grad.abs().sum() > 0, f"{loss_class.name}: no gradient reaches the student"
    for parameter_name, parameter in loss.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), (loss_class.name, parameter_name)


def degenerate_batches(loss_class: LossClass) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    student, teacher = pair(loss_class, torch.float32)
    duplicates_student, duplicates_teacher = student.clone(), teacher.clone()
    duplicates_student[1:] = student[0]
    duplicates_teacher[2:] = teacher[1]
    zero_student, zero_teacher = student.clone(), teacher.clone()
    zero_student[:2] = 0.0
    zero_teacher[0] = 0.0
    # A loss that grows with the features' scale (an MSE) cannot be finite in float32 at 1e30: its value is
    # ~1e60. It is held to features whose squares still fit (1e15); a scale-invariant one to any scale.
    huge = (1e30, 1e20) if "student_scale" in loss_class.invariances else (1e15, 1e15)
    return {
        "duplicate rows": (duplicates_student, duplicates_teacher),
        "zero rows": (zero_student, zero_teacher),
        "all zero": (torch.zeros_like(student), torch.zeros_like(teacher)),
        "huge values": (student * huge[0], teacher * huge[1]),
        "tiny values": (student * 1e-30, teacher * 1e-20),
    }


def check_degenerate_batches(loss_class: LossClass) -> None:
    """No NaN or inf, in the value or the gradients, on duplicates, zeros, huge and tiny features."""
    loss = build(loss_class, *widths(loss_class), dtype=torch.float32)
    for kind, (student, teacher) in degenerate_batches(loss_class).items():
        student = student.clone().requires_grad_(True)
        loss.zero_grad()
        result = loss(student, teacher)
        result.backward()
        assert math.isfinite(result.item()), f"{loss_class.name} on {kind}: {result.item()}"
        assert torch.isfinite(student.grad).all(), f"{loss_class.name} on {kind}: non-finite student gradient"
        for parameter in loss.parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), f"{loss_class.name} on {kind}"


def check_gradient(loss_class: LossClass) -> None:
    """The student's gradient equals finite differences (float64; looser where the loss computes in float32)."""
    student_dim, teacher_dim = widths(loss_class)
    rows = max(6, loss_class.min_batch_size)  # small: the numerical Jacobian costs 2 * rows * d_s evaluations
    student = random_features(rows, student_dim, seed=1).requires_grad_(True)
    teacher = random_features(rows, teacher_dim, seed=2)
    loss = build(loss_class, student_dim, teacher_dim)

    def of_student(features: torch.Tensor) -> torch.Tensor:
        return loss(features, teacher)

    if keeps_float64(loss, student, teacher):
        assert torch.autograd.gradcheck(of_student, (student,)), loss_class.name
    else:  # float32 inside: finite differences with a wider step and a looser tolerance
        assert torch.autograd.gradcheck(of_student, (student,), eps=1e-3, atol=2e-3, rtol=1e-2), loss_class.name


def check_zero_at_agreement(loss_class: LossClass) -> None:
    """Declared ``zero_at_agreement``: identical student and teacher features (equal widths) give 0."""
    if not loss_class.zero_at_agreement:
        pytest.skip(f"{loss_class.name} does not declare zero_at_agreement")
    features, _ = pair(loss_class)
    loss = build(loss_class, features.shape[1], features.shape[1])
    assert value(loss, features, features.clone()) == pytest.approx(0.0, abs=1e-6), loss_class.name


def transformed(invariance: str, student: torch.Tensor, teacher: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inputs moved by ``invariance`` (a few ways each: a big and a small scale, say)."""
    order = torch.randperm(student.shape[0], generator=torch.Generator().manual_seed(7))
    return {
        "student_rotation": [(student @ orthogonal(student.shape[1], seed=3), teacher)],
        "teacher_rotation": [(student, teacher @ orthogonal(teacher.shape[1], seed=4))],
        "student_scale": [(37.0 * student, teacher), (0.02 * student, teacher)],
        "teacher_scale": [(student, 250.0 * teacher), (student, 0.004 * teacher)],
        "student_translation": [(student + 3.0 * random_features(student.shape[1], seed=5), teacher)],
        "teacher_translation": [(student, teacher - 2.0 * random_features(teacher.shape[1], seed=6))],
        "batch_permutation": [(student[order], teacher[order])],
    }[invariance]


def check_invariances(loss_class: LossClass) -> None:
    """Each declared invariance: moving the inputs that way leaves the value unchanged (default options)."""
    if not loss_class.invariances:
        pytest.skip(f"{loss_class.name} declares no invariances")
    student, teacher = pair(loss_class)
    loss = build(loss_class, *widths(loss_class))
    full_precision = keeps_float64(loss, student, teacher)
    base = value(loss, student, teacher)
    for invariance in sorted(loss_class.invariances):
        for moved_student, moved_teacher in transformed(invariance, student, teacher):
            assert_same_value(value(loss, moved_student, moved_teacher), base, loss, invariance, full_precision)


def check_mean_over_examples(loss_class: LossClass) -> None:
    """Not ``batch_level``: the value of a batch is the mean of its halves' (so shards average to the whole)."""
    if loss_class.batch_level:
        pytest.skip(f"{loss_class.name} is batch-level: it compares the examples of a batch")
    student, teacher = pair(loss_class)
    loss = build(loss_class, *widths(loss_class))
    half = student.shape[0] // 2
    halves = (value(loss, student[:half], teacher[:half]) + value(loss, student[half:], teacher[half:])) / 2
    assert_same_value(value(loss, student, teacher), halves, loss, "splitting the batch", keeps_float64(loss, student, teacher))


def check_padding_changes_nothing(loss_class: LossClass) -> None:
    """``accepts_tokens``: token features ``[B, T, d]`` with a mask give a finite value that padding does not move."""
    if not loss_class.accepts_tokens:
        pytest.skip(f"{loss_class.name} takes pooled features only")
    student_dim, teacher_dim = widths(loss_class)
    rows, length = max(4, loss_class.min_batch_size), 5
    student = random_features(rows, length, student_dim, seed=8)
    teacher = random_features(rows, length, teacher_dim, seed=9)
    mask = torch.ones(rows, length)
    mask[1, 3:] = 0
    mask[2, 4:] = 0
    padding = ~mask.bool()
    loss = build(loss_class, student_dim, teacher_dim)
    base = value(loss, student, teacher, mask=mask)
    assert math.isfinite(base), loss_class.name
    padded_student, padded_teacher = student.clone(), teacher.clone()
    padded_student[padding] = 100.0 * random_features(int(padding.sum()), student_dim, seed=10)
    padded_teacher[padding] = -50.0 * random_features(int(padding.sum()), teacher_dim, seed=11)
    moved = value(loss, padded_student, padded_teacher, mask=mask)
    assert_same_value(moved, base, loss, "the padding's values", keeps_float64(loss, student[:, 0], teacher[:, 0]))


def declared_training_holds(loss: DistillationLoss, tokens: bool) -> None:
    """What ``loss`` declares of the gradients (``untrained_parameters``, ``trains_student``) is what autograd finds on a
    batch of pooled or token features: the declared parameters, and only they, get no gradient."""
    student_dim, teacher_dim = loss.student_dim, loss.teacher_dim
    rows = max(4, type(loss).min_batch_size)
    shape = (rows, 5) if tokens else (rows,)
    student = random_features(*shape, student_dim, seed=12).requires_grad_(True)
    teacher = random_features(*shape, teacher_dim, seed=13)
    inputs = {"mask": torch.ones(rows, 5)} if tokens else {}
    named = list(loss.named_parameters())
    result = loss(student, teacher, **inputs)
    gradients = torch.autograd.grad(result, [student] + [parameter for _, parameter in named], allow_unused=True)
    kind = "tokens" if tokens else "pooled features"
    assert (gradients[0] is not None) == loss.trains_student(tokens), f"{loss.name} on {kind}: trains_student is wrong"
    untrained = loss.untrained_parameters(tokens)
    if named and untrained is None:
        return  # not declared: DDP keeps searching for unused parameters, which is always correct
    without = [name for (name, _), gradient in zip(named, gradients[1:]) if gradient is None]
    assert sorted(without) == sorted(untrained), f"{loss.name} on {kind}: declares {untrained} untrained, finds {without}"


def check_declared_training(loss_class: LossClass) -> None:
    """``untrained_parameters`` and ``trains_student`` (the trainer freezes by them, and DDP's search for unused
    parameters is turned off by them) hold for pooled features and, when accepted, tokens (default options)."""
    loss = build(loss_class, *widths(loss_class))
    declared_training_holds(loss, tokens=False)
    if loss_class.accepts_tokens:
        declared_training_holds(loss, tokens=True)


CONTRACT_CHECKS: list[Callable[[LossClass], None]] = [
    check_declarations,
    check_docstring,
    check_options,
    check_finite_value_and_gradients,
    check_degenerate_batches,
    check_gradient,
    check_zero_at_agreement,
    check_invariances,
    check_mean_over_examples,
    check_padding_changes_nothing,
    check_declared_training,
]


def check_loss_contract(loss_class: LossClass) -> None:
    """Every check of the contract on ``loss_class`` (the ones that do not apply are passed over)."""
    for check in CONTRACT_CHECKS:
        try:
            check(loss_class)
        except pytest.skip.Exception:
            continue
