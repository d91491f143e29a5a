"""``DistillationTrainer``: a ``transformers.Trainer`` that distils a frozen teacher's features into a student.

One training step (``docs/architecture.md`` draws it): the collator gives ``student_inputs`` (and
``teacher_inputs`` when the teacher has its own processor); the teacher runs in eval mode without
gradients, or its features come from the teacher-feature cache; both sides' features are taken from the
chosen layers and pooled; batch-level losses see the global batch (gathered across processes with
gradients); the weighted sum of every (layer pair, loss) term, plus optional cross-entropy and logit
KD, is backpropagated into the student and the losses' heads.

The trainable module handed to ``Trainer`` is :class:`DistillationModel` (student + heads), so
accelerate/DDP wrap, optimise and checkpoint both; the student itself is saved as a plain
``transformers`` model and the heads beside it in ``distillation_heads.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .artifacts import HEADS_FILE, TEACHER_PROCESSOR_DIR
from .collator import CACHED_FEATURES_KEY, CACHED_LOGITS_KEY, DistillationCollator
from .config import DistillationConfig
from .distributed import gather_with_grad, world_size
from .features import FeatureExtractor, Features
from .losses import DistillationLoss, build_loss

logger = logging.getLogger(__name__)



class NonFiniteLossError(RuntimeError):
    """The distillation loss became NaN or infinite; the last good state was checkpointed."""


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
    args: DistillationConfig, student_features: list[Features], teacher_features: list[Features]
) -> tuple[dict[str, DistillationLoss], list[DistillationTerm]]:
    """One loss module and one term per (layer pair, loss), each loss sized to its pair's feature widths."""
    losses: dict[str, DistillationLoss] = {}
    terms: list[DistillationTerm] = []
    for pair_index, (s_layer, t_layer) in enumerate(zip(args.student_layers, args.teacher_layers)):
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
    args: DistillationConfig, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None
) -> DistillationLoss:
    """Hinton's logit KD between teacher and student logits over the same classes."""
    if teacher_logits is None or teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(
            "logit_kd_weight > 0 needs teacher and student logits over the same classes; got "
            f"{None if teacher_logits is None else teacher_logits.shape[-1]} and {student_logits.shape[-1]}"
        )
    classes = student_logits.shape[-1]
    return build_loss("logit_kd", student_dim=classes, teacher_dim=classes, temperature=args.logit_kd_temperature)


@dataclass
class DistillationOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def layer_label(layer: int | str) -> str:
    return str(layer)


def teacher_extractors(config: DistillationConfig) -> list[FeatureExtractor]:
    """One extractor per layer pair, reading the teacher's layer with the teacher's pooling."""
    teacher_pooling = config.teacher_pooling or config.pooling
    return [FeatureExtractor(layer, teacher_pooling, "teacher") for layer in config.teacher_layers]


def student_extractors(config: DistillationConfig) -> list[FeatureExtractor]:
    """One extractor per layer pair, reading the student's layer."""
    return [FeatureExtractor(layer, config.pooling, "student") for layer in config.student_layers]


@torch.no_grad()
def run_teacher(
    teacher: PreTrainedModel, teacher_inputs: dict[str, torch.Tensor], extractors: list[FeatureExtractor]
) -> tuple[list[Features], torch.Tensor | None]:
    """The teacher's features at each extractor's layer (and its logits, if it has a head), without gradients."""
    outputs = teacher(**teacher_inputs, output_hidden_states=True)
    mask = teacher_inputs.get("attention_mask")
    return [extractor(outputs, mask) for extractor in extractors], getattr(outputs, "logits", None)


