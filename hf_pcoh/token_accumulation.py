"""Token-level terms under gradient accumulation: a target token weighs the same whichever micro-batch it is in.

Next-token cross-entropy and token KD (:mod:`hf_pcoh.losses.token_kd`) are means over the target tokens of a
batch. With gradient accumulation the Trainer runs ``k`` micro-batches per update on each of ``W`` processes,
divides each micro-batch's loss by ``k`` (``loss_is_scaled_for_ga = False``: the other terms are per-micro-batch
means) and DDP averages the processes' gradients. Were each micro-batch's term its own token mean, every
micro-batch would weigh the same, so a token of a short micro-batch would count more than one of a long one, and
the update would not be that of one batch of all ``k W`` micro-batches.

So the trainer counts, before each update, the target tokens ``N`` of all its micro-batches on all processes
(:class:`TokenAccumulation`, what transformers hands ``compute_loss`` as ``num_items_in_batch``), and each
micro-batch's token sum ``S`` is divided by ``D = N / (k W)``, the mean number of target tokens per micro-batch
and process (:func:`window_token_mean`)::

    v = S / D = k W S / N    ->  after the Trainer's 1 / k and DDP's 1 / W:  sum over the update of S / N

the mean over the target tokens of the whole accumulated global batch, exactly; the logged term (the mean of
``v`` over micro-batches and processes) is that mean too. With ``k = 1`` this is
:func:`hf_pcoh.global_batch.token_mean`, without its all-reduce (the count was summed once per update). Without a
count (evaluation, or a caller that passes none) the term is the micro-batch's token mean over the processes
(``token_mean``). Tokens are always weighted over the processes, whatever ``average_tokens_across_devices``.
"""

from __future__ import annotations

from typing import Any

import torch

from .distributed import world_size
from .global_batch import token_mean
from .losses.token_kd import IGNORE_INDEX, next_token_targets


def target_tokens(batch: dict[str, Any]) -> torch.Tensor | None:
    """The number of positions of a collated causal-LM batch that predict a target (``labels`` ``[B, T]``, the
    student's ``attention_mask``; :func:`~hf_pcoh.losses.token_kd.next_token_targets`); None without labels."""
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        return None
    attention_mask = (batch.get("student_inputs") or {}).get("attention_mask")
    return (next_token_targets(labels, attention_mask) != IGNORE_INDEX).sum()


def tokens_per_micro_batch(num_items_in_batch: torch.Tensor | int | None, micro_batches: int) -> torch.Tensor | None:
    """``D = N / (k W)``: the update's target tokens ``N`` (all micro-batches, all processes) per micro-batch and
    process; None when no count was given."""
    if num_items_in_batch is None:
        return None
    tokens = torch.as_tensor(num_items_in_batch, dtype=torch.float32).clamp_min(1.0)  # no targets: every S is 0
    return tokens / (micro_batches * world_size())


def window_token_mean(total: torch.Tensor, count: torch.Tensor,
                      target_tokens_per_micro_batch: torch.Tensor | None = None) -> torch.Tensor:
    """A token-level term of one micro-batch from its sum ``total`` over its ``count`` target tokens: ``total / D``
    with the update's ``D`` (:func:`tokens_per_micro_batch`), else the token mean over the processes
    (:func:`~hf_pcoh.global_batch.token_mean`)."""
    if target_tokens_per_micro_batch is None:
        return token_mean(total, count)
    return total / target_tokens_per_micro_batch.to(device=total.device, dtype=total.dtype)


class TokenAccumulation:
    """``DistillationTrainer``'s part in the token weighting above (a mixin before ``transformers.Trainer``).

    ``_get_num_items_in_batch`` (the Trainer calls it once per update, with the update's micro-batches) counts a
    language-model run's target tokens on every process and sums them over the processes; other runs get None, as
    the Trainer gives them. :meth:`target_tokens_per_micro_batch` turns that count into the denominator ``D`` that
    ``compute_loss`` hands the model.
    """

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        model = self.accelerator.unwrap_model(self.model)
        if not getattr(model, "causal_lm", False):
            return super()._get_num_items_in_batch(batch_samples, device)
        counts = [target_tokens(batch) for batch in batch_samples]
        if not counts or any(count is None for count in counts):
            return None
        tokens = torch.stack([count.to(device) for count in counts]).sum()
        if world_size() > 1:  # before any forward: the default group, as the Trainer's own count
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        return tokens

    def target_tokens_per_micro_batch(self, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor | None:
        """``D`` of the current update (:func:`tokens_per_micro_batch`; the Trainer's own count of its micro-batches,
        fewer for the last update of an epoch); None outside training, where the Trainer gives no count."""
        micro_batches = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return tokens_per_micro_batch(num_items_in_batch, micro_batches)
