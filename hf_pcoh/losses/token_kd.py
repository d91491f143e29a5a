"""Language-model objectives over the vocabulary, token by token: next-token cross-entropy and logit KD.

For a causal language model, position ``t`` predicts the token at ``t + 1``. With ``labels`` ``[B, T]`` the
input ids (``-100`` where a position is not a target: padding and, for prompt/completion data, the prompt),
the **valid positions** are those whose next token is a target and which read a real token themselves:

    target[b, t] = labels[b, t + 1]   if attention_mask[b, t] = 1, else -100;   target[b, T - 1] = -100

(:func:`next_token_targets`; left-padded batches never ask a padding position to predict the first token).
Both objectives are means over the valid positions of the batch (token-weighted, not a mean of rows):

* next-token cross-entropy, ``CE = mean_n -log softmax(z^s_n)[target_n]`` (:func:`next_token_cross_entropy`);
* logit KD between the teacher's and the student's distributions over the vocabulary at the same positions
  (:class:`TokenKDLoss`, ``token_kd``), with ``p = softmax(z^t / tau)``, ``q = softmax(z^s / tau)``:

  - ``forward_kl``: ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` (Hinton et al.'s KD, mass-covering);
  - ``reverse_kl``: ``KL(q || p)`` (mode-seeking, as in MiniLLM);
  - ``jsd``: the generalised Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, Eq. 1) exactly as TRL's
    ``GKDTrainer.generalized_jsd_loss`` computes it: with the mixture ``m = beta p + (1 - beta) q``,
    ``JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m)``; ``beta = 0`` is *defined* as ``KL(p || q)`` and
    ``beta = 1`` as ``KL(q || p)`` (TRL's two special cases). The formula itself vanishes at both ends; near
    them ``JSD_beta ~ beta KL(p || q)`` (``beta -> 0``) and ``JSD_beta ~ (1 - beta) KL(q || p)`` (``beta -> 1``),
    which is the sense of "interpolates between forward and reverse KL".

  Both distributions are softened by the temperature ``tau`` and every divergence is multiplied by ``tau^2``
  (Hinton et al. 2015, Sec. 2: the gradients then keep their scale whatever ``tau``; TRL does not multiply).

**Memory.** The vocabulary is large (32k-256k), so float32 ``[B, T, V]`` copies of both models' logits would
dwarf the models' own activations. Every objective here is computed chunk by chunk over the valid positions
(:class:`ChunkedRowSum`): a chunk's rows are upcast to float32, its value and its gradient with respect to the
student's logits are computed at once, and only the gradient (in the logits' own dtype, what backward must
produce anyway) is kept; no float32 tensor ever spans all positions. Value and gradient equal the unchunked
computation (``tests/test_token_kd.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch.nn import functional as F

from .base import DistillationLoss, register_loss
from .numerics import as_float

IGNORE_INDEX = -100  # a label that is no target (transformers' and PyTorch's convention)
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
# Values (positions x vocabulary) in one float32 chunk by default: 64 MiB, e.g. 512 positions of a 32k vocabulary.
CHUNK_VALUES = 2**24

GKD = """@inproceedings{agarwal2024onpolicy,
  title     = {On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes},
  author    = {Agarwal, Rishabh and Vieillard, Nino and Zhou, Yongchao and Stanczyk, Piotr and Ramos, Sabela and Geist, Matthieu and Bachem, Olivier},
  booktitle = {The Twelfth International Conference on Learning Representations (ICLR)},
  year      = {2024},
  note      = {arXiv:2306.13649}
}"""


def next_token_targets(labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T]`` labels (aligned with the input ids) -> ``[B, T]`` targets: position ``t`` predicts ``labels[t + 1]``;
    the last position, and a position that reads padding (``attention_mask`` 0), predict nothing (``-100``)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return targets


def check_same_vocabulary(student_vocabulary: int, teacher_vocabulary: int) -> None:
    """Logit KD compares distributions over one vocabulary: refuse two sizes, naming both."""
    if student_vocabulary != teacher_vocabulary:
        raise ValueError(f"logit KD over the vocabulary needs one vocabulary, but the student's has "
                         f"{student_vocabulary} tokens and the teacher's {teacher_vocabulary}: give both models the "
                         "same tokenizer and vocab_size, or drop --logit_kd_weight")


def default_chunk_size(vocabulary: int) -> int:
    """Positions per chunk so that one float32 ``[positions, V]`` block holds about ``CHUNK_VALUES`` values."""
    return max(1, CHUNK_VALUES // max(vocabulary, 1))


# ---- the per-position formulas (unchunked, float32) ----------------------------------------------------------
def token_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str = "forward_kl", beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The divergence of each position, ``[..., V] -> [...]``, times ``temperature**2`` (module docstring); computed
    in float32 (float64 when given), autocast off. The teacher's logits take no gradient."""
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        student_log_probs = F.log_softmax(as_float(student_logits) / temperature, dim=-1)
        teacher_log_probs = F.log_softmax(as_float(teacher_logits.detach()).to(student_log_probs.dtype) / temperature,
                                          dim=-1)
        if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
            value = kl(teacher_log_probs, student_log_probs)
        elif divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
            value = kl(student_log_probs, teacher_log_probs)
        elif divergence == "jsd":
            mixture = torch.logaddexp(teacher_log_probs + math.log(beta), student_log_probs + math.log(1.0 - beta))
            value = beta * kl(teacher_log_probs, mixture) + (1.0 - beta) * kl(student_log_probs, mixture)
        else:
            raise ValueError(f"divergence={divergence!r} is not one of {DIVERGENCES}")
        return value * temperature**2


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the last dimension, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[target]`` of each row, ``[N, V], [N] -> [N]``, in float32, autocast off."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(as_float(logits), targets, reduction="none")


