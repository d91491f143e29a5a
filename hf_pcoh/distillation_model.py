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
import weakref
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
from .global_batch import GlobalBatches
from .length_chunks import chunked_features
from .losses import DistillationLoss, build_loss
from .losses.token_kd import IGNORE_INDEX, next_token_cross_entropy_sum, next_token_targets
from .models import is_causal_lm
from .readout import FeatureReadout
from .token_accumulation import window_token_mean

logger = logging.getLogger(__name__)

# Why a probed student's trainable parameters may still go without a gradient at some step ([]: they never do), by
# student (freeze_unread_parameters); a student missing here was not probed (DeepSpeed), so nothing is known of it.
MAY_GO_UNREAD: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()


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
    model: DistillationModel, args: DistillationConfig, readout: FeatureReadout, probe: FeatureProbe,
    causal_lm: bool, accelerator: Any = None,
) -> None:
    """Add every term to ``model``: one loss per (layer pair, loss) sized by ``probe``'s feature widths, and
    the optional cross-entropy and logit KD, checked against the student's and the teacher's outputs; ``causal_lm``
    is the run's task as its collator carries it (``next_token_labels``, :func:`hf_pcoh.setup_models.run_task`). The
    heads' parameters that no term trains are frozen; with the Trainer's ``accelerator``, DDP is told whether it
    must search for unused parameters (:func:`settle_find_unused_parameters`)."""
    losses, terms = build_terms(args, readout, probe.student_features, probe.teacher_features)
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
    reasons = freeze_unread_head_parameters(model, probe)
    if accelerator is not None:
        settle_find_unused_parameters(accelerator, args, model, reasons)


def freeze_unread_head_parameters(model: DistillationModel, probe: FeatureProbe) -> list[str]:
    """Freeze the loss heads' parameters that no term trains, as each loss declares them
    (:meth:`~hf_pcoh.losses.DistillationLoss.untrained_parameters`: CosPress's map with its similarity-map terms off);
    return why a step may still leave a trainable parameter without a gradient ([] when nothing can): a loss that
    does not declare which of its parameters train, a layer pair whose terms send the student no gradient, a logit KD
    with parameters of its own. A term of weight 0 still trains its head (with zero gradients).

    The losses are asked, not run: a loss's forward may count its calls or draw random numbers.
    """
    reasons: list[str] = []
    frozen: list[str] = []
    for pair_index, student in enumerate(probe.student_features):
        tokens = student.values.dim() == 3
        reaches_student = False
        for key in dict.fromkeys(term.key for term in model.terms if term.pair_index == pair_index):
            head = model.heads[key]
            reaches_student = reaches_student or head.trains_student(tokens)
            untrained = head.untrained_parameters(tokens)
            if untrained is None:
                reasons.append(f"loss {key} does not say which of its parameters train (untrained_parameters)")
                continue
            parameters = dict(head.named_parameters())
            for name in untrained:
                if parameters[name].requires_grad:
                    parameters[name].requires_grad_(False)
                    frozen.append(f"heads.{key}.{name}")
        if not reaches_student:
            reasons.append(f"the terms of layer pair {pair_index} send the student no gradient")
    if frozen:
        logger.info("loss head parameters that no term trains are frozen: %s", ", ".join(frozen))
    logit_kd = getattr(model, "logit_kd", None)
    if logit_kd is not None and any(parameter.requires_grad for parameter in logit_kd.parameters()):
        reasons.append("the logit KD's own parameters are not checked")
    return reasons


def settle_find_unused_parameters(
    accelerator: Any, args: DistillationConfig, model: DistillationModel, reasons: list[str]
) -> bool | None:
    """Set DDP's ``find_unused_parameters`` for this run, unless the user set ``--ddp_find_unused_parameters``;
    return the value set (None: left as it was).

    transformers passes True for any model that is not a ``PreTrainedModel``, as :class:`DistillationModel` is, and
    DDP then walks the autograd graph after every forward. Here it is False when every trainable parameter gets a
    gradient at every step, which holds once the unread parameters of the student
    (:func:`freeze_unread_parameters`) and of the heads (:func:`freeze_unread_head_parameters`) are frozen, unless
    ``reasons`` or the student's probe say otherwise (routed experts, LayerDrop); a student that was not probed
    (under DeepSpeed, where DDP is not used) keeps transformers' choice.
    """
    handler = getattr(accelerator, "ddp_handler", None)
    student_reasons = MAY_GO_UNREAD.get(model.student)
    if handler is None or args.ddp_find_unused_parameters is not None or student_reasons is None:
        return None
    reasons = student_reasons + reasons
    handler.find_unused_parameters = bool(reasons)
    if reasons:
        logger.info("DDP searches for unused parameters at every step: %s", "; ".join(reasons))
    return handler.find_unused_parameters


