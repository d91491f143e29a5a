"""Next-token cross-entropy and logit KD over a vocabulary (hf_pcoh.losses.token_kd), against direct formulas on
small random tensors: shifted targets, temperature, masks, the generalised JSD's beta convention, chunking."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hf_pcoh.losses import LOSSES, LogitKDLoss, TokenKDLoss
from hf_pcoh.losses import token_kd
from hf_pcoh.losses.token_kd import (
    IGNORE_INDEX,
    chunked_row_sum,
    next_token_cross_entropy,
    next_token_targets,
)

B, T, V = 3, 6, 11


def logits(seed: int, dtype: torch.dtype = torch.float64, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def padded_mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # right padding
    mask[2, :2] = 0  # left padding
    return mask


def direct_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, written out: sum_v p_v (log p_v - log q_v)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def direct(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, divergence: str, beta: float = 0.5,
           temperature: float = 1.0) -> torch.Tensor:
    """The mean over masked-in positions of tau^2 * D, from the textbook definitions (float64, no chunks)."""
    log_q = F.log_softmax(student / temperature, -1)  # the student's
    log_p = F.log_softmax(teacher / temperature, -1)  # the teacher's
    if divergence == "forward_kl":
        per_position = direct_kl(log_p, log_q)
    elif divergence == "reverse_kl":
        per_position = direct_kl(log_q, log_p)
    else:  # JSD_beta(p || q) = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q
        m = beta * log_p.exp() + (1 - beta) * log_q.exp()
        per_position = beta * direct_kl(log_p, m.log()) + (1 - beta) * direct_kl(log_q, m.log())
    valid = mask.bool()
    return temperature**2 * per_position[valid].sum() / valid.sum()


# ---- next-token targets and cross-entropy ---------------------------------------------------------------------
def test_targets_are_the_next_tokens_and_padding_positions_predict_nothing() -> None:
    labels = torch.tensor([[5, 6, 7, 8], [0, 0, 3, 4], [1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]])
    labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    assert next_token_targets(labels, mask).tolist() == [
        [6, 7, 8, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 4, IGNORE_INDEX],  # the left padding does not predict the first token
        [2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_next_token_cross_entropy_is_the_shifted_cross_entropy_over_valid_tokens() -> None:
    student = logits(0).requires_grad_(True)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # right padding: the usual layout of a causal-LM batch
    labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    labels[0, :2] = IGNORE_INDEX  # a prompt: its tokens are no targets
    value = next_token_cross_entropy(student, labels, mask, chunk_size=2)
    expected = F.cross_entropy(student[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(value, expected)
    (gradient,) = torch.autograd.grad(value, student)
    (expected_gradient,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(gradient, expected_gradient)
    assert gradient[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_a_batch_without_targets_gives_zero_and_a_zero_gradient() -> None:
    student = logits(0).requires_grad_(True)
    labels = torch.full((B, T), IGNORE_INDEX)
    value = next_token_cross_entropy(student, labels)
    value.backward()
    assert value.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student))


# ---- logit KD over the vocabulary ---------------------------------------------------------------------------
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergences_with_temperature_and_mask_equal_their_definitions(divergence, temperature) -> None:
    student, teacher, mask = logits(0), logits(1), padded_mask()
    loss = TokenKDLoss(V, V, divergence=divergence, beta=0.3, temperature=temperature)
    expected = direct(student, teacher, mask, divergence, beta=0.3, temperature=temperature)
    torch.testing.assert_close(loss(student, teacher, mask=mask), expected)


def test_forward_kl_is_hintons_kd_as_pytorch_computes_it() -> None:
    student, teacher, mask = logits(0), logits(1), padded_mask()
    valid = mask.bool()
    expected = 4.0 * F.kl_div(F.log_softmax(student[valid] / 2, -1), F.log_softmax(teacher[valid] / 2, -1),
                              log_target=True, reduction="batchmean")
    torch.testing.assert_close(TokenKDLoss(V, V, temperature=2.0)(student, teacher, mask=mask), expected)
    # on [B, C] class logits it is the registered logit_kd
    torch.testing.assert_close(TokenKDLoss(V, V, temperature=2.0)(student[:, 0].float(), teacher[:, 0].float()),
                               LogitKDLoss(V, V, temperature=2.0)(student[:, 0].float(), teacher[:, 0].float()))


def test_jsd_beta_endpoints_are_forward_and_reverse_kl_as_in_trl() -> None:
    student, teacher, mask = logits(0), logits(1), padded_mask()

    def jsd(beta: float) -> float:
        return TokenKDLoss(V, V, divergence="jsd", beta=beta)(student, teacher, mask=mask).item()

    forward_kl = TokenKDLoss(V, V, divergence="forward_kl")(student, teacher, mask=mask).item()
    reverse_kl = TokenKDLoss(V, V, divergence="reverse_kl")(student, teacher, mask=mask).item()
    assert forward_kl != pytest.approx(reverse_kl, rel=1e-2)  # the test below can tell them apart
    assert jsd(0.0) == pytest.approx(forward_kl, rel=1e-12)
    assert jsd(1.0) == pytest.approx(reverse_kl, rel=1e-12)
    # The formula's own limits, of which TRL's special cases are the normalised values.
    epsilon = 1e-5
    assert jsd(epsilon) / epsilon == pytest.approx(forward_kl, rel=1e-3)
    assert jsd(1 - epsilon) / epsilon == pytest.approx(reverse_kl, rel=1e-3)
    # In between: a symmetric divergence at beta = 0.5 (swapping the models changes nothing) ...
    swapped = TokenKDLoss(V, V, divergence="jsd", beta=0.5)(teacher, student, mask=mask).item()
    assert jsd(0.5) == pytest.approx(swapped, rel=1e-10)
    # ... and bounded by log 2 (times tau^2 = 1) as the Jensen-Shannon divergence is.
    assert 0 < jsd(0.5) < torch.log(torch.tensor(2.0)).item()


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_padding_positions_change_nothing(divergence) -> None:
    student, teacher, mask = logits(0), logits(1), padded_mask()
    padding = mask == 0
    loss = TokenKDLoss(V, V, divergence=divergence, beta=0.7, temperature=2.0)
    student = student.requires_grad_(True)
    value = loss(student, teacher, mask=mask)
    (gradient,) = torch.autograd.grad(value, student)
    moved_student, moved_teacher = student.detach().clone(), teacher.clone()
    moved_student[padding] = 1e4 * torch.randn(int(padding.sum()), V, dtype=torch.float64)
    moved_teacher[padding] = -1e4 * torch.randn(int(padding.sum()), V, dtype=torch.float64)
    moved_student.requires_grad_(True)
    moved = loss(moved_student, moved_teacher, mask=mask)
    (moved_gradient,) = torch.autograd.grad(moved, moved_student)
    assert moved.item() == pytest.approx(value.item(), rel=1e-12)
    torch.testing.assert_close(moved_gradient, gradient)
    assert moved_gradient[padding].abs().sum() == 0


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_chunked_equals_unchunked_in_value_and_gradient(divergence, dtype) -> None:
    student, teacher, mask = logits(0, dtype), logits(1, dtype), padded_mask()
    values, gradients = [], []
    for chunk_size in (1, 4, 10_000):  # one position at a time, a few, all of them in one chunk
        loss = TokenKDLoss(V, V, divergence=divergence, beta=0.4, temperature=1.5, chunk_size=chunk_size)
        leaf = student.clone().requires_grad_(True)
        value = loss(leaf, teacher, mask=mask)
        value.backward()
        values.append(value)
        gradients.append(leaf.grad)
    # and the plain autograd of the direct formula, all positions at once
    leaf = student.clone().requires_grad_(True)
    reference = direct(leaf.double(), teacher.double(), mask, divergence, beta=0.4, temperature=1.5)
    reference.backward()
    assert all(gradient.dtype == dtype for gradient in gradients)
    tolerance = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for value, gradient in zip(values, gradients):
        torch.testing.assert_close(value, values[-1], **tolerance)
        torch.testing.assert_close(gradient, gradients[-1], **tolerance)
    if dtype == torch.float64:
        torch.testing.assert_close(values[-1], reference)
        torch.testing.assert_close(gradients[-1], leaf.grad)


def test_no_float32_block_spans_more_than_one_chunk(monkeypatch) -> None:
    seen: list[tuple[int, ...]] = []
    formula = token_kd.token_divergence

    def recording(student, teacher, *args):
        seen.append(tuple(student.shape))
        return formula(student, teacher, *args)

    monkeypatch.setattr(token_kd, "token_divergence", recording)
    student = logits(0, torch.bfloat16).requires_grad_(True)
    TokenKDLoss(V, V, chunk_size=4)(student, logits(1, torch.bfloat16), mask=padded_mask()).backward()
    assert seen and all(len(shape) == 2 and shape[0] <= 4 and shape[1] == V for shape in seen)
    assert sum(shape[0] for shape in seen) == int(padded_mask().sum())  # each valid position once, no padding
    rows: list[int] = []
    chunked_row_sum(lambda s, t, y: rows.append(s.shape[0]) or s.float().sum(-1), logits(0), padded_mask().bool(),
                    chunk_size=5)
    assert max(rows) == 5 and sum(rows) == int(padded_mask().sum())


def test_the_default_chunk_is_sized_by_the_vocabulary() -> None:
    assert token_kd.default_chunk_size(32_000) == 524
    assert token_kd.default_chunk_size(256_000) == 65
    assert token_kd.default_chunk_size(10**9) == 1


def test_vocabularies_that_differ_are_refused_naming_both_sizes() -> None:
    with pytest.raises(ValueError, match="the student's has 11 tokens and the teacher's 13") as error:
        TokenKDLoss(11, 13)
    assert "\n" not in str(error.value)
    loss = TokenKDLoss(V, V)
    with pytest.raises(ValueError, match="the student's has 11 tokens and the teacher's 13"):
        loss(logits(0), torch.randn(B, T, 13, dtype=torch.float64))
    with pytest.raises(ValueError, match="both must read the same tokens"):
        loss(logits(0), logits(1)[:, :4])


def test_options_are_checked_and_registered_as_a_logit_loss() -> None:
    assert LOSSES["token_kd"] is TokenKDLoss and TokenKDLoss.input_kind == "logits"
    for options, message in (({"divergence": "kl"}, "is not one of"), ({"beta": 1.5}, r"beta=1.5 must be in \[0, 1\]"),
                             ({"temperature": 0.0}, "must be > 0"), ({"chunk_size": 0}, "chunk_size=0")):
        with pytest.raises(ValueError, match=message):
            TokenKDLoss(V, V, **options)