# ---- chunked sums over positions ------------------------------------------------------------------------------
RowFunction = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


class ChunkedRowSum(torch.autograd.Function):
    """``sum_{n in positions} f(student[n], teacher[n], targets[n])`` over rows of ``[M, V]`` logits, chunk by chunk.

    Each chunk's rows are read (``index_select``), ``f`` runs on them in float32 and its gradient with respect to
    those student rows is taken at once and written into a gradient buffer of the student's shape and dtype; the
    float32 intermediates of a chunk are freed before the next one. Backward scales that buffer. So the value and
    the gradient are those of the unchunked sum, while float32 ``[rows, V]`` blocks never span more than one chunk.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor | None,
                positions: torch.Tensor, row_function: RowFunction, chunk_size: int) -> torch.Tensor:
        needs_gradient = ctx.needs_input_grad[0]
        gradient = torch.zeros_like(student) if needs_gradient else None
        total = torch.zeros((), dtype=torch.float64 if student.dtype == torch.float64 else torch.float32,
                            device=student.device)
        for chunk in positions.split(chunk_size):
            rows = student.index_select(0, chunk)  # [n, V]
            teacher_rows = None if teacher is None else teacher.index_select(0, chunk)
            target_rows = None if targets is None else targets.index_select(0, chunk)
            if needs_gradient:
                with torch.enable_grad():
                    rows = rows.detach().requires_grad_(True)
                    value = row_function(rows, teacher_rows, target_rows).sum()
                    (row_gradient,) = torch.autograd.grad(value, rows)
                gradient.index_copy_(0, chunk, row_gradient)
            else:
                value = row_function(rows, teacher_rows, target_rows).sum()
            total += value.detach().to(total.dtype)
        ctx.save_for_backward(gradient)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return gradient * grad_output.to(gradient.dtype), None, None, None, None, None


def chunked_row_sum(
    row_function: RowFunction, student: torch.Tensor, valid: torch.Tensor, teacher: torch.Tensor | None = None,
    targets: torch.Tensor | None = None, chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, count)``: ``row_function`` summed over the positions where ``valid`` (``[...]``, the leading shape of
    ``student`` ``[..., V]``) is true, chunk by chunk (:class:`ChunkedRowSum`), and the number of those positions."""
    vocabulary = student.shape[-1]
    positions = valid.reshape(-1).nonzero().squeeze(1)
    flat_student = student.reshape(-1, vocabulary)
    flat_teacher = None if teacher is None else teacher.reshape(-1, teacher.shape[-1])
    flat_targets = None if targets is None else targets.reshape(-1)
    total = ChunkedRowSum.apply(flat_student, flat_teacher, flat_targets, positions, row_function,
                                chunk_size or default_chunk_size(vocabulary))
    return total, torch.tensor(float(positions.numel()), dtype=total.dtype, device=total.device)


def next_token_cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -log q(target), number of valid positions)`` of the next-token cross-entropy: ``logits``
    ``[B, T, V]``, ``labels`` ``[B, T]`` aligned with the input ids (shifted here, :func:`next_token_targets`)."""
    targets = next_token_targets(labels, attention_mask)
    valid = targets != IGNORE_INDEX

    def cross_entropy_rows(rows: torch.Tensor, _teacher: torch.Tensor | None, row_targets: torch.Tensor | None):
        return token_cross_entropy(rows, row_targets)

    return chunked_row_sum(cross_entropy_rows, logits, valid, targets=targets.clamp_min(0), chunk_size=chunk_size)


def next_token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The next-token cross-entropy, a mean over the valid positions of the batch (0 when there are none)."""
    total, count = next_token_cross_entropy_sum(logits, labels, attention_mask, chunk_size)
    return total / count.clamp_min(1.0)


