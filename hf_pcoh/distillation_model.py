"""The trainable part of distillation, :class:`DistillationModel` (the student and the loss modules), and the
terms it sums (:func:`add_distillation_terms`): one loss per (layer pair, loss) (:func:`build_terms`), sized by a
probe of both models' features (:class:`FeatureProbe`), plus the optional cross-entropy and logit KD
(:func:`build_logit_kd`): over class logits, or, for a language-model student (``task: causal_lm``), next-token
cross-entropy and logit KD over the vocabulary at every target token (:mod:`hf_pcoh.losses.token_kd`).

``DistillationTrainer`` hands this module to ``transformers.Trainer``, so accelerate wraps, shards, optimises and
checkpoints the student and the losses' learned heads together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from .config import DistillationConfig
from .distributed import world_size
from .features import FeatureExtractor, Features
from .global_batch import GatheredBatch, gather_global_batch, gather_labels, loss_on_global_batch, token_mean
from .losses import DistillationLoss, build_loss
from .losses.token_kd import IGNORE_INDEX, next_token_cross_entropy_sum, next_token_targets
from .models import is_causal_lm
from .readout import FeatureReadout

logger = logging.getLogger(__name__)


@dataclass
class DistillationTerm:
    """One weighted loss between one student layer and one teacher layer."""

    key: str  # the ModuleDict key of its loss module
    label: str  # how it is logged, e.g. "perception_coherence[s-1>t-1]"
    pair_index: int
    weight: float


@dataclass
class FeatureProbe:
    """Both models' outputs on two training rows: what sizes the losses' heads and checks the recipe."""

    student_features: list[Features]
    teacher_features: list[Features]
    student_logits: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    has_labels: bool


def build_terms(
    args: DistillationConfig, readout: FeatureReadout, student_features: list[Features],
    teacher_features: list[Features],
) -> tuple[dict[str, DistillationLoss], list[DistillationTerm]]:
    """One loss module and one term per (layer pair, loss), each loss sized to its pair's feature widths."""
    losses: dict[str, DistillationLoss] = {}
    terms: list[DistillationTerm] = []
    for pair_index, (s_layer, t_layer) in enumerate(zip(readout.student_layers, readout.teacher_layers)):
        s_features, t_features = student_features[pair_index], teacher_features[pair_index]
        for name, weight in zip(args.losses, args.loss_weights):
            key = f"pair{pair_index}_{name}"
            loss = build_loss(name, student_dim=s_features.dim, teacher_dim=t_features.dim, **args.loss_options(name))
            if s_features.values.dim() == 3 and not loss.accepts_tokens:
                raise ValueError(
                    f"loss {name!r} compares pooled features but pooling='none' gives tokens; choose a pooling "
                    "(cls, mean, last_token, gap) or a token-level loss"
                )
            losses[key] = loss
            terms.append(DistillationTerm(key, f"{name}[s{layer_label(s_layer)}>t{layer_label(t_layer)}]", pair_index, weight))
    return losses, terms


def build_logit_kd(
    args: DistillationConfig, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, causal_lm: bool = False
) -> DistillationLoss:
    """Logit KD between teacher and student logits over the same classes (Hinton's, ``logit_kd``) or, for a language
    model or another ``logit_kd_divergence``, over the same vocabulary (``token_kd``: a one-line error names both
    sizes when they differ)."""
    if causal_lm or args.logit_kd_divergence != "forward_kl":
        if teacher_logits is None:
            raise ValueError("logit_kd_weight > 0 needs the teacher's logits: give a teacher with a language-model "
                             "head (AutoModelForCausalLM) or a classification head")
        return build_loss("token_kd", student_dim=student_logits.shape[-1], teacher_dim=teacher_logits.shape[-1],
                          divergence=args.logit_kd_divergence, beta=args.logit_kd_beta,
                          temperature=args.logit_kd_temperature)
    if student_logits.dim() == 3:  # a language model's per-token logits read as classes would average over padding
        raise ValueError(f"the student's logits are per token {tuple(student_logits.shape)} (a language model), but "
                         "task=features compares class logits: use --task causal_lm (or auto)")
    if teacher_logits is None or teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(
            "logit_kd_weight > 0 needs teacher and student logits over the same classes; got "
            f"{None if teacher_logits is None else teacher_logits.shape[-1]} and {student_logits.shape[-1]}"
        )
    classes = student_logits.shape[-1]
    return build_loss("logit_kd", student_dim=classes, teacher_dim=classes, temperature=args.logit_kd_temperature)


