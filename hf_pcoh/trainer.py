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

import copy
import logging
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import get_last_checkpoint

from .artifacts import DISTILLATION_CONFIG_FILE, HEADS_FILE, TEACHER_PROCESSOR_DIR
from .collator import CACHED_FEATURES_KEY, CACHED_LOGITS_KEY, DistillationCollator
from .config import DistillationConfig
from .data import first_rows, is_streamed
from .distributed import any_process, gather_batch_with_grad, world_size
from .evaluation import agreement_metrics, embed
from .features import FeatureExtractor, Features
from .frozen_teacher import run_teacher  # the teacher forward of every step, only as deep as needed
from .losses import DistillationLoss, build_loss
from .precomputed_teacher import precomputed_embeddings
from .weights import weight_problem
from .non_finite import NonFiniteCallback, NonFiniteGuard, NonFiniteLossError, UnusableWeightsError, skip_next_optimizer_step
from .sentence_embedding import resolve_embedding, save_student_as_sentence_transformer
from .sharding import (
    deepspeed_inference_engine,
    materialize_meta_tensors,
    shard_frozen_model,
    whole_parameters_under_zero3,
)

logger = logging.getLogger(__name__)

# Labelled training rows the student's eval-split embeddings are classified against (kNN) at each evaluation.
EVAL_REFERENCE_SAMPLES = 1000



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


def teacher_extractors(config: DistillationConfig, teacher: Any = None) -> list[FeatureExtractor]:
    """One extractor per layer pair, reading the teacher's layer with the teacher's pooling (``pooling: auto``
    and a sentence-transformers teacher: its own Pooling, Dense and Normalize; see hf_pcoh.sentence_embedding)."""
    settings = resolve_embedding(config, teacher)
    return [settings.teacher_extractor(layer) for layer in config.teacher_layers]


