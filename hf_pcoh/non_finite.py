"""The non-finite guard: an update whose loss or gradients hold NaN/inf never reaches the weights.

Each micro-batch's loss is recorded as it comes (:meth:`NonFiniteGuard.record_loss`). Once per optimizer
step, after the last micro-batch's backward and gradient clipping and *before* ``optimizer.step()``, the
window is judged (:meth:`NonFiniteGuard.check_update`): a non-finite loss in any micro-batch, or a
non-finite gradient, on **any** process (the flags are OR-ed across processes, so every process takes the
same decision). Then the trainer either skips the whole update (``non_finite_loss: skip``: the whole
gradient-accumulation window, on every process) or checkpoints the state before it and stops (``stop``).
Because nothing has touched the weights or the optimizer's moments yet, that checkpoint really is the last
good state.

The gradients are judged by the norm the Trainer computes anyway for clipping (and logging) before this
point, with or without clipping (``max_grad_norm 0``): the update is judged as a whole, so a non-finite total
norm is a bad update even when every element is finite (the sum of squares overflowed float32: with clipping,
the update is scaled by 1/inf to nothing; without, steps of ~1e19 reach the weights). A finite total norm means
every gradient is finite, so the usual update costs no extra pass over the gradients (on a 2-layer MiniLM student, a separate ``isfinite`` pass took ~10x the norm's time, about 5% of
a CPU training step). Only a non-finite norm, or one this guard was not given, makes it look at each
parameter's gradient, to name the bad ones.

Gradients are not checked under fp16 (the Trainer's gradient scaler skips overflowing steps itself and
lowers its scale: an inf gradient there is routine); the loss is checked in every case.

**DeepSpeed** steps inside ``accelerator.backward``, before ``on_pre_optimizer_step``, so no callback can come
between its gradients and its step. Its engine judges the update itself instead: ZeRO stages 1-3 compute the
global gradient norm before stepping and skip the whole update (weights, moments and schedule untouched,
gradients dropped) when it is NaN/inf, on every process alike (the norm is all-reduced); bf16 does so with
``check_grad_overflow`` (DeepSpeed's default), fp16 through its loss scaler. The guard then reads that verdict
(``accelerator.optimizer_step_was_skipped``) rather than the gradients: ``skip`` counts the skipped update,
``stop`` checkpoints the untouched weights and stops. A non-finite loss whose gradients all stayed finite
(a NaN in a term that does not reach the weights) cannot be undone there: the engine applied that finite
update, and the guard says so in a warning. :func:`deepspeed_guard_problem` refuses the DeepSpeed settings
under which the engine does not judge (ZeRO stage 0 without fp16, bf16 with ``check_grad_overflow: false``,
``compute_grad_norm: false``) when the run starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .distributed import any_process


logger = logging.getLogger(__name__)

# Stands for "no parameter's gradient is NaN/inf, but their total norm is" in the list of bad gradients.
OVERFLOWED_NORM = "<total gradient norm>"


class NonFiniteLossError(RuntimeError):
    """The distillation loss became NaN or infinite; the last good state was checkpointed."""


class UnusableWeightsError(NonFiniteLossError):
    """The weights are NaN/inf or beyond ``max_abs_weight``: they were not saved (see :mod:`hf_pcoh.weights`)."""


def non_finite_gradients(model: nn.Module) -> list[str]:
    """Names of the parameters whose (local part of the) gradient holds NaN/inf; one device sync in all."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return []
    local = [grad.to_local() if hasattr(grad, "to_local") else grad for _, grad in named]
    finite = torch.stack([torch.isfinite(grad).all().to(local[0].device) for grad in local])  # [P]
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