def freeze_unread_parameters(
    student: nn.Module, student_inputs: dict[str, torch.Tensor], extractors: Sequence[FeatureExtractor], logits: bool
) -> list[str]:
    """Freeze the student parameters that nothing the run reads depends on; return their names.

    A BERT student read at its hidden states never uses its pooler, nor a student read at layer 2 its blocks after
    the second: their parameters get no gradient, so DDP would have to search for unused parameters at every step
    and a sharded (FSDP2) optimizer checkpoint would hold no state for them, which its loader then refuses on
    resume. Found by one forward and backward on the probe rows: a parameter with no gradient from what the run
    reads (the features of its layers, the logits when a loss takes them). In a block of a ``ModuleList`` that the
    gradient did reach, a module left without one (a routed expert) is left trainable, since a batch may simply not
    have reached it; such parameters, and LayerDrop, are noted for :func:`settle_find_unused_parameters`. Frozen
    parameters are saved unchanged with the student.
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
    # Each module inside a ModuleList -> the block holding it: the item of the outermost list (modules() walks
    # from the root, so an outer list claims its modules before the lists nested in its blocks are reached).
    block_of: dict[int, nn.Module] = {}
    for holder in student.modules():
        if isinstance(holder, nn.ModuleList) and id(holder) not in block_of:
            for block in holder:
                for module in block.modules():
                    block_of.setdefault(id(module), block)
    owners = {f"{prefix}.{name}".lstrip("."): module for prefix, module in student.named_modules()
              for name, _ in module.named_parameters(recurse=False)}
    reached_blocks = {id(block_of[id(owners[name])]) for (name, _), gradient in zip(named, gradients)
                      if gradient is not None and id(owners.get(name)) in block_of}
    frozen, routed = [], []
    for (name, parameter), gradient in zip(named, gradients):
        if gradient is not None or name not in owners:
            continue
        block = block_of.get(id(owners[name]))
        if block is not None and id(block) in reached_blocks:
            routed.append(name)
        else:
            parameter.requires_grad_(False)
            frozen.append(name)
    if frozen:
        logger.info("student parameters that nothing the run reads depends on are frozen: %s", ", ".join(frozen))
    reasons = [f"{len(routed)} student parameters the probe rows did not reach, in blocks they did (routed experts?): "
               f"{', '.join(routed[:3])}{', ...' if len(routed) > 3 else ''}"] if routed else []
    settings = vars(student.config) if getattr(student, "config", None) is not None else {}
    reasons += [f"the student's {name}={value} skips layers at random" for name, value in settings.items()
                if name.endswith("layerdrop") and isinstance(value, (int, float)) and value > 0]
    MAY_GO_UNREAD[student] = reasons
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
    the cross-entropy and logit KD are next-token CE and KD over the vocabulary, means over the target tokens (of
    the whole accumulated batch with the trainer's ``target_tokens_per_micro_batch``,
    :mod:`hf_pcoh.token_accumulation`).
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
        student_forward_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.student_forward_chunk_size = student_forward_chunk_size  # hf_pcoh.length_chunks
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
        """The student's features for every layer pair, and its outputs (``None`` when run in length-sorted chunks:
        then only pooled features come back, :mod:`hf_pcoh.length_chunks`)."""
        if self.student_forward_chunk_size is not None:
            if self.causal_lm or self.ce_weight > 0 or self.logit_kd_weight > 0:
                raise ValueError("student_forward_chunk_size puts pooled features back together, not the logits a "
                                 "language-model student, ce_weight or logit_kd_weight needs: leave it unset")
            features = chunked_features(lambda **chunk: self.student(**chunk, output_hidden_states=True),
                                        self.student_extractors, student_inputs, self.student_forward_chunk_size)
            return features, None
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
        target_tokens_per_micro_batch: torch.Tensor | None = None,
    ) -> DistillationOutput:
        student_features, outputs = self.student_features(student_inputs)
        total = torch.zeros((), device=student_features[0].values.device)
        values: dict[str, torch.Tensor] = {}
        class_labels = None if self.causal_lm else labels  # a language model's labels are its tokens
        global_batches = GlobalBatches(class_labels)  # this forward's gathers, each done once
        for term in self.terms:
            loss = self.heads[term.key]
            student, teacher = student_features[term.pair_index], teacher_features[term.pair_index]
            if loss.batch_level and world_size() > 1:
                # The global batch, gathered once per layer pair whatever the number of its losses (a set-geometry
                # loss's token rows chosen before the gather); a loss that is a mean over reference rows scores
                # only this process's rows of it (hf_pcoh.global_batch).
                value = global_batches.loss_value(term.pair_index, loss, student.values, teacher.values, student.mask)
            else:
                value = loss(student.values, teacher.values, mask=student.mask, labels=class_labels)
            values[term.label] = value
            # A loss of several terms (CosPress) reports each, unweighted and detached, in `parts`.
            values.update({f"{term.label}/{part}": part_value for part, part_value in loss.parts.items()})
            total = total + term.weight * value
        logits = getattr(outputs, "logits", None)
        if self.causal_lm:
            mask = student_inputs.get("attention_mask")
            language_model = self.language_model_terms(logits, labels, teacher_logits, mask,
                                                       target_tokens_per_micro_batch)
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
        attention_mask: torch.Tensor | None, target_tokens_per_micro_batch: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Next-token cross-entropy and logit KD over the vocabulary (``[B, T, V]`` logits), each a mean over the
        target tokens of the global batch, computed chunk by chunk; with ``target_tokens_per_micro_batch`` (the
        trainer's, under gradient accumulation) over those of the whole accumulated batch
        (:func:`~hf_pcoh.token_accumulation.window_token_mean`)."""
        if labels is None or labels.shape != logits.shape[:2]:
            raise ValueError(f"task=causal_lm needs token labels [B, T] = {tuple(logits.shape[:2])} from the collator, "
                             f"got {None if labels is None else tuple(labels.shape)}: build it with next_token_labels="
                             "True (hf_pcoh.setup_models.build_collator(..., causal_lm=True))")
        terms: dict[str, torch.Tensor] = {}
        if self.ce_weight > 0:
            terms[NEXT_TOKEN_CE] = window_token_mean(*next_token_cross_entropy_sum(logits, labels, attention_mask),
                                                     target_tokens_per_micro_batch)
        if self.logit_kd_weight > 0:
            valid = next_token_targets(labels, attention_mask) != IGNORE_INDEX  # [B, T]: positions with a target
            terms[TOKEN_KD] = window_token_mean(*self.logit_kd.sum_and_count(logits, teacher_logits, valid),
                                                target_tokens_per_micro_batch)
        return terms
