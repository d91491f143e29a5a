"""CosPress: cosine-similarity-preserving compression of the teacher space, then feature matching.

Mannix, Hodgkinson, Bondell, "Preserving Angles Improves Feature Distillation" (TMLR 11/2025, arXiv
2411.15239; its Algorithm 1). The paper's equations were not readable here, so the exact form was
checked against the authors' released method and recipe (emannix/cospress-cosine-similarity-preserving-
compression: ``proteus_vmfsne7_reversed.py`` with ``run/CosPress_imagenet_dinov2_vits.yaml``; where the
constructor's defaults and the recipe differ we follow the recipe). A learned map ``h`` compresses
the teacher's ``d_t``-dimensional features to the student's ``d_s`` so that cosine similarities
between points survive, and the student regresses onto the compressed features:

* *map losses* (train ``h`` only; the teacher is frozen and the student is not involved): with
  ``C^T_ij = cos(t_i, t_j)`` and ``C^h_ij = cos(h(t_i), h(t_j))``, diagonal masked, and for each
  temperature ``tau`` the conditional distributions ``p(j|i) = softmax_j(C^T_ij / tau)`` and
  ``q(j|i) = softmax_j(C^h_ij / tau)``,

      form "full"    (default):  KL(P || Q),  P_ij = (p(j|i) + p(i|j)) / sum_kl (p(l|k) + p(k|l)),  Q likewise,
      form "rowwise":            mean_i KL(p(.|i) || q(.|i)),

  averaged over ``tau`` in {0.01, 0.02, ..., 0.10}. *Global*: over the pooled/CLS vectors of the batch.
  *Local* (token features only): within each image/sequence over its own tokens, averaged over them.
* *feature losses* (train the student only: ``h(t)`` is detached): *token*
  ``1 - cos(s_cls, h(t_cls))`` and *feature* ``1 - cos(vec(S_tokens), vec(h(T_tokens)))`` per example
  (``feature_metric="mse"``: mean squared error instead, for both).

``L = lambda_local L_local + lambda_global L_global + lambda_feature L_feature + lambda_token L_token``.

The map (the recipe's): ``h(t) = W LN(t) + b``, LayerNorm then a linear layer, from random weights. Two
options of ours, for a student that already lives in the teacher's space (initialised from its layers):
``map_init="identity"`` starts ``W`` at the (rectangular) identity and ``b`` at 0, and
``map_layer_norm=False`` drops the LayerNorm. Why they matter: ``LN`` centres and scales each vector over
its own coordinates, so ``cos(LN t_i, LN t_j)`` is the *Pearson correlation* of ``t_i`` and ``t_j``, not
their cosine; and a random ``W`` is a random linear image of the teacher's space, which the student is
pulled towards while ``h`` is still being learned. With both (and equal widths) ``h`` starts as the
identity: the map losses are 0 and stay there, and the token term is ``1 - cos(s, t)``, a cosine
regression onto the teacher itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .base import DistillationLoss, register_loss
from .numerics import divide_by_largest, masked_mean

# The authors' recipe: ten temperatures 0.01, 0.02, ..., 0.10.
DEFAULT_TEMPERATURES: tuple[float, ...] = tuple(round(0.01 * step, 2) for step in range(1, 11))
# Masked logits: large and finite in float32 (exp() underflows to exactly 0; -inf would give NaN in KL terms).
MASKED_LOGIT = -1.0e9

FormName = Literal["full", "rowwise"]
FeatureMetricName = Literal["cosine", "mse"]
GlobalTokenName = Literal["first", "mean"]
MapInitName = Literal["random", "identity"]


# Teacher rows whose largest entry exceeds this are divided by it before h: LayerNorm would overflow
# float32 on ~1e19 and is scale-invariant up to its eps, which is negligible at this size.
HUGE_TEACHER_ENTRY = 1.0e4


def cosine_matrix(features: torch.Tensor) -> torch.Tensor:
    """``[..., N, d] -> [..., N, N]`` cosine similarities; a zero vector has cosine 0 with everything."""
    unit = F.normalize(divide_by_largest(features, dim=-1), dim=-1, eps=1e-12)
    return unit @ unit.transpose(-1, -2)


# Log-probabilities are floored here before exp(): e^-80 ~ 2e-35 is still a normal float32, and what lies
# below it changes no sum by more than ~1e-31, but denormal results make exp() several times slower on CPU.
LOG_PROBABILITY_FLOOR = -80.0
# Temperatures are batched into [T, ..., N, N] tensors of at most this many values (memory per step).
TEMPERATURE_BATCH_ELEMENTS = 2**22


def log_add_exp(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``log(e^a + e^b) = max(a, b) + log1p(e^-|a - b|)``, the exponent floored at ``LOG_PROBABILITY_FLOOR``.

    Written out because ``torch.logaddexp`` is about 5x slower on CPU (measured at [10, 128, 128]).
    Not differentiable in place: callers that need a gradient write it out analytically.
    """
    gap = (first - second).abs().neg().clamp_min(LOG_PROBABILITY_FLOOR)
    # log(1 + x) rather than log1p(x): 4x faster on CPU, and it differs only where x < 6e-8, by under 6e-8.
    return torch.maximum(first, second) + gap.exp_().add_(1.0).log_()