@register_loss
class TokenKDLoss(DistillationLoss):
    """Logit KD over a vocabulary, position by position: forward KL, reverse KL or GKD's generalised JSD.

    ``tau^2 * mean_n D(softmax(t_n / tau), softmax(s_n / tau))`` over the valid positions ``n`` (``mask``), with
    ``D`` the ``divergence`` (the module docstring gives each formula and TRL's ``beta`` convention). Computed in
    chunks of positions (``chunk_size``), so that float32 copies of full-vocabulary logits never span the batch.
    With ``divergence='forward_kl'`` on ``[B, C]`` class logits it is :class:`~hf_pcoh.losses.LogitKDLoss`.

    Args:
        student_dim: the student's vocabulary (or number of classes) ``V``.
        teacher_dim: the teacher's; must equal ``student_dim`` (else a ``ValueError`` naming both).
        divergence: ``'forward_kl'`` (KL(teacher || student), default), ``'reverse_kl'`` (KL(student || teacher)) or
            ``'jsd'`` (generalised Jensen-Shannon, ``beta``).
        beta: the JSD's mixture weight of the teacher, in [0, 1]; 0 = forward KL, 1 = reverse KL (TRL's convention).
        temperature: the softmax temperature ``tau`` of both models; the divergence is multiplied by ``tau^2``.
        chunk_size: positions per chunk (default: as many as fit 2^24 float32 values, 512 for a 32k vocabulary).

    Inputs:
        student and teacher logits ``[B, T, V]`` with ``mask`` ``[B, T]`` (1 = a position compared: for a language
        model, the positions that predict a target, :func:`next_token_targets`), or ``[B, V]`` with an optional
        ``mask`` ``[B]``. ``labels`` are not read. Returns a scalar: the mean over the masked-in positions.

    References:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024
        (arXiv 2306.13649), Eq. 1; Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015
        (the temperature and the ``tau^2`` factor); TRL's ``GKDTrainer.generalized_jsd_loss``.

    Example::

        loss = TokenKDLoss(student_dim=32000, teacher_dim=32000, divergence="jsd", beta=0.5, temperature=1.0)
        valid = next_token_targets(labels, attention_mask) != -100  # [B, T]
        value = loss(student_logits, teacher_logits, mask=valid)  # [B, T, V], [B, T, V] -> scalar
    """

    name = "token_kd"
    citation = GKD
    accepts_tokens = True
    input_kind = "logits"
    equal_widths = True
    zero_at_agreement = True
    invariances = frozenset({"batch_permutation"})

    def __init__(
        self, student_dim: int, teacher_dim: int, divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
        beta: float = 0.5, temperature: float = 1.0, chunk_size: int | None = None,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        check_same_vocabulary(student_dim, teacher_dim)
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence={divergence!r} is not one of {DIVERGENCES}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta} must be in [0, 1] (0 = forward KL, 1 = reverse KL; try 0.5)")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (try 1.0)")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be a positive number of positions (or None: automatic)")
        self.divergence, self.beta, self.temperature = divergence, float(beta), float(temperature)
        self.chunk_size = chunk_size

    def sum_and_count(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of the divergences, number of positions)`` over the masked-in positions: what a mean over the
        valid tokens of several processes is made of (:func:`hf_pcoh.global_batch.token_mean`)."""
        check_same_vocabulary(student.shape[-1], teacher.shape[-1])
        if student.shape[:-1] != teacher.shape[:-1]:
            raise ValueError(f"token_kd compares the two models position by position, so both must read the same "
                             f"tokens: student logits {tuple(student.shape)}, teacher logits {tuple(teacher.shape)}")
        if student.shape[-1] != self.student_dim:
            raise ValueError(f"token_kd was built for {self.student_dim} logits, got {student.shape[-1]}")
        valid = (torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device) if mask is None
                 else mask.to(device=student.device).bool())

        def divergence_rows(rows: torch.Tensor, teacher_rows: torch.Tensor | None, _targets: torch.Tensor | None):
            return token_divergence(rows, teacher_rows, self.divergence, self.beta, self.temperature)

        return chunked_row_sum(divergence_rows, student, valid, teacher=teacher, chunk_size=self.chunk_size)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        total, count = self.sum_and_count(student, teacher, mask)
        return total / count.clamp_min(1.0)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, divergence={self.divergence}, beta={self.beta}, "
                f"temperature={self.temperature}, chunk_size={self.chunk_size}")