class DistillationModel(nn.Module):
    """The trainable part of distillation: the student and the losses (with their learned heads).

    ``forward(student_inputs, teacher_features, labels=None, teacher_logits=None)`` runs the student,
    extracts its features for every layer pair and returns the weighted total and each term.
    """

    def __init__(
        self,
        student: PreTrainedModel,
        student_extractors: list[FeatureExtractor],
        losses: dict[str, DistillationLoss],
        terms: list[DistillationTerm],
        ce_weight: float = 0.0,
        logit_kd: DistillationLoss | None = None,
        logit_kd_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.heads = nn.ModuleDict(losses)
        if logit_kd is not None:
            self.logit_kd = logit_kd
        self.student_extractors = student_extractors
        self.terms = terms
        self.ce_weight = ce_weight
        self.logit_kd_weight = logit_kd_weight

    @property
    def config(self):  # the Trainer reads model.config in a few places (e.g. its model card)
        return self.student.config

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The student's blocks, so FSDP's transformer-based auto wrap finds them in any recipe."""
        return getattr(self.student, "_no_split_modules", None)

    def student_features(self, student_inputs: dict[str, torch.Tensor]) -> tuple[list[Features], Any]:
        outputs = self.student(**student_inputs, output_hidden_states=True)
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
        gathered: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for term in self.terms:
            loss = self.heads[term.key]
            student, teacher = student_features[term.pair_index], teacher_features[term.pair_index]
            student_values, teacher_values, mask = student.values, teacher.values, student.mask
            if loss.batch_level and world_size() > 1 and student_values.dim() == 2:
                if term.pair_index not in gathered:
                    gathered[term.pair_index] = (gather_with_grad(student_values), gather_with_grad(teacher_values), None)
                student_values, teacher_values, mask = gathered[term.pair_index]
            value = loss(student_values, teacher_values, mask=mask, labels=labels)
            values[term.label] = value
            # A loss of several terms (CosPress) reports each, unweighted and detached, in `parts`.
            values.update({f"{term.label}/{part}": part_value for part, part_value in loss.parts.items()})
            total = total + term.weight * value
        logits = getattr(outputs, "logits", None)
        if self.ce_weight > 0:
            values["cross_entropy"] = F.cross_entropy(logits.float(), labels)
            total = total + self.ce_weight * values["cross_entropy"]
        if self.logit_kd_weight > 0:
            values["logit_kd"] = self.logit_kd(logits, teacher_logits)
            total = total + self.logit_kd_weight * values["logit_kd"]
        return DistillationOutput(loss=total, terms=values)


class DistillationTrainer(Trainer):
    """Distil ``teacher`` into ``student`` on the terms of a :class:`DistillationConfig`.

    Example::

        trainer = DistillationTrainer(student=student, teacher=teacher, args=config,
                                      train_dataset=splits["train"], collator=collator)
        trainer.train()
        trainer.save_model()  # a plain transformers model + distillation_heads.safetensors
    """

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel,
        args: DistillationConfig,
        train_dataset: Any,
        collator: DistillationCollator,
        eval_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.distillation_collator = collator
        self.teacher_extractors = teacher_extractors(args)
        model = self.build_distillation_model(student, student_extractors(args), args, train_dataset)
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=collator.student_processor,
            **kwargs,
        )
        self.teacher.to(self.args.device)
        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self.last_terms: dict[str, torch.Tensor] = {}
        self.term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.term_counts: dict[str, int] = {"train": 0, "eval": 0}

    # ---- building ----------------------------------------------------------------------------------
    def build_distillation_model(
        self,
        student: PreTrainedModel,
        student_extractors: list[FeatureExtractor],
        args: DistillationConfig,
        train_dataset: Any,
    ) -> DistillationModel:
        """Probe both models on two training rows to learn the feature widths, then build every term."""
        probe = self.probe_features(student, student_extractors, train_dataset)
        losses, terms = build_terms(args, probe.student_features, probe.teacher_features)
        if (args.ce_weight > 0 or args.logit_kd_weight > 0) and probe.student_logits is None:
            raise ValueError("ce_weight / logit_kd_weight need a student with a classification head (logits)")
        if args.ce_weight > 0 and not probe.has_labels:
            raise ValueError("ce_weight > 0 needs labels: set label_column to a column of class labels")
        logit_kd = build_logit_kd(args, probe.student_logits, probe.teacher_logits) if args.logit_kd_weight > 0 else None
        return DistillationModel(student, student_extractors, losses, terms, args.ce_weight, logit_kd, args.logit_kd_weight)

    def probe_features(
        self, student: PreTrainedModel, student_extractors: list[FeatureExtractor], train_dataset: Any
    ) -> FeatureProbe:
        """Run teacher and student, without gradients, on the first two training rows."""
        if len(train_dataset) < 2:
            raise ValueError(f"the training set has {len(train_dataset)} rows; distillation needs at least 2")
        batch = self.distillation_collator([train_dataset[i] for i in range(2)])
        student_was_training = student.training
        student.eval()
        with torch.no_grad():
            teacher_features, teacher_logits = self.teacher_forward(batch, device=next(self.teacher.parameters()).device)
            outputs = student(**batch["student_inputs"], output_hidden_states=True)
        student.train(student_was_training)
        mask = batch["student_inputs"].get("attention_mask")
        return FeatureProbe(
            student_features=[extractor(outputs, mask) for extractor in student_extractors],
            teacher_features=teacher_features,
            student_logits=getattr(outputs, "logits", None),
            teacher_logits=teacher_logits,
            has_labels="labels" in batch,
        )

    # ---- the step ----------------------------------------------------------------------------------
    def teacher_forward(
        self, inputs: dict[str, Any], device: torch.device | None = None
    ) -> tuple[list[Features], torch.Tensor | None]:
        """Teacher features for every layer pair (and its logits): read from the batch when the teacher-feature
        cache supplied them, else computed by the frozen teacher without gradients."""
        if CACHED_FEATURES_KEY in inputs:
            return [Features(values) for values in inputs[CACHED_FEATURES_KEY]], inputs.get(CACHED_LOGITS_KEY)
        teacher_inputs = inputs.get("teacher_inputs", inputs["student_inputs"])
        teacher_dtype = self.teacher.dtype
        # The Trainer may have cast floating inputs (pixel_values) to the student's training dtype (DeepSpeed).
        teacher_inputs = {
            name: tensor.to(device=device or tensor.device, dtype=teacher_dtype if tensor.is_floating_point() else None)
            for name, tensor in teacher_inputs.items()
        }
        # The Trainer autocasts only the wrapped model's forward: give the teacher the same mixed precision.
        autocast = self.accelerator.autocast() if hasattr(self, "accelerator") else contextlib.nullcontext()
        with autocast:
            return run_teacher(self.teacher, teacher_inputs, self.teacher_extractors)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, DistillationOutput]:
        teacher_features, teacher_logits = self.teacher_forward(inputs)
        output = model(
            student_inputs=inputs["student_inputs"],
            teacher_features=teacher_features,
            labels=inputs.get("labels"),
            teacher_logits=teacher_logits,
        )
        self.record_terms("train" if model.training else "eval", output.terms)
        self.last_terms = output.terms
        return (output.loss, output) if return_outputs else output.loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            self.handle_non_finite_loss(model)
        return loss

    def handle_non_finite_loss(self, model: nn.Module) -> None:
        """Skip the batch's update, or checkpoint the last good state and stop, as ``non_finite_loss`` says."""
        bad_terms = [label for label, value in self.last_terms.items() if not torch.isfinite(value)] or ["total"]
        step = self.state.global_step + 1
        if self.args.non_finite_loss == "skip":
            logger.warning("non-finite loss in %s at step %d: this batch's update is skipped", ", ".join(bad_terms), step)
            for parameter in model.parameters():
                parameter.grad = None  # the optimizer leaves parameters without gradients untouched
            return
        for parameter in model.parameters():
            parameter.grad = None
        self._save_checkpoint(model, trial=None)
        checkpoint = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        raise NonFiniteLossError(
            f"the loss term(s) {', '.join(bad_terms)} became NaN/inf at step {step}. The last good state (after step "
            f"{self.state.global_step}) is saved in {checkpoint}: lower the learning rate or check the data, then "
            f"resume with --resume_from_checkpoint {checkpoint}; or pass --non_finite_loss skip to drop such batches"
        )

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- logging every term ------------------------------------------------------------------------
    def record_terms(self, split: str, terms: dict[str, torch.Tensor]) -> None:
        for label, value in terms.items():
            self.term_sums[split][label] = self.term_sums[split][label] + value.detach().float()
        self.term_counts[split] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        count = self.term_counts[split]
        if count:
            prefix = "eval_" if split == "eval" else ""
            for label, total in self.term_sums[split].items():
                logs[f"{prefix}loss/{label}"] = round(float(total) / count, 6)
            self.term_sums[split] = defaultdict(float)
            self.term_counts[split] = 0
        super().log(logs, start_time)

    # ---- saving and resuming -----------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save the student as a plain ``transformers`` model, the heads beside it, and the processors."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        distillation_model: DistillationModel = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            state_dict = distillation_model.state_dict()
        student_state = {key[len("student."):]: value for key, value in state_dict.items() if key.startswith("student.")}
        heads_state = {
            key: value.detach().contiguous().cpu() for key, value in state_dict.items() if not key.startswith("student.")
        }
        distillation_model.student.save_pretrained(output_dir, state_dict=student_state)
        save_file(heads_state, os.path.join(output_dir, HEADS_FILE), metadata={"format": "pt"})
        collator = self.distillation_collator
        collator.student_processor.save_pretrained(output_dir)
        if collator.teacher_processor is not collator.student_processor:
            collator.teacher_processor.save_pretrained(os.path.join(output_dir, TEACHER_PROCESSOR_DIR))
        # Like the Trainer, keep the arguments beside the model; unlike it, never with a Hub token inside.
        arguments = copy.copy(self.args)
        arguments.hub_token = None
        torch.save(arguments, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_distillation_checkpoint(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_distillation_checkpoint(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)


def load_distillation_checkpoint(model: DistillationModel, checkpoint_dir: str) -> None:
    """Restore the student's weights and the heads from a directory written by ``DistillationTrainer``."""
    heads_path = os.path.join(checkpoint_dir, HEADS_FILE)
    if not os.path.isfile(os.path.join(checkpoint_dir, "config.json")) or not os.path.isfile(heads_path):
        raise ValueError(
            f"{checkpoint_dir} is not a distillation checkpoint: it needs config.json, model.safetensors and {HEADS_FILE}"
        )
    # from_pretrained applies any key renaming the architecture needs; then copy into the live student.
    reloaded = type(model.student).from_pretrained(checkpoint_dir, use_safetensors=True)
    model.student.load_state_dict(reloaded.state_dict())
    heads_state = load_file(heads_path)
    missing, unexpected = model.load_state_dict(heads_state, strict=False)
    missing = [key for key in missing if not key.startswith("student.")]
    if missing or unexpected:
        raise ValueError(
            f"{heads_path} does not match this recipe's losses (missing {missing}, unexpected {unexpected}): resume "
            "with the same losses, layers and models as the run that wrote it"
        )