def add_distillation_terms(
    model: DistillationModel, args: DistillationConfig, readout: FeatureReadout, probe: FeatureProbe
) -> None:
    """Add every term to ``model``: one loss per (layer pair, loss) sized by ``probe``'s feature widths, and
    the optional cross-entropy and logit KD, checked against the student's and the teacher's outputs."""
    losses, terms = build_terms(args, readout, probe.student_features, probe.teacher_features)
    causal_lm = args.resolved_task(is_causal_lm(model.student)) == "causal_lm"
    if causal_lm and not is_causal_lm(model.student):
        raise ValueError(f"task=causal_lm needs a student with a language-model head (AutoModelForCausalLM), got "
                         f"{type(model.student).__name__}")
    if (args.ce_weight > 0 or args.logit_kd_weight > 0) and probe.student_logits is None:
        raise ValueError("ce_weight / logit_kd_weight need a student with a classification head (logits)")
    if args.ce_weight > 0 and not probe.has_labels:
        raise ValueError("ce_weight > 0 needs labels: set label_column to a column of class labels")
    logit_kd = (build_logit_kd(args, probe.student_logits, probe.teacher_logits, causal_lm)
                if args.logit_kd_weight > 0 else None)
    model.causal_lm = causal_lm
    student_device = next(model.student.parameters()).device  # where the Trainer placed it (CPU until sharded)
    model.add_terms({key: loss.to(student_device) for key, loss in losses.items()}, terms, logit_kd)


def freeze_unread_parameters(
    student: nn.Module, student_inputs: dict[str, torch.Tensor], extractors: Sequence[FeatureExtractor], logits: bool
) -> list[str]:
    """Freeze the student parameters that nothing the run reads depends on; return their names.

    A BERT student read at its hidden states never uses its pooler: its parameters get no gradient, so DDP must
    search for unused parameters at every step and a sharded (FSDP2) optimizer checkpoint holds no state for them,
    which its loader then refuses on resume. Found by one forward and backward on the probe rows: a parameter with
    no gradient from what the run reads (the features of its layers, the logits when a loss takes them); modules
    inside a ``ModuleList`` (blocks, routed experts) are left alone, since a batch may simply not have reached
    them. Frozen parameters are saved unchanged with the student.
    """
    with torch.enable_grad():
        outputs = student(**student_inputs, output_hidden_states=True)
        mask = student_inputs.get("attention_mask")
        read = [extractor(outputs, mask).values for extractor in extractors]
        if logits and getattr(outputs, "logits", None) is not None:
            read.append(outputs.logits)
        total = sum(value.float().sum() for value in read)
        named = [(name, parameter) for name, parameter in student.named_parameters() if parameter.requires_grad]
        gradients = torch.autograd.grad(total, [parameter for _, parameter in named], allow_unused=True)
    in_lists = {id(module) for holder in student.modules() if isinstance(holder, nn.ModuleList)
                for module in holder.modules()}
    owners = {f"{prefix}.{name}".lstrip("."): module for prefix, module in student.named_modules()
              for name, _ in module.named_parameters(recurse=False)}
    frozen = []
    for (name, parameter), gradient in zip(named, gradients):
        owner = owners.get(name)
        if gradient is None and owner is not None and id(owner) not in in_lists:
            parameter.requires_grad_(False)
            frozen.append(name)
    if frozen:
        logger.info("student parameters that nothing the run reads depends on are frozen: %s", ", ".join(frozen))
    return frozen


