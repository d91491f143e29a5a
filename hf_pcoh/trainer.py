"""``DistillationTrainer``: a ``transformers.Trainer`` that distils a frozen teacher's features into a student.

One training step (``docs/architecture.md`` draws it): the collator gives ``student_inputs`` (and
``teacher_inputs`` when the teacher has its own processor); the teacher runs in eval mode without
gradients, or its features come from the teacher-feature cache; both sides' features are taken from the
chosen layers and pooled (:class:`~hf_pcoh.readout.FeatureReadout`); batch-level losses see the global batch
(gathered across processes with gradients); the weighted sum of every (layer pair, loss) term, plus optional
cross-entropy and logit KD, is backpropagated into the student and the losses' heads.

This module holds the Trainer's hooks only. The trainable module handed to ``Trainer`` is
:class:`~hf_pcoh.distillation_model.DistillationModel` (student + heads), so accelerate/DDP wrap, optimise and
checkpoint both; the student itself is saved as a plain ``transformers`` model and the heads beside it in
``distillation_heads.safetensors``; a resume loads them back with :mod:`hf_pcoh.checkpoints`.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import get_last_checkpoint

from .artifacts import HEADS_FILE, TEACHER_PROCESSOR_DIR
from .checkpoints import earlier_checkpoint_advice, load_distillation_checkpoint, rescale_learning_rate
from .collator import CACHED_FEATURES_KEY, CACHED_LOGITS_KEY, DistillationCollator
from .config import DistillationConfig
from .data import first_rows, is_streamed
from .distillation_model import DistillationModel, DistillationOutput, FeatureProbe, add_distillation_terms
from .distillation_model import freeze_unread_parameters
from .distributed import any_process
from .embedding import embed
from .evaluation import agreement_metrics
from .features import FeatureExtractor, Features
from .frozen_teacher import as_read_from_whole, cut_for_layers, run_teacher  # only as deep as needed
from .non_finite import (
    NonFiniteCallback, NonFiniteLossError, UnusableWeightsError, non_finite_guard_for, skip_next_optimizer_step,
)
from .precomputed_teacher import precomputed_embeddings
from .readout import FeatureReadout, resolve_readout
from .run_sources import received_sources
from .sentence_embedding import save_student_as_sentence_transformer
from .sharding import (
    deepspeed_inference_engine,
    materialize_meta_tensors,
    shard_frozen_model,
    whole_parameters_under_zero3,
)
from .token_accumulation import TokenAccumulation
from .trainer_hub import push_with_card, write_trainer_card
from .trainer_inputs import one_of, resolve_trainer_inputs
from .weights import weight_problem

logger = logging.getLogger(__name__)

# Labelled training rows the student's eval-split embeddings are classified against (kNN) at each evaluation.
EVAL_REFERENCE_SAMPLES = 1000


class DistillationTrainer(TokenAccumulation, Trainer):
    """Distil the teacher into the student on the terms of a :class:`DistillationConfig`.

    Shaped like TRL's trainers: ``model`` (the student) and ``teacher_model`` are model objects, or folders / Hub ids
    loaded with ``model_init_kwargs`` / ``teacher_model_init_kwargs`` (default: the config's ``student_*`` /
    ``teacher_*`` options); ``args=None`` is ``DistillationConfig``'s defaults, saved to ``<student name>-Distill``;
    the rest is keyword-only. Without ``data_collator``, one is built for the data's text or image column with
    ``processing_class`` as the student's processor, class names in its label column made class ids as the command
    line makes them. ``peft_config`` wraps the student with peft's ``get_peft_model``. ``student=``, ``teacher=``,
    ``collator=``: earlier names. With ``teacher_embedding_column`` and no ``teacher_model`` no teacher is loaded.
    Unlike TRL's: feature losses, no on-policy generation, no predictions for ``compute_metrics``, no resume of a
    peft student (README, "From TRL").
    ``readout`` says how features are read (:class:`~hf_pcoh.readout.FeatureReadout`, ``setup.readout`` of
    :func:`~hf_pcoh.setup.build_setup`); without it, it is resolved from ``args`` and the teacher.

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
        *,
        data_collator: DistillationCollator | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        peft_config: Any = None,
        student: PreTrainedModel | str | None = None,
        teacher: PreTrainedModel | str | None = None,
        collator: DistillationCollator | None = None,
        readout: FeatureReadout | None = None,
        **kwargs: Any,
    ) -> None:
        # Folders and Hub ids are loaded, models missing built from the config, the collator built for the data.
        model, teacher = one_of("model", model, "student", student), one_of("teacher_model", teacher_model, "teacher", teacher)
        inputs = resolve_trainer_inputs(args, model, teacher, one_of("data_collator", data_collator, "collator", collator),
                                        train_dataset, eval_dataset, processing_class, peft_config)
        # Where the models and data came from, as given (the model card tells it: hf_pcoh.run_sources).
        self.run_sources = received_sources(inputs.args, model, teacher, train_dataset)
        args, student, teacher, collator = inputs.args, inputs.student, inputs.teacher, inputs.collator
        train_dataset, eval_dataset = inputs.train_dataset, inputs.eval_dataset
        head_random_state = torch.random.get_rng_state()  # the heads' first weights: the caller's random state
        self.distillation_collator = collator
        # Read before the accelerator wraps the teacher (its files, its name_or_path).
        self.readout = readout if readout is not None else resolve_readout(args, teacher)
        # The loss modules are sized by running both models, which needs the teacher prepared by the
        # accelerator: the Trainer is built first on the student alone, the terms are added before training.
        model = DistillationModel(student, self.readout.student_extractors, {}, [], args.ce_weight, None,
                                  args.logit_kd_weight, args.student_forward_chunk_size)
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=collator.student_processor, callbacks=callbacks,
                         optimizers=optimizers, **kwargs)
        self.teacher = self.prepare_teacher(teacher)
        with torch.random.fork_rng(devices=[]):
            torch.random.set_rng_state(head_random_state)
            probe = self.probe_features(model.student, model.student_extractors, train_dataset)
            add_distillation_terms(model, args, self.readout, probe, collator.next_token_labels,
                                   self.accelerator)
        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self.last_terms: dict[str, torch.Tensor] = {}
        # fp16's gradient scaler skips overflowing steps itself; DeepSpeed's engine judges its own (hf_pcoh.non_finite).
        self.non_finite_guard = non_finite_guard_for(self.accelerator, self.is_deepspeed_enabled)
        self.add_callback(NonFiniteCallback(self.guard_update))
        self.term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.term_counts: dict[str, int] = {"train": 0, "eval": 0}
        self.teacher_eval_embeddings: dict[Any, np.ndarray] = {}  # per evaluation split, computed once

    # ---- building ----------------------------------------------------------------------------------
    def prepare_teacher(self, teacher: PreTrainedModel | None) -> nn.Module | None:
        """The frozen teacher, sharded like the student (as TRL's distillation trainers prepare theirs): a DeepSpeed
        inference engine under DeepSpeed (ZeRO-3 partitions it), FSDP units of its blocks under FSDP (under FSDP2 only
        up to the deepest layer the run reads: ``cut_for_layers``); else whole on this device, with no DDP wrapper."""
        if teacher is None:  # its embeddings are precomputed (teacher_embedding_column)
            return None
        teacher = teacher.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return deepspeed_inference_engine(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            running_part = cut_for_layers(teacher, self.readout.teacher_extractors_read)  # to the deepest layer read
            return shard_frozen_model(teacher, self.accelerator, running_part)
        return teacher.to(self.accelerator.device)

    def probe_features(
        self, student: PreTrainedModel, student_extractors: Sequence[FeatureExtractor], train_dataset: Any
    ) -> FeatureProbe:
        """Run teacher and student, without gradients, on the first two training rows: the feature widths that
        size the loss modules (:func:`~hf_pcoh.distillation_model.add_distillation_terms`)."""
        if is_streamed(train_dataset):  # its first rows
            rows = first_rows(train_dataset, 2)
        else:
            rows = [train_dataset[index] for index in range(min(2, len(train_dataset)))]
        if len(rows) < 2:
            raise ValueError(f"the training set has {len(rows)} rows; distillation needs at least 2")
        batch = self.distillation_collator([rows[i] for i in range(2)])
        student_device = next((p.device for p in student.parameters() if not p.is_meta), self.args.device)
        materialize_meta_tensors(student, student_device)
        student_inputs = {name: tensor.to(student_device) for name, tensor in batch["student_inputs"].items()}
        student_was_training = student.training
        student.eval()
        with torch.no_grad(), whole_parameters_under_zero3(student):
            teacher_device = None if self.teacher is None else next(self.teacher.parameters()).device
            teacher_features, teacher_logits = self.teacher_forward(batch, device=teacher_device)
            outputs = student(**student_inputs, output_hidden_states=True)
        if not self.is_deepspeed_enabled:  # (ZeRO-3 may hold the student partitioned here)
            freeze_unread_parameters(student, student_inputs, student_extractors,
                                     self.args.ce_weight + self.args.logit_kd_weight > 0)
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
            return run_teacher(self.teacher, teacher_inputs, self.readout.teacher_extractors)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, DistillationOutput]:
        teacher_features, teacher_logits = self.teacher_forward(inputs)
        # Token terms over the target tokens of the whole accumulated batch (hf_pcoh.token_accumulation).
        output = model(student_inputs=inputs["student_inputs"], teacher_features=teacher_features,
                       labels=inputs.get("labels"), teacher_logits=teacher_logits,
                       target_tokens_per_micro_batch=self.target_tokens_per_micro_batch(num_items_in_batch))
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
        alternative = ("" if skipping else "; or pass --non_finite_loss skip to drop such updates") + "."
        raise NonFiniteLossError(
            f"{reason} at step {step}{streak}. That update was not applied: {checkpoint} holds the weights before it "
            f"(a resume goes on with the next batch). Lower the learning rate or check the data, then resume with "
            f"--resume_from_checkpoint {checkpoint} (a new --learning_rate applies when resuming); if the loss is "
            f"NaN again at once, the weights had already diverged: {earlier_checkpoint_advice(checkpoint)}{alternative}"
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
        student_extractor, teacher_extractor = self.readout.student_embedding, self.readout.teacher_embedding
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
                                                      as_read_from_whole(teacher, teacher_extractor), **options).values
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
        student_state, heads_state = distillation_model.split_state_dict(state_dict)
        distillation_model.student.save_pretrained(output_dir, state_dict=student_state)
        save_file(heads_state, os.path.join(output_dir, HEADS_FILE), metadata={"format": "pt"})
        collator = self.distillation_collator
        collator.student_processor.save_pretrained(output_dir)
        if collator.teacher_processor is not collator.student_processor:
            collator.teacher_processor.save_pretrained(os.path.join(output_dir, TEACHER_PROCESSOR_DIR))
        # A sentence-transformers teacher's student is one too: SentenceTransformer(output_dir) gives its embedding.
        pooling_mode = self.readout.sentence_transformers_pooling(
            collator.modality, getattr(collator.student_processor, "padding_side", None))
        save_student_as_sentence_transformer(output_dir, pooling_mode, self.readout.normalize,
                                             distillation_model.student, self.args.max_length)
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
        """hf_pcoh's model card (the one ``hf-pcoh publish`` writes) as ``output_dir/README.md``, after recording the
        run as this trainer received and evaluated it in ``distillation_config.json`` (:mod:`hf_pcoh.trainer_hub`).
        The Trainer's card arguments other than ``license`` do not apply to it."""
        write_trainer_card(self, license)

    def push_to_hub(self, commit_message: str | None = None, blocking: bool = True, token: str | None = None,
                    revision: str | None = None, private: bool | None = None, **kwargs: Any) -> Any:
        """Save the student, write hf_pcoh's card, then upload the folder in one commit as ``hf-pcoh publish`` does;
        a push that cannot happen (offline mode, no token, no permission) raises a one-line
        :class:`hf_pcoh.errors.PublishError` with the folder and its card complete. Returns the
        :class:`~hf_pcoh.hub.PublishPlan` (``commit_url``, ``repo_url``)."""
        return push_with_card(self, commit_message, blocking, token, revision, private, kwargs.get("license"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Student and heads from the checkpoint's plain files (whole tensors, sharded into FSDP2's DTensors as the
        model is; :func:`~hf_pcoh.checkpoints.load_distillation_checkpoint`). The Trainer never calls this under
        DeepSpeed: it resumes from the engine's own (ZeRO-partitioned) checkpoint, which holds the heads too."""
        load_distillation_checkpoint(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            # The engine's own checkpoint, loaded into its partitioned parameters: copying whole tensors into
            # ZeRO-3's partitions would not reach them.
            super()._load_best_model()
            return
        load_distillation_checkpoint(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)