class NonFiniteGuard:
    """What the accumulation window saw, and how many updates in a row were skipped."""

    def __init__(self, check_gradients: bool = True, engine_skipped_step: Callable[[], bool] | None = None) -> None:
        self.check_gradients = check_gradients
        # Under DeepSpeed: whether its engine skipped the update it has just judged (already the same everywhere).
        self.engine_skipped_step = engine_skipped_step
        self.bad_terms: list[str] = []  # the non-finite terms seen in this window, on this process
        self.consecutive_skips = 0
        # The window's total gradient norm as the trainer gave it (a tensor or a number), or None; read only when
        # gradients are checked, so that fp16 and DeepSpeed runs pay no device sync for it.
        self.gradient_norm: torch.Tensor | float | None = None

    def record_gradient_norm(self, norm: torch.Tensor | float | None) -> None:
        """Note the total gradient norm of the coming update (the Trainer's clipping norm), or None."""
        self.gradient_norm = norm

    def record_loss(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Note a micro-batch's loss; one device sync (the Trainer's own NaN filter makes one too)."""
        if not bool(torch.isfinite(loss)):
            self.bad_terms += [label for label, value in terms.items() if not bool(torch.isfinite(value).all())] or ["total"]

    def check_update(self, model: nn.Module, device: torch.device | str | None = None) -> str | None:
        """Why the coming update must not happen (a sentence), or None; then the window starts afresh.

        A collective: every process calls it at every optimizer step.
        """
        norm, self.gradient_norm = self.gradient_norm, None
        bad_gradients = []
        norm_overflowed = False
        if self.check_gradients and (norm is None or not math.isfinite(float(norm))):  # one sync, as the scan made
            bad_gradients = non_finite_gradients(model)
            # Every element finite and yet the norm is not: the sum of squares overflowed. Such an update is as bad
            # as a NaN one (clipping by an infinite norm zeroes it, no clipping lets ~1e19-sized steps through).
            norm_overflowed = norm is not None and not bad_gradients
        if norm_overflowed:
            bad_gradients = [OVERFLOWED_NORM]
        bad_terms, self.bad_terms = sorted(set(self.bad_terms)), []
        loss_bad, gradients_bad = any_process([bool(bad_terms), bool(bad_gradients)], device)
        if self.engine_skipped_step is not None:
            return self.engine_verdict(loss_bad, bad_terms)
        if loss_bad:
            where = ", ".join(bad_terms) if bad_terms else "the loss of another process"
            return f"the loss term(s) {where} became NaN/inf"
        if gradients_bad:
            if not bad_gradients:
                return "the gradients of another process became NaN/inf"
            if bad_gradients == [OVERFLOWED_NORM]:
                return ("the total gradient norm became NaN/inf (each gradient element is finite: the sum of their "
                        "squares overflowed)")
            more = f" and {len(bad_gradients) - 1} more" if len(bad_gradients) > 1 else ""
            return f"the gradient of {bad_gradients[0]}{more} became NaN/inf"
        return None

    def engine_verdict(self, loss_bad: bool, bad_terms: list[str]) -> str | None:
        """DeepSpeed's judgement of the update it has already taken or skipped (see the module docstring)."""
        where = ", ".join(bad_terms) if bad_terms else "the loss of another process"
        if self.engine_skipped_step():
            if loss_bad:
                return f"the loss term(s) {where} became NaN/inf"
            return "the gradients became NaN/inf (DeepSpeed's overflow check)"
        if loss_bad:
            logger.warning("the loss term(s) %s became NaN/inf but every gradient stayed finite: DeepSpeed applied "
                           "that update (a term that does not reach the weights?)", where)
        return None


def deepspeed_guard_problem(deepspeed_config: dict) -> str | None:
    """Why DeepSpeed's engine would let a non-finite update through under ``deepspeed_config`` (one line naming
    the setting to change), or None."""
    zero = deepspeed_config.get("zero_optimization", {}) or {}
    stage = int(zero.get("stage", 0) or 0)
    fp16 = bool((deepspeed_config.get("fp16") or {}).get("enabled", False))
    bf16 = deepspeed_config.get("bf16") or deepspeed_config.get("bfloat16") or {}
    if fp16:
        return None
    if stage == 0:
        return ("DeepSpeed ZeRO stage 0 steps without checking the gradients, so non_finite_loss cannot keep a NaN "
                "update from the weights: use zero_stage 1, 2 or 3 (or fp16)")
    if bf16.get("enabled", False) is True and bf16.get("check_grad_overflow", True) is False:
        return ("DeepSpeed's bf16 check_grad_overflow is false, so non_finite_loss cannot keep a NaN update from the "
                "weights: drop check_grad_overflow from the DeepSpeed config")
    if zero.get("compute_grad_norm", True) is False:
        return ("DeepSpeed's zero_optimization.compute_grad_norm is false, so non_finite_loss cannot keep a NaN "
                "update from the weights: drop it from the DeepSpeed config")
    return None


def non_finite_guard_for(accelerator: Any, deepspeed: bool) -> NonFiniteGuard:
    """The guard a run's accelerator calls for: gradients checked here unless fp16's scaler or DeepSpeed's engine
    judges them (then the engine's verdict is read); DeepSpeed settings without that verdict are refused."""
    if deepspeed:
        problem = deepspeed_guard_problem(accelerator.state.deepspeed_plugin.deepspeed_config)
        if problem is not None:
            raise ValueError(problem)
        return NonFiniteGuard(check_gradients=False,
                              engine_skipped_step=lambda: bool(accelerator.optimizer_step_was_skipped))
    return NonFiniteGuard(check_gradients=getattr(accelerator, "scaler", None) is None)


class NonFiniteCallback(TrainerCallback):
    """Calls ``guard`` between an update's last backward and ``optimizer.step()``.

    Why this event: in transformers 5's loop ``on_pre_optimizer_step`` is the one public point where the whole
    accumulation window's gradients exist (``training_step`` sees one micro-batch; overriding the private
    loop would break with each release) and nothing has changed the weights yet (``on_optimizer_step`` comes
    after the step). It fires on every process, so the guard's collective is reached by all.
    """

    def __init__(self, guard: Callable[[], None]) -> None:
        self.guard = guard

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.guard()
        return control


def skip_next_optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """Make the optimizer's next ``step()`` a no-op, then restore it.

    The Trainer calls ``optimizer.step()`` unconditionally right after ``on_pre_optimizer_step``. Dropping the
    gradients (``grad = None``) would not be enough everywhere: fp16's gradient scaler asserts that it saw
    gradients, and some optimizers decay or move weights without one. A skipped update leaves weights and
    optimizer state untouched; the Trainer then clears the gradients, steps the schedule and counts the step.
    """
    previous = optimizer.__dict__.get("step")  # an instance-level step another library installed, if any

    def skipped_step(*args, **kwargs) -> None:
        if previous is None:
            del optimizer.step
        else:
            optimizer.step = previous

    optimizer.step = skipped_step