@dataclass
class DistillationOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def layer_label(layer: int | str) -> str:
    return str(layer)


# How the language-model terms are logged (loss/<name>).
NEXT_TOKEN_CE, TOKEN_KD = "next_token_cross_entropy", "token_kd"


class DistillationModel(nn.Module):
    """The trainable part of distillation: the student and the losses (with their learned heads).

    ``forward(student_inputs, teacher_features, labels=None, teacher_logits=None)`` runs the student,
    extracts its features for every layer pair and returns the weighted total and each term. With ``causal_lm``
    (a language-model student, ``task: causal_lm``) ``labels`` are ``[B, T]`` token labels (``-100``: no target) and
    the cross-entropy and logit KD are next-token CE and KD over the vocabulary, means over the target tokens.
    """

    def __init__(
        self,
        student: PreTrainedModel,
        student_extractors: Sequence[FeatureExtractor],
        losses: dict[str, DistillationLoss],
        terms: list[DistillationTerm],
        ce_weight: float = 0.0,
        logit_kd: DistillationLoss | None = None,
        logit_kd_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.heads = nn.ModuleDict()
        self.student_extractors = student_extractors
        self.terms: list[DistillationTerm] = []
        self.ce_weight = ce_weight
        self.logit_kd_weight = logit_kd_weight
        self.causal_lm = False  # set with the terms (add_distillation_terms), from the task and the student
        self.add_terms(losses, terms, logit_kd)

    def add_terms(
        self, losses: dict[str, DistillationLoss], terms: list[DistillationTerm], logit_kd: DistillationLoss | None = None
    ) -> None:
        """Add loss modules (and their terms); the trainer sizes them by a probe once the Trainer is built."""
        self.heads.update(losses)
        self.terms.extend(terms)
        if logit_kd is not None:
            self.logit_kd = logit_kd

    def split_state_dict(
        self, state_dict: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(student's state, heads' state)`` of ``state_dict`` (default: this model's): the student's keys without
        their ``student.`` prefix, as ``save_pretrained`` takes them; the heads' detached and on the CPU."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        student = {key[len("student."):]: value for key, value in state_dict.items() if key.startswith("student.")}
        heads = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()
                 if not key.startswith("student.")}
        return student, heads

    @property
    def config(self):  # the Trainer reads model.config in a few places (e.g. its model card)
        return self.student.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The student's blocks, so FSDP's transformer-based auto wrap finds them in any recipe."""
        return getattr(self.student, "_no_split_modules", None)

    # ---- activation (gradient) checkpointing: the Trainer's --gradient_checkpointing reaches the student ----
    @property
    def supports_gradient_checkpointing(self) -> bool:
        return getattr(self.student, "supports_gradient_checkpointing", False)

    @property
    def is_activation_checkpointing(self) -> bool:
        return getattr(self.student, "is_activation_checkpointing", False)

    is_gradient_checkpointing = is_activation_checkpointing

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Recompute the student's blocks in backward instead of keeping their activations (the heads are small)."""
        if not self.supports_gradient_checkpointing:
            raise ValueError(f"the student ({type(self.student).__name__}) does not support gradient checkpointing; "
                             "drop --gradient_checkpointing")
        self.student.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs, every_n_layers=every_n_layers, offload=offload
        )

    def activation_checkpointing_disable(self) -> None:
        self.student.activation_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """The older name of :meth:`activation_checkpointing_enable`, as ``PreTrainedModel`` still offers it."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    def student_features(self, student_inputs: dict[str, torch.Tensor]) -> tuple[list[Features], Any]:
        # A training forward keeps no key/value cache (a language model's, otherwise returned with its outputs).
        no_cache = {"use_cache": False} if self.causal_lm else {}
        outputs = self.student(**student_inputs, output_hidden_states=True, **no_cache)
        mask = student_inputs.get("attention_mask")
        return [extractor(outputs, mask) for extractor in self.student_extractors], outputs

    def forward(
        self,
        student_inputs: dict[str, torch.Tensor],
        teacher_features: list[Features],
        labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> DistillationOutput:
        student_features, outputs = self.student_features(student_inputs)
        total = torch.zeros((), device=student_features[0].values.device)
        values: dict[str, torch.Tensor] = {}
        gathered: dict[int, GatheredBatch] = {}
        gathered_labels: dict[str, torch.Tensor | None] = {}
        class_labels = None if self.causal_lm else labels  # a language model's labels are its tokens
        for term in self.terms:
            loss = self.heads[term.key]
            student, teacher = student_features[term.pair_index], teacher_features[term.pair_index]
            if loss.batch_level and world_size() > 1:
                # The global batch, gathered once per layer pair whatever the number of its losses; a loss that
                # is a mean over reference rows scores only this process's rows of it (hf_pcoh.global_batch).
                if term.pair_index not in gathered:
                    gathered[term.pair_index] = gather_global_batch(student.values, teacher.values, student.mask)
                if "labels" not in gathered_labels:
                    gathered_labels["labels"] = gather_labels(class_labels)
                value = loss_on_global_batch(loss, gathered[term.pair_index], gathered_labels["labels"])
            else:
                value = loss(student.values, teacher.values, mask=student.mask, labels=class_labels)
            values[term.label] = value
            # A loss of several terms (CosPress) reports each, unweighted and detached, in `parts`.
            values.update({f"{term.label}/{part}": part_value for part, part_value in loss.parts.items()})
            total = total + term.weight * value
        logits = getattr(outputs, "logits", None)
        if self.causal_lm:
            mask = student_inputs.get("attention_mask")
            language_model = self.language_model_terms(logits, labels, teacher_logits, mask)
            values.update(language_model)
            for name, weight in ((NEXT_TOKEN_CE, self.ce_weight), (TOKEN_KD, self.logit_kd_weight)):
                if name in language_model:
                    total = total + weight * language_model[name]
            return DistillationOutput(loss=total, terms=values)
        if self.ce_weight > 0:
            values["cross_entropy"] = F.cross_entropy(logits.float(), labels)
            total = total + self.ce_weight * values["cross_entropy"]
        if self.logit_kd_weight > 0:
            values["logit_kd"] = self.logit_kd(logits, teacher_logits)
            total = total + self.logit_kd_weight * values["logit_kd"]
        return DistillationOutput(loss=total, terms=values)

    def language_model_terms(
        self, logits: torch.Tensor, labels: torch.Tensor | None, teacher_logits: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Next-token cross-entropy and logit KD over the vocabulary (``[B, T, V]`` logits), each a mean over the
        target tokens of the global batch (:func:`~hf_pcoh.global_batch.token_mean`), computed chunk by chunk."""
        if labels is None or labels.shape != logits.shape[:2]:
            raise ValueError(f"task=causal_lm needs token labels [B, T] = {tuple(logits.shape[:2])} from the collator, "
                             f"got {None if labels is None else tuple(labels.shape)}: build it with next_token_labels="
                             "True (hf_pcoh.setup_models.build_collator(..., causal_lm=True))")
        terms: dict[str, torch.Tensor] = {}
        if self.ce_weight > 0:
            terms[NEXT_TOKEN_CE] = token_mean(*next_token_cross_entropy_sum(logits, labels, attention_mask))
        if self.logit_kd_weight > 0:
            valid = next_token_targets(labels, attention_mask) != IGNORE_INDEX  # [B, T]: positions with a target
            terms[TOKEN_KD] = token_mean(*self.logit_kd.sum_and_count(logits, teacher_logits, valid))
        return terms