def student_extractors(config: DistillationConfig, teacher: Any = None) -> list[FeatureExtractor]:
    """One extractor per layer pair, reading the student's layer with the student's pooling."""
    settings = resolve_embedding(config, teacher)
    return [settings.student_extractor(layer) for layer in config.student_layers]


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
        self.heads = nn.ModuleDict()
        self.student_extractors = student_extractors
        self.terms: list[DistillationTerm] = []
        self.ce_weight = ce_weight
        self.logit_kd_weight = logit_kd_weight
        self.add_terms(losses, terms, logit_kd)

    def add_terms(
        self, losses: dict[str, DistillationLoss], terms: list[DistillationTerm], logit_kd: DistillationLoss | None = None
    ) -> None:
        """Add loss modules (and their terms); the trainer sizes them by a probe once the Trainer is built."""
        self.heads.update(losses)
        self.terms.extend(terms)
        if logit_kd is not None:
            self.logit_kd = logit_kd

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
            if loss.batch_level and world_size() > 1:
                if term.pair_index not in gathered:  # once per layer pair, whatever the number of its losses
                    gathered[term.pair_index] = gather_batch_with_grad(student_values, teacher_values, mask)
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
    """Distil the teacher into the student on the terms of a :class:`DistillationConfig`.

    Shaped like TRL's trainers: ``model`` (the student) and ``teacher_model`` are model objects, or local
    folders / Hub ids to load (default: the config's ``student_*`` / ``teacher_*`` options);
    ``data_collator`` is built from the data set's text or image column when not given, with
    ``processing_class`` as the student's processor. ``student=``, ``teacher=`` and ``collator=`` are the
    same arguments under their earlier names. With ``teacher_embedding_column`` in the config and no
    ``teacher_model``, no teacher is loaded: its embeddings are read from that column of the data set.

    Example::

        config = DistillationConfig(output_dir="out", losses=["perception_coherence"], max_steps=100)
        trainer = DistillationTrainer(model="path/to/student", teacher_model="sentence-transformers/all-MiniLM-L6-v2",
                                      args=config, train_dataset=splits["train"], eval_dataset=splits["test"])
        trainer.train()
        trainer.save_model()  # a plain transformers model + distillation_heads.safetensors
        trainer.push_to_hub()  # with hf_pcoh's model card
    """

    def __init__(
        self,
        model: PreTrainedModel | str | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: DistillationConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        data_collator: DistillationCollator | None = None,
        *,
        student: PreTrainedModel | str | None = None,
        teacher: PreTrainedModel | str | None = None,
        collator: DistillationCollator | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, DistillationConfig):
            raise ValueError(f"args must be a DistillationConfig (output_dir, layers, losses...), got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required: distillation sizes its losses on two training rows")
        student = one_of("model", model, "student", student)
        teacher = one_of("teacher_model", teacher_model, "teacher", teacher)
        collator = one_of("data_collator", data_collator, "collator", collator)
        # With teacher_embedding_column and no teacher_model, no teacher is loaded: its embeddings are a column.
        teacher_missing = teacher is None and not args.teacher_embedding_column
        if student is None or teacher_missing or collator is None or isinstance(student, str) or isinstance(teacher, str):
            from .setup import build_trainer_inputs  # setup builds on this module

            student, teacher, collator = build_trainer_inputs(args, student, teacher, train_dataset, processing_class,
                                                              collator)
        if hasattr(train_dataset, "__len__"):
            check_steps_to_train(args, len(train_dataset))
        # The heads draw their first weights from the random state the caller left (the Trainer re-seeds).
        head_random_state = torch.random.get_rng_state()
        self.distillation_collator = collator
        self.embedding_settings = resolve_embedding(args, teacher)  # read before the accelerator wraps the teacher
        self.teacher_extractors = teacher_extractors(args, teacher)
        # The loss modules are sized by running both models, which needs the teacher prepared by the
        # accelerator: the Trainer is built first on the student alone, the terms are added before training.
        model = DistillationModel(student, student_extractors(args, teacher), {}, [], args.ce_weight, None, args.logit_kd_weight)
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=collator.student_processor,
            **kwargs,
        )
        self.teacher = self.prepare_teacher(teacher)
        with torch.random.fork_rng(devices=[]):
            torch.random.set_rng_state(head_random_state)
            self.add_distillation_terms(model, args, train_dataset)
        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self.last_terms: dict[str, torch.Tensor] = {}
        # fp16's gradient scaler skips overflowing steps itself; DeepSpeed steps inside backward (hf_pcoh.non_finite).
        scaler = getattr(self.accelerator, "scaler", None)
        self.non_finite_guard = NonFiniteGuard(check_gradients=scaler is None and not self.is_deepspeed_enabled)
        self.add_callback(NonFiniteCallback(self.guard_update))
        self.term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.term_counts: dict[str, int] = {"train": 0, "eval": 0}
        self.teacher_eval_embeddings: dict[Any, np.ndarray] = {}  # per evaluation split, computed once

    # ---- building ----------------------------------------------------------------------------------
    def prepare_teacher(self, teacher: PreTrainedModel | None) -> nn.Module | None:
        """The frozen teacher, sharded like the student (as TRL's distillation trainers prepare theirs): a DeepSpeed
        inference engine under DeepSpeed (ZeRO-3 partitions it), FSDP units of its own blocks under FSDP; else
        whole on this process's device, with no DDP wrapper (``teacher_forward`` gives it the mixed precision)."""
        if teacher is None:  # its embeddings are precomputed (teacher_embedding_column)
            return None
        teacher = teacher.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return deepspeed_inference_engine(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            return shard_frozen_model(teacher, self.accelerator)
        return teacher.to(self.accelerator.device)

    def add_distillation_terms(self, model: DistillationModel, args: DistillationConfig, train_dataset: Any) -> None:
        """Probe both models on two training rows to learn the feature widths, then add every term to ``model``."""
        probe = self.probe_features(model.student, model.student_extractors, train_dataset)
        losses, terms = build_terms(args, probe.student_features, probe.teacher_features)
        if (args.ce_weight > 0 or args.logit_kd_weight > 0) and probe.student_logits is None:
            raise ValueError("ce_weight / logit_kd_weight need a student with a classification head (logits)")
        if args.ce_weight > 0 and not probe.has_labels:
            raise ValueError("ce_weight > 0 needs labels: set label_column to a column of class labels")
        logit_kd = build_logit_kd(args, probe.student_logits, probe.teacher_logits) if args.logit_kd_weight > 0 else None
        student_device = next(model.student.parameters()).device  # where the Trainer placed it (CPU until sharded)
        model.add_terms({key: loss.to(student_device) for key, loss in losses.items()}, terms, logit_kd)

    def probe_features(
        self, student: PreTrainedModel, student_extractors: list[FeatureExtractor], train_dataset: Any
    ) -> FeatureProbe:
        """Run teacher and student, without gradients, on the first two training rows."""
        if is_streamed(train_dataset):  # its first rows
            rows = first_rows(train_dataset, 2)
        else:
            rows = [train_dataset[index] for index in range(min(2, len(train_dataset)))]
        if len(rows) < 2:
            raise ValueError(f"the training set has {len(rows)} rows; distillation needs at least 2")
        batch = self.distillation_collator([rows[i] for i in range(2)])
        student_device = next(parameter.device for parameter in student.parameters() if not parameter.is_meta)
        materialize_meta_tensors(student, student_device)
        student_inputs = {name: tensor.to(student_device) for name, tensor in batch["student_inputs"].items()}
        student_was_training = student.training
        student.eval()
        with torch.no_grad(), whole_parameters_under_zero3(student):
            teacher_device = None if self.teacher is None else next(self.teacher.parameters()).device
            teacher_features, teacher_logits = self.teacher_forward(batch, device=teacher_device)
            outputs = student(**student_inputs, output_hidden_states=True)
        student.train(student_was_training)
        mask = student_inputs.get("attention_mask")
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
        teacher_dtype = next(self.teacher.parameters()).dtype
        # The Trainer may have cast floating inputs (pixel_values) to the student's training dtype (DeepSpeed).
        teacher_inputs = {
            name: tensor.to(device=device or tensor.device, dtype=teacher_dtype if tensor.is_floating_point() else None)
            for name, tensor in teacher_inputs.items()
        }
        # The Trainer autocasts only the wrapped model's forward: give the teacher the same mixed precision.
        with self.accelerator.autocast():
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
        # Only noted here: one micro-batch cannot judge an update; guard_update does, before the optimizer steps.
        self.non_finite_guard.record_loss(loss, self.last_terms)
        return loss

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        """The Trainer's gradient norm (computed for clipping and logging), handed to the non-finite guard so
        that it need not scan every gradient again (:mod:`hf_pcoh.non_finite`)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.non_finite_guard.record_gradient_norm(grad_norm)
        return grad_norm

    def guard_update(self) -> None:
        """Skip the coming update, or checkpoint the state before it and stop, when its loss or gradients are
        NaN/inf on any process, as ``non_finite_loss`` says (:mod:`hf_pcoh.non_finite`).

        Runs from ``on_pre_optimizer_step``: after the whole accumulation window's backward, before
        ``optimizer.step()`` has touched weights or moments, on every process at every update.
        """
        guard = self.non_finite_guard
        reason = guard.check_update(self.model, self.args.device)
        if reason is None:
            guard.consecutive_skips = 0
            return
        step = self.state.global_step + 1
        skipping = self.args.non_finite_loss == "skip"
        if skipping and guard.consecutive_skips < self.args.max_consecutive_skips:
            guard.consecutive_skips += 1
            logger.warning("%s at step %d: this update is skipped (%d in a row; the run stops after %d)", reason, step,
                           guard.consecutive_skips, self.args.max_consecutive_skips)
            skip_next_optimizer_step(self.optimizer)
            return
        self.model.zero_grad(set_to_none=True)
        # The bad update counts as skipped (its step and schedule are spent, its batches consumed), so a resume
        # from this checkpoint goes on with the next batch: replaying the same batch from the same weights would
        # meet the same NaN whatever the learning rate.
        self.state.global_step += 1
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": the update was skipped
            warnings.simplefilter("ignore", UserWarning)
            self.lr_scheduler.step()
        self._save_checkpoint(self.model_wrapped, trial=None)
        checkpoint = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        streak = (f" after {guard.consecutive_skips} skipped updates in a row (max_consecutive_skips="
                  f"{self.args.max_consecutive_skips})" if skipping else "")
        alternative = "" if skipping else "; or pass --non_finite_loss skip to drop such updates"
        raise NonFiniteLossError(
            f"{reason} at step {step}{streak}. That update was not applied: {checkpoint} holds the weights before it "
            f"(a resume goes on with the next batch). Lower the learning rate or check the data, then resume with "
            f"--resume_from_checkpoint {checkpoint} (a new --learning_rate applies when resuming); if the loss is "
            f"NaN again at once, the weights had already diverged: resume from an earlier checkpoint{alternative}"
        )

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- agreement with the teacher at each evaluation ----------------------------------------------
    def evaluation_loop(
        self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> Any:
        """The Trainer's loop (the loss terms on the split), then the agreement metrics of the final report:
        ``eval_teacher_neighbour_recall@10``, ``eval_dissimilarity_spearman`` and, with labels,
        ``eval_knn_accuracy@10``, so ``metric_for_best_model`` can name them."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        metrics = self.embedding_metrics(getattr(dataloader, "dataset", None))
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in metrics.items()})
        return output

    def embedding_metrics(self, dataset: Any, reference_samples: int = EVAL_REFERENCE_SAMPLES) -> dict[str, float]:
        """The student's embeddings of ``dataset`` (its raw input column) against the teacher's, and its kNN
        accuracy against a labelled sample of the training set, embedded as the final report embeds them.
        Every process measures the whole split, so all agree on the best checkpoint."""
        collator = self.distillation_collator
        column, label_column = collator.input_column, collator.label_column
        if dataset is None or column not in getattr(dataset, "column_names", ()):
            return {}
        student_extractor, teacher_extractor = self.embedding_settings.embedding_extractors(
            self.args.student_layers[-1], self.args.teacher_layers[-1])
        student = self.accelerator.unwrap_model(self.model).student
        options = dict(modality=collator.modality, batch_size=self.args.per_device_eval_batch_size,
                       max_length=self.args.max_length, device=self.args.device)
        inputs = dataset[column]
        key = getattr(dataset, "_fingerprint", None) or id(dataset)
        if key not in self.teacher_eval_embeddings and self.teacher is None:  # precomputed (teacher_embedding_column)
            self.teacher_eval_embeddings[key] = precomputed_embeddings(dataset, collator.teacher_embedding_column)
        if key not in self.teacher_eval_embeddings:  # the frozen teacher's embeddings do not change
            teacher = self.accelerator.unwrap_model(self.teacher)
            self.teacher_eval_embeddings[key] = embed(teacher, collator.teacher_processor, dataset[collator.teacher_column],
                                                      teacher_extractor, **options).values
        student_embeddings = embed(student, collator.student_processor, inputs, student_extractor, **options).values
        labels = reference = reference_labels = None
        if label_column is not None and label_column in dataset.column_names and self.train_dataset is not None:
            sample = first_rows(self.train_dataset, reference_samples)
            reference = embed(student, collator.student_processor, sample[column], student_extractor, **options).values
            labels, reference_labels = np.asarray(dataset[label_column]), np.asarray(sample[label_column])
        return agreement_metrics(student_embeddings, self.teacher_eval_embeddings[key], labels, reference,
                                 reference_labels)

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
            for label, mean in self.mean_over_processes(self.term_sums[split], count).items():
                logs[f"{prefix}loss/{label}"] = round(mean, 6)
            self.term_sums[split] = defaultdict(float)
            self.term_counts[split] = 0
        super().log(logs, start_time)

    def mean_over_processes(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Each term's mean over the logging interval and over all processes, as the Trainer logs the total loss.

        Every process logs at the same steps with the same terms (recorded in the same order), so all of them
        reach this all-reduce with the same vector.
        """
        labels = list(sums)
        means = torch.stack([torch.as_tensor(sums[label], dtype=torch.float32).reshape(()).to(self.args.device)
                             for label in labels]) / count
        if self.args.world_size > 1:
            means = self.accelerator.reduce(means, reduction="mean")
        return dict(zip(labels, means.tolist()))

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
        # A sentence-transformers teacher's student is one too: SentenceTransformer(output_dir) gives its embedding.
        save_student_as_sentence_transformer(output_dir, self.embedding_settings, self.args, distillation_model.student,
                                             collator.student_processor, collator.modality)
        # Like the Trainer, keep the arguments beside the model; unlike it, never with a Hub token inside.
        arguments = copy.copy(self.args)
        arguments.hub_token = None
        torch.save(arguments, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as the Trainer does (``_save`` below), but never weights that are NaN/inf or beyond
        ``max_abs_weight`` (:mod:`hf_pcoh.weights`): every process checks its part, all take the same decision."""
        problem = weight_problem(self.model.named_parameters(), self.args.max_abs_weight)
        (unusable,) = any_process([problem is not None], self.args.device)
        if unusable:
            target = output_dir or self.args.output_dir
            last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
            hint = (f"resume from the last checkpoint saved ({last}) with a lower learning rate" if last else
                    "train again with a lower learning rate")
            raise UnusableWeightsError(
                f"the weights are not usable: {problem or 'they diverged on another process'}; nothing was saved to "
                f"{target}. The run diverged: {hint}"
            )
        super().save_model(output_dir, _internal_call)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Load them as the Trainer does, then apply this run's ``learning_rate``: the checkpoint's optimizer
        and schedule carry the learning rate of the run that wrote it, which a resume with a lower one (after
        a divergence) must replace."""
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except (RuntimeError, EOFError, OSError) as error:  # torch.load on a damaged optimizer.pt / scheduler.pt
            raise ValueError(f"{checkpoint}: its optimizer or scheduler state cannot be read ({error}); resume from "
                             "another checkpoint") from None
        if checkpoint is not None:
            rescale_learning_rate(self.optimizer, self.lr_scheduler, self.args.learning_rate)

    def create_model_card(self, model_name: str | None = None, license: str | None = None, **kwargs: Any) -> None:
        """hf_pcoh's model card (the one ``hf-pcoh publish`` writes) as ``output_dir/README.md``, for
        ``trainer.push_to_hub()``; the run's ``distillation_config.json`` is written first when this trainer
        was not run by :func:`hf_pcoh.run_distillation` (which writes it, with the evaluation, itself).
        The Trainer's card arguments other than ``license`` do not apply to it."""
        if not self.is_world_process_zero():
            return
        from .hub import write_model_card  # the hub and the pipeline build on this module
        from .pipeline import write_provenance
        from .setup import DistillationSetup

        output_dir = self.args.output_dir
        if not os.path.isfile(os.path.join(output_dir, DISTILLATION_CONFIG_FILE)):
            collator = self.distillation_collator
            teacher = None if self.teacher is None else self.accelerator.unwrap_model(self.teacher)
            setup = DistillationSetup(self.args, teacher,
                                      self.accelerator.unwrap_model(self.model).student, collator, self.train_dataset,
                                      self.eval_dataset, collator.modality)
            write_provenance(setup, self)
        write_model_card(output_dir, repo_id=self.hub_model_id, license=license or "apache-2.0",
                         secrets=(self.args.hub_token,))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_distillation_checkpoint(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_distillation_checkpoint(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)


def one_of(name: str, value: Any, old_name: str, old_value: Any) -> Any:
    """The argument given as ``name`` or under its earlier name ``old_name``; not both."""
    if value is not None and old_value is not None:
        raise ValueError(f"pass {name}= or {old_name}= (its earlier name), not both")
    return value if value is not None else old_value


def load_distillation_checkpoint(model: DistillationModel, checkpoint_dir: str) -> None:
    """Restore the student's weights and the heads from a directory written by ``DistillationTrainer``."""
    heads_path = os.path.join(checkpoint_dir, HEADS_FILE)
    if not os.path.isfile(os.path.join(checkpoint_dir, "config.json")) or not os.path.isfile(heads_path):
        raise ValueError(
            f"{checkpoint_dir} is not a distillation checkpoint: it needs config.json, model.safetensors and {HEADS_FILE}"
        )
    # from_pretrained applies any key renaming the architecture needs; then copy into the live student.
    try:
        reloaded = type(model.student).from_pretrained(checkpoint_dir, use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as error:
        raise ValueError(f"{checkpoint_dir}: the student's weights cannot be read ({error}); resume from another "
                         "checkpoint") from None
    differences = config_differences(reloaded.config, model.student.config)
    try:
        model.student.load_state_dict(reloaded.state_dict())
    except RuntimeError:
        raise ValueError(
            f"{checkpoint_dir} holds a student of another shape than this run builds ({differences or 'other tensors'}"
            "): resume with the student_config / student model of the run that wrote it"
        ) from None
    try:
        heads_state = load_file(heads_path)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{heads_path} cannot be read ({error}); resume from another checkpoint") from None
    missing, unexpected = model.load_state_dict(heads_state, strict=False)
    missing = [key for key in missing if not key.startswith("student.")]
    if missing or unexpected:
        raise ValueError(
            f"{heads_path} does not match this recipe's losses (missing {missing}, unexpected {unexpected}): resume "
            "with the same losses, layers and models as the run that wrote it"
        )


# Config entries that describe the run, not the shape of the weights.
BOOKKEEPING_CONFIG_KEYS = {"transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype",
                           "id2label", "label2id", "output_hidden_states", "use_cache"}


def config_differences(saved: Any, live: Any, limit: int = 5) -> str:
    """``hidden_size 32 in the checkpoint, 16 here; ...``: how a checkpoint's model config differs from this run's."""
    saved_values, live_values = saved.to_dict(), live.to_dict()
    keys = sorted(key for key in set(saved_values) | set(live_values)
                  if key not in BOOKKEEPING_CONFIG_KEYS and saved_values.get(key) != live_values.get(key))
    return "; ".join(f"{key} {saved_values.get(key)!r} in the checkpoint, {live_values.get(key)!r} here" for key in keys[:limit])


def rescale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, learning_rate: float) -> None:
    """Scale a resumed optimizer's learning rates and schedule so that its base rate is ``learning_rate``."""
    schedule = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds the torch scheduler
    base_rates = getattr(schedule, "base_lrs", None)
    if not base_rates or not base_rates[0] > 0 or math.isclose(base_rates[0], learning_rate, rel_tol=1e-9):
        return
    ratio = learning_rate / base_rates[0]
    logger.warning("resuming with learning_rate=%g; the checkpoint's schedule used %g: it is rescaled", learning_rate,
                   base_rates[0])
    schedule.base_lrs = [rate * ratio for rate in base_rates]
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(schedule, "_last_lr"):
        schedule._last_lr = [group["lr"] for group in optimizer.param_groups]


def check_steps_to_train(args: DistillationConfig, rows: int) -> None:
    """Refuse, before anything trains, a training set smaller than one batch (0 steps); say what would work.
    (``max_steps`` 0 and ``num_train_epochs`` 0 are refused by the config.)"""
    processes = max(args.world_size, 1)
    global_batch = args.per_device_train_batch_size * processes
    if args.dataloader_drop_last and rows < global_batch:
        per_process = rows // processes
        smaller = (f"a per_device_train_batch_size of at most {per_process}" if per_process >= 2 else
                   "more training rows")
        raise ValueError(
            f"the training set has {rows} rows, fewer than one batch of {global_batch} (per_device_train_batch_size="
            f"{args.per_device_train_batch_size} x {processes} process(es)), and dataloader_drop_last drops incomplete "
            f"batches: this run would train 0 steps. Use at least {global_batch} rows (max_train_samples) or "
            f"{smaller}"
        )