def rows_with_pairs(valid_pairs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``n`` per matrix: the rows of ``valid_pairs`` ``[..., N, N]`` with at least one valid pair (at least 1)."""
    return valid_pairs.any(dim=-1).sum(dim=-1).clamp_min(1).to(dtype)


def teacher_distribution(
    teacher_cosines: torch.Tensor, valid_pairs: torch.Tensor, temperature: float | torch.Tensor, form: FormName
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's similarity distribution ``P`` ``[..., N, N]`` (0 off the valid pairs) and ``sum P log P``.

    ``full``: the joint ``P_ij = (p(j|i) + p(i|j)) / (2 n)``, ``n`` the rows with a valid pair (each
    conditional row sums to 1), and ``sum_ij P log P`` per matrix; ``rowwise``: the conditionals
    ``p(j|i)`` and the mean over valid rows of ``sum_j p log p``. No gradient: the teacher is fixed.
    """
    with torch.no_grad():
        logits = (teacher_cosines / temperature).masked_fill(~valid_pairs, MASKED_LOGIT)
        # Entries 80 below their row's largest would only underflow (denormals: a slow exp on CPU).
        logits = torch.maximum(logits, logits.amax(dim=-1, keepdim=True) + LOG_PROBABILITY_FLOOR)
        conditional = logits.softmax(dim=-1) * valid_pairs
        rows = rows_with_pairs(valid_pairs, conditional.dtype)
        if form == "full":
            joint = (conditional + conditional.transpose(-1, -2)) / (2.0 * rows)[..., None, None]
            return joint, p_log_p(joint).sum(dim=(-2, -1))
        return conditional, p_log_p(conditional).sum(dim=(-2, -1)) / rows


def p_log_p(probabilities: torch.Tensor) -> torch.Tensor:
    """``p log p`` with ``0 log 0 = 0`` (``p`` below 1e-30 adds under 1e-28); 5x faster than ``xlogy`` on CPU."""
    return probabilities.clamp_min(1e-30).log_().mul_(probabilities)


class CompressedCrossEntropy(torch.autograd.Function):
    """``-sum P log Q`` per matrix, ``Q`` built from the compressed cosines like ``P`` (analytic backward).

    ``q(j|i) = softmax_j(C^h_ij / tau)`` over the valid pairs. ``full``: ``Q_ij = (q_ij + q_ji) / (2 n)``
    and, with ``r_ij = q_ij / (q_ij + q_ji)``, ``d/dlogit_ij = 2 (q_ij sum_k P_ik r_ik - P_ij r_ij)``
    (``P``, ``Q`` symmetric); ``rowwise``: ``Q = q`` and ``d/dlogit_ij = (q_ij sum_k P_ik - P_ij) / n``.
    Written out because autograd through the log-space symmetrisation keeps and walks about three
    times as many ``[T, N, N]`` tensors (CosPress was a quarter of a small ViT's step at B=128).
    """

    @staticmethod
    def forward(
        ctx: Any,
        compressed_cosines: torch.Tensor,
        teacher_probabilities: torch.Tensor,
        valid_pairs: torch.Tensor,
        temperature: float | torch.Tensor,
        form: FormName,
    ) -> torch.Tensor:
        logits = (compressed_cosines / temperature).masked_fill(~valid_pairs, MASKED_LOGIT)
        log_q = F.log_softmax(logits, dim=-1)  # finite everywhere: P = 0 wherever it is meaningless
        rows = rows_with_pairs(valid_pairs, log_q.dtype)
        if form == "full":
            log_pair_sums = log_add_exp(log_q, log_q.transpose(-1, -2))  # log(q_ij + q_ji)
            cross_entropy = (torch.log(2.0 * rows) * teacher_probabilities.sum(dim=(-2, -1))
                             - (teacher_probabilities * log_pair_sums).sum(dim=(-2, -1)))
            ctx.save_for_backward(log_q, log_pair_sums, teacher_probabilities, valid_pairs)
        else:
            cross_entropy = -(teacher_probabilities * log_q).sum(dim=(-2, -1)) / rows
            ctx.save_for_backward(log_q, rows, teacher_probabilities, valid_pairs)
        ctx.temperature, ctx.form, ctx.cosines_shape = temperature, form, compressed_cosines.shape
        return cross_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        log_q, saved, teacher_probabilities, valid_pairs = ctx.saved_tensors
        q = log_q.clamp_min(LOG_PROBABILITY_FLOOR).exp_() * valid_pairs
        if ctx.form == "full":
            ratios = (log_q - saved).clamp_min_(LOG_PROBABILITY_FLOOR).exp_()  # q_ij / (q_ij + q_ji)
            weighted = ratios.mul_(teacher_probabilities)
            grad_logits = q.mul_(weighted.sum(dim=-1, keepdim=True)).sub_(weighted).mul_(2.0)
            scale = grad_output
        else:
            grad_logits = q.mul_(teacher_probabilities.sum(dim=-1, keepdim=True)).sub_(teacher_probabilities)
            scale = grad_output / saved
        grad_logits.mul_(scale[..., None, None] / ctx.temperature)
        return sum_to_shape(grad_logits, ctx.cosines_shape), None, None, None, None


def sum_to_shape(gradient: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (the leading temperature dimension, any size-1 axes)."""
    while gradient.dim() > len(shape):
        gradient = gradient.sum(dim=0)
    dims = [axis for axis, size in enumerate(shape) if size == 1 and gradient.shape[axis] != 1]
    return gradient.sum(dim=dims, keepdim=True) if dims else gradient


def similarity_kl(
    teacher_cosines: torch.Tensor,
    compressed_cosines: torch.Tensor,
    valid_pairs: torch.Tensor,
    temperature: float | torch.Tensor,
    form: FormName,
) -> torch.Tensor:
    """KL between the teacher's and the compressed similarity distributions of each ``[N, N]`` matrix.

    ``*_cosines`` are ``[..., N, N]``; ``valid_pairs`` ``[..., N, N]`` is True for the pairs that take
    part (``i != j``, both real tokens); ``temperature`` is a number or a tensor that broadcasts against
    them (``[T, 1, ..., 1]`` for ``T`` temperatures at once). Returns one KL per matrix (``full``) or the
    mean of the row KLs over the rows that have a valid pair (``rowwise``), shaped as the broadcast
    ``[..., N, N]`` without its last two dimensions: ``sum P log P`` (:func:`teacher_distribution`)
    ``+ (-sum P log Q)`` (:class:`CompressedCrossEntropy`), gradients to the compressed cosines only.
    """
    teacher_probabilities, negative_entropy = teacher_distribution(teacher_cosines, valid_pairs, temperature, form)
    cross_entropy = CompressedCrossEntropy.apply(compressed_cosines, teacher_probabilities, valid_pairs, temperature, form)
    return negative_entropy + cross_entropy


def similarity_map_loss(
    teacher_features: torch.Tensor,
    compressed_features: torch.Tensor,
    valid_points: torch.Tensor | None,
    temperatures: Sequence[float],
    form: FormName,
) -> torch.Tensor:
    """The map loss over the point sets in ``[..., N, d]`` (``valid_points`` ``[..., N]``), averaged over
    the temperatures and over the sets that have at least one valid pair. The temperatures are
    evaluated together, ``TEMPERATURE_BATCH_ELEMENTS`` values at a time (one pass of each operation
    instead of one per temperature: ~3x faster at B=128)."""
    size = teacher_features.shape[-2]
    not_self = ~torch.eye(size, dtype=torch.bool, device=teacher_features.device)
    if valid_points is None:
        valid_pairs = not_self.expand(*teacher_features.shape[:-2], size, size)
    else:
        valid_pairs = valid_points[..., :, None] & valid_points[..., None, :] & not_self
    with torch.no_grad():
        teacher_cosines = cosine_matrix(teacher_features)
    compressed_cosines = cosine_matrix(compressed_features)
    per_group = max(1, TEMPERATURE_BATCH_ELEMENTS // teacher_cosines.numel())
    total = compressed_cosines.new_zeros(teacher_cosines.shape[:-2])
    for first in range(0, len(temperatures), per_group):
        group = temperatures[first : first + per_group]
        taus = torch.tensor(group, dtype=compressed_cosines.dtype, device=compressed_cosines.device)
        taus = taus.view(-1, *([1] * teacher_cosines.dim()))  # [T, 1, ..., 1]
        total = total + similarity_kl(teacher_cosines, compressed_cosines, valid_pairs, taus, form).sum(dim=0)
    per_set = total / len(temperatures)
    has_pair = valid_pairs.flatten(-2).any(dim=-1)
    return masked_mean(per_set, has_pair)


@register_loss
class CosPressLoss(DistillationLoss):
    """CosPress: learn ``h: d_t -> d_s`` preserving cosine similarities, and pull the student onto ``h(teacher)``.

    ``L = lambda_local L_local + lambda_global L_global + lambda_feature L_feature + lambda_token L_token``
    (formulas in the module docstring; the map losses are the paper's similarity-preserving KL terms,
    the feature losses its cosine regression). ``h`` = LayerNorm(d_t) + Linear(d_t -> d_s, bias) is a
    submodule (``compression``), trained by the map losses only and saved with the distillation heads.
    After each call, ``parts`` holds the unweighted terms that were computed (detached, for logging):
    ``global_map`` (``L_global``), ``token`` (``L_token``) and, for tokens, ``local_map``, ``feature``.

    Args:
        student_dim: width ``d_s`` of the student's features (the output width of ``h``).
        teacher_dim: width ``d_t`` of the teacher's features.
        temperatures: the softmax temperatures the map losses average over (default 0.01, 0.02, ..., 0.10).
        form: ``"full"`` (default: KL of the symmetrised joint distributions) or ``"rowwise"``.
        feature_metric: ``"cosine"`` (default: ``1 - cos``) or ``"mse"``, for the token and feature losses.
        global_token: ``"first"`` (default: token 0 plays CLS) or ``"mean"`` (the masked mean of the tokens).
        lambda_local: weight of the local (per-sequence, token) map loss (default 1.0; 0 turns it off).
        lambda_global: weight of the global (batch) map loss (default 1.0).
        lambda_feature: weight of the token-feature regression (default 1.0).
        lambda_token: weight of the global-token (CLS) regression (default 1.0).
        map_init: ``"random"`` (default, the recipe) or ``"identity"`` (``W`` = rectangular identity, ``b`` = 0).
        map_layer_norm: whether ``h`` starts with a LayerNorm (default True, the recipe; False: ``h(t) = W t + b``).

    Inputs:
        pooled ``[B, d_s]`` / ``[B, d_t]``, ``B >= 2``: the global map loss and the token loss (the pooled
        vectors play the CLS token); or tokens ``[B, T, d_s]`` / ``[B, T, d_t]`` with ``mask`` ``[B, T]``: all
        four terms, the CLS being token 0 (``global_token="mean"``: the masked mean of the tokens).
        Returns a scalar.

    References:
        Mannix, Hodgkinson, Bondell, "Preserving Angles Improves Feature Distillation", TMLR 2025
        (arXiv 2411.15239), Algorithm 1; the recipe of the authors' released code.

    Example::

        loss = CosPressLoss(student_dim=192, teacher_dim=384)
        value = loss(student_tokens, teacher_tokens, mask=attention_mask)  # [B, T, 192], [B, T, 384]
    """

    name = "cospress"
    citation = """@article{mannix2025cospress,
  title   = {Preserving Angles Improves Feature Distillation},
  author  = {Mannix, Evelyn J. and Hodgkinson, Liam and Bondell, Howard},
  journal = {Transactions on Machine Learning Research},
  year    = {2025},
  note    = {arXiv:2411.15239}
}"""
    batch_level = True
    min_batch_size = 2
    accepts_tokens = True
    # h is learned (random at first), so neither agreement nor a rotation of the teacher gives a known value;
    # the student is compared by cosines.
    invariances = frozenset({"student_scale", "batch_permutation"})

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
        form: FormName = "full",
        feature_metric: FeatureMetricName = "cosine",
        global_token: GlobalTokenName = "first",
        lambda_local: float = 1.0,
        lambda_global: float = 1.0,
        lambda_feature: float = 1.0,
        lambda_token: float = 1.0,
        map_init: MapInitName = "random",
        map_layer_norm: bool = True,
    ) -> None:
        super().__init__(student_dim, teacher_dim)
        temperatures = tuple(float(tau) for tau in temperatures)
        if not temperatures or any(not tau > 0 for tau in temperatures):
            raise ValueError(f"temperatures={list(temperatures)} must be a non-empty list of positive numbers (e.g. 0.01..0.10)")
        if form not in ("full", "rowwise"):
            raise ValueError(f"form={form!r} must be 'full' (symmetrised joint, the recipe) or 'rowwise'")
        if feature_metric not in ("cosine", "mse"):
            raise ValueError(f"feature_metric={feature_metric!r} must be 'cosine' (the recipe) or 'mse'")
        if global_token not in ("first", "mean"):
            raise ValueError(f"global_token={global_token!r} must be 'first' (CLS) or 'mean'")
        lambdas = dict(lambda_local=lambda_local, lambda_global=lambda_global, lambda_feature=lambda_feature, lambda_token=lambda_token)
        for option, value in lambdas.items():
            if value < 0:
                raise ValueError(f"{option}={value} must be >= 0 (default 1.0; 0 turns the term off)")
        self.temperatures = temperatures
        self.form = form
        self.feature_metric = feature_metric
        self.global_token = global_token
        self.lambda_local, self.lambda_global = float(lambda_local), float(lambda_global)
        self.lambda_feature, self.lambda_token = float(lambda_feature), float(lambda_token)
        if map_init not in ("random", "identity"):
            raise ValueError(f"map_init={map_init!r} must be 'random' (the recipe) or 'identity' (h starts as the "
                             "identity: for a student initialised from the teacher)")
        self.map_init, self.map_layer_norm = map_init, bool(map_layer_norm)
        normalisation = nn.LayerNorm(teacher_dim) if self.map_layer_norm else nn.Identity()
        self.compression = nn.Sequential(normalisation, nn.Linear(teacher_dim, student_dim, bias=True))
        if map_init == "identity":
            with torch.no_grad():
                self.compression[1].weight.copy_(torch.eye(student_dim, teacher_dim))
                self.compression[1].bias.zero_()

    def untrained_parameters(self, tokens: bool) -> list[str]:
        """The map ``h`` trains through the similarity-map terms only (``global_map``; ``local_map`` on tokens): the
        other terms read its output detached, so with those off its parameters never get a gradient."""
        trains_map = self.lambda_global > 0 or (tokens and self.lambda_local > 0)
        return [] if trains_map else [name for name, _ in self.named_parameters()]

    def trains_student(self, tokens: bool) -> bool:
        """The student is trained by ``token`` (and ``feature`` on tokens) only."""
        return self.lambda_token > 0 or (tokens and self.lambda_feature > 0)

    def compress(self, teacher: torch.Tensor) -> torch.Tensor:
        """``h(teacher)``: ``[..., d_t] -> [..., d_s]`` in float32 (gradients reach ``h`` only)."""
        weight = self.compression[1].weight
        teacher = teacher.detach()
        huge = teacher.abs().amax(dim=-1, keepdim=True) > HUGE_TEACHER_ENTRY
        teacher = torch.where(huge, divide_by_largest(teacher, dim=-1), teacher)
        return self.compression(teacher.to(weight.dtype)).float()

    def feature_distance(self, student: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Mean over examples of ``1 - cos`` of the flattened features (or their MSE); ``[B, ...]`` inputs."""
        if weights is not None:
            student, target = student * weights, target * weights
        if self.feature_metric == "mse":
            return masked_mean((student - target).pow(2), weights)
        student, target = divide_by_largest(student.flatten(1), dim=-1), divide_by_largest(target.flatten(1), dim=-1)
        cosines = F.cosine_similarity(student, target, dim=1, eps=1e-12)
        return (1.0 - cosines).mean()

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = student.dim() == 3
        if student.dim() not in (2, 3) or teacher.shape[:-1] != student.shape[:-1]:
            raise ValueError(
                f"cospress expects student/teacher features [B, d_s]/[B, d_t] or tokens [B, T, d_s]/[B, T, d_t] with the "
                f"same B (and T), got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        if student.shape[-1] != self.student_dim or teacher.shape[-1] != self.teacher_dim:
            raise ValueError(
                f"cospress was built for student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, got widths "
                f"{student.shape[-1]} and {teacher.shape[-1]}"
            )
        with torch.autocast(device_type=student.device.type, enabled=False):
            student = student.float()
            teacher = teacher.detach().float()
            compressed = self.compress(teacher)  # [B, (T,) d_s]
            valid = mask.bool() if (tokens and mask is not None) else None  # [B, T]
            weights = valid[..., None].float() if valid is not None else None
            if tokens:
                student_global = self.pool(student, valid)
                teacher_global = self.pool(teacher, valid)
                compressed_global = compressed[:, 0] if self.global_token == "first" else self.compress(teacher_global)
            else:
                student_global, teacher_global, compressed_global = student, teacher, compressed
            parts: dict[str, torch.Tensor] = {}
            if self.lambda_global > 0:
                parts["global_map"] = similarity_map_loss(teacher_global, compressed_global, None, self.temperatures, self.form)
            if self.lambda_token > 0:
                parts["token"] = self.feature_distance(student_global, compressed_global.detach(), None)
            if tokens and self.lambda_local > 0:
                parts["local_map"] = similarity_map_loss(teacher, compressed, valid, self.temperatures, self.form)
            if tokens and self.lambda_feature > 0:
                parts["feature"] = self.feature_distance(student, compressed.detach(), weights)
            total = student.new_zeros(())
            for part, value in parts.items():
                total = total + self.part_weights[part] * value
            self.parts = {part: value.detach() for part, value in parts.items()}
            return total

    @property
    def part_weights(self) -> dict[str, float]:
        """The weight of each part in the total: ``lambda_global``, ``lambda_token``, ``lambda_local``, ``lambda_feature``."""
        return {
            "global_map": self.lambda_global, "token": self.lambda_token,
            "local_map": self.lambda_local, "feature": self.lambda_feature,
        }

    def pool(self, tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``[B, T, d] -> [B, d]``: the first (CLS) token, or the mean over the real tokens."""
        if self.global_token == "first":
            return tokens[:, 0]
        return masked_mean(tokens, valid, dim=1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, form={self.form!r}, feature_metric={self.feature_metric!r}, "
            f"temperatures={list(self.temperatures)}, lambdas=(local={self.lambda_local}, global={self.lambda_global}, "
            f"feature={self.lambda_feature}, token={self.lambda_token}), map_init={self.map_init!r}, "
            f"map_layer_norm={self.map_layer_norm}"
        )
