"""The checks of :class:`hf_pcoh.config.DistillationConfig`: each distillation field validated when the config is built.

A mixin of the config (``DistillationConfig(ConfigChecks, TrainingArguments)``): the fields and their help live
in ``config.py``, the rules that refuse bad values here, each raising a ``ValueError`` that names the field, the
value received and what would work.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from .errors import unknown_name_message
from .features import NAMED_LAYERS, POOLINGS
from .losses import LOSSES, check_loss_options
from .losses.token_kd import DIVERGENCES
from .weights import DEFAULT_MAX_ABS_WEIGHT

logger = logging.getLogger(__name__)


def accelerator_available() -> bool:
    """Whether torch sees a GPU (or another accelerator) on this machine."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()

AUTO_LAYERS = "auto"  # teacher_layers: auto = chosen by knowledge quality (hf_pcoh.layers)
AUTO_POOLING = "auto"  # pooling: auto = a sentence-transformers teacher's own embedding, else mean (hf_pcoh.sentence_embedding)
TEACHER_CACHE_OFF = ("none", "off", "false", "no", "")  # teacher_cache: any of these = no cache, the teacher runs live
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")  # teacher_dtype: auto = the checkpoint's own
TASKS = ("auto", "features", "causal_lm")  # task: auto = causal_lm for a causal-LM student with token objectives
# teacher_model_init_kwargs that hf_pcoh sets itself, and the option that does it
OWN_INIT_KWARGS = {"trust_remote_code": "--trust_remote_code", "use_safetensors": "nothing: hf_pcoh loads safetensors only"}


def parse_layer(value: int | str, option: str) -> int | str:
    """A layer given as an int, a numeric string or one of ``NAMED_LAYERS``."""
    if isinstance(value, bool):
        raise ValueError(f"{option}: {value!r} is not a layer; use an integer index or one of {NAMED_LAYERS}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text in NAMED_LAYERS:
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{option}: {value!r} is not a layer; use an integer index into hidden_states (negative counts from "
            f"the end, 0 = embeddings) or one of {NAMED_LAYERS}"
        ) from None


def options_of_used_losses(loss_kwargs: dict[str, Any] | None, losses: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``loss_kwargs`` narrowed to the losses a run uses (options for a loss not run are refused by the config)."""
    return {name: options for name, options in (loss_kwargs or {}).items() if name in losses}


def parse_json_option(value: Any, option: str) -> Any:
    """Accept a dict/list as is, or parse a JSON string given on the command line."""
    if value is None or isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{option}: could not parse {value!r} as JSON ({error})") from None


def check_init_kwargs(option: str, kwargs: Any, role: str, built_from_config: bool) -> bool:
    """``option`` (``model_init_kwargs`` / ``teacher_model_init_kwargs``) is a dict of ``from_pretrained``'s arguments
    that hf_pcoh does not set itself, for a model that is loaded; True when it holds any."""
    if kwargs is None or kwargs == {}:
        return False
    if not isinstance(kwargs, dict):
        raise ValueError(f"{option} must be a JSON object (dict) of from_pretrained's arguments, got {kwargs!r}")
    for key, own_option in OWN_INIT_KWARGS.items():
        if key in kwargs:
            raise ValueError(f"{option} sets {key!r}, which hf_pcoh sets itself: use {own_option}")
    if built_from_config:
        raise ValueError(f"{option}={kwargs} are from_pretrained's, but the {role} is built from {role}_config, not "
                         f"loaded: drop them" + (" (teacher_dtype applies to a built teacher too)" if role == "teacher"
                                                 else ""))
    return True


class ConfigChecks:
    """The validation half of ``DistillationConfig`` (see :mod:`hf_pcoh.config` for the fields)."""

    def _join_cpu_processes(self) -> None:
        """Launched as several processes on a machine with no accelerator: train on CPU in one gloo group.

        accelerate forms a CPU process group only with ``use_cpu`` (``PartialState(cpu=True)``); without it each
        of ``accelerate launch --multi_gpu --num_processes 2`` / ``torchrun``'s processes would train alone, as a
        world of one, on the same output folder.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not accelerator_available():
            logger.info("%s processes and no GPU: training on CPU in one process group (use_cpu)",
                        os.environ["WORLD_SIZE"])
            self.use_cpu = True

    def validate_distillation_options(self) -> None:
        """Check every distillation field; raise ``ValueError`` naming the field, the value and a fix."""
        self._parse_json_options()
        self._check_models()
        self._check_json_objects()
        self._check_layers()
        self._check_pooling()
        self._check_losses()
        self.validate_loss_options()
        self._check_logit_objectives()
        self._check_data_and_run_options()
        self._check_task()
        self._check_batch_size()
        self._check_loggers()

    def _parse_json_options(self) -> None:
        self.teacher_config = parse_json_option(self.teacher_config, "teacher_config")
        self.student_config = parse_json_option(self.student_config, "student_config")
        self.loss_kwargs = parse_json_option(self.loss_kwargs, "loss_kwargs") or {}
        self.teacher_model_init_kwargs = parse_json_option(self.teacher_model_init_kwargs, "teacher_model_init_kwargs")
        self.model_init_kwargs = parse_json_option(self.model_init_kwargs, "model_init_kwargs")

    def _check_models(self) -> None:
        """A teacher config names its architecture. Whether a teacher and a student are named at all is checked
        where they are built from the config (:meth:`check_models_given`): models handed to
        ``DistillationTrainer(model=..., teacher_model=...)`` need no option here."""
        if self.teacher_config is not None and "model_type" not in self.teacher_config:
            raise ValueError(f"teacher_config={self.teacher_config} needs a 'model_type' (e.g. 'bert', 'opt', 'vit')")
        check_init_kwargs("model_init_kwargs", self.model_init_kwargs, "student",
                          self.student_config is not None and not self.student_model_name_or_path)
        self._check_teacher_dtype()

    def _check_teacher_dtype(self) -> None:
        """``teacher_dtype`` names a dtype (a ``torch.dtype`` is taken by its name); ``teacher_model_init_kwargs`` does
        not set the dtype a second time, nor what hf_pcoh sets itself."""
        if isinstance(self.teacher_dtype, torch.dtype):
            self.teacher_dtype = str(self.teacher_dtype).removeprefix("torch.")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher_dtype={self.teacher_dtype!r} is not a dtype hf_pcoh loads a teacher in: use one "
                             f"of {', '.join(TEACHER_DTYPES)} (auto: the checkpoint's own)")
        kwargs = self.teacher_model_init_kwargs
        if not check_init_kwargs("teacher_model_init_kwargs", kwargs, "teacher",
                                 self.teacher_config is not None and not self.teacher_model_name_or_path):
            return
        for key in ("dtype", "torch_dtype"):
            if key in kwargs and self.teacher_dtype != "auto":
                raise ValueError(f"teacher_dtype={self.teacher_dtype!r} and teacher_model_init_kwargs[{key!r}]="
                                 f"{kwargs[key]!r} both set the teacher's dtype: keep one")

    def check_models_given(self, teacher: bool = True, student: bool = True) -> None:
        """A teacher and a student to build, each from a checkpoint or a config (the CLI and ``build_setup``)."""
        if teacher and not self.teacher_model_name_or_path and not self.teacher_config and not self.teacher_embedding_column:
            raise ValueError(
                "no teacher: set teacher_model_name_or_path (a local folder or Hub id, e.g. "
                "sentence-transformers/all-MiniLM-L6-v2) or teacher_config (a JSON dict with model_type)"
            )
        if student and not self.student_model_name_or_path and self.student_config is None:
            raise ValueError(
                "no student: set student_model_name_or_path or student_config (e.g. '{\"num_hidden_layers\": 3}' to "
                "shrink the teacher's architecture)"
            )

    def _check_json_objects(self) -> None:
        for option in ("student_config", "teacher_config", "loss_kwargs"):
            value = getattr(self, option)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{option} must be a JSON object (dict), got {value!r}")

    def _check_layers(self) -> None:
        """Student and teacher layers paired one-to-one, or teacher layers left to the automatic choice."""
        self.student_layers = [parse_layer(layer, "student_layers") for layer in self.student_layers]
        if not self.student_layers or not self.teacher_layers:
            raise ValueError("student_layers and teacher_layers must each name at least one layer (e.g. last)")
        if self.teacher_layers_auto:
            self._check_layer_selection()
            return
        self.teacher_layers = [parse_layer(layer, "teacher_layers") for layer in self.teacher_layers]
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"student_layers={self.student_layers} and teacher_layers={self.teacher_layers} must have the same "
                "length: they are paired one-to-one"
            )

    def _check_layer_selection(self) -> None:
        top_k = self.layer_selection_top_k or len(self.student_layers)
        if top_k != len(self.student_layers):
            raise ValueError(
                f"layer_selection_top_k={top_k} must equal the number of student layers "
                f"({len(self.student_layers)}: {self.student_layers}): the chosen teacher layers pair one-to-one"
            )
        if self.layer_selection_samples < 20:
            raise ValueError(f"layer_selection_samples={self.layer_selection_samples} is too few (try 2000)")

    def _check_pooling(self) -> None:
        if self.pooling not in (*POOLINGS, AUTO_POOLING):
            raise ValueError(f"pooling={self.pooling!r} is not a pooling; use one of {POOLINGS} or {AUTO_POOLING!r}")
        if self.teacher_pooling is not None and self.teacher_pooling not in POOLINGS:
            raise ValueError(f"teacher_pooling={self.teacher_pooling!r} is not a pooling; use one of {POOLINGS}")

    def _check_losses(self) -> None:
        """Known loss names, one non-negative weight each (default 1.0)."""
        if not self.losses:
            raise ValueError(f"losses is empty; name at least one of {sorted(LOSSES)}")
        for name in self.losses:
            if name not in LOSSES:
                raise ValueError(f"losses: {unknown_name_message('loss', name, list(LOSSES))}")
        if self.loss_weights is None:
            self.loss_weights = [1.0] * len(self.losses)
        self.loss_weights = [float(weight) for weight in self.loss_weights]
        if len(self.loss_weights) != len(self.losses):
            raise ValueError(
                f"loss_weights={self.loss_weights} needs one weight per loss in losses={self.losses}"
            )
        for name, weight in zip(self.losses, self.loss_weights):
            if weight < 0:
                raise ValueError(f"loss_weights: the weight of {name!r} is {weight}; weights must be >= 0")

    def validate_loss_options(self) -> None:
        """Check ``loss_kwargs`` before any model loads: every key names a loss of this run, and its options
        are a mapping of that loss's constructor options, of the hinted types and valid values."""
        for name in self.loss_kwargs:
            if name not in LOSSES:
                raise ValueError(f"loss_kwargs: {unknown_name_message('loss', name, list(LOSSES))}")
            if name not in self.losses:
                raise ValueError(
                    f"loss_kwargs has options for {name!r}, which this run does not use (losses={self.losses}): "
                    f"add {name!r} to --losses or remove its options"
                )
        self.loss_kwargs = {name: check_loss_options(name, options) for name, options in self.loss_kwargs.items()}

    def _check_logit_objectives(self) -> None:
        """Cross-entropy and logit KD: non-negative weights, a positive temperature."""
        for option in ("ce_weight", "logit_kd_weight"):
            if getattr(self, option) < 0:
                raise ValueError(f"{option}={getattr(self, option)} must be >= 0")
        if not self.logit_kd_temperature > 0:
            raise ValueError(f"logit_kd_temperature={self.logit_kd_temperature} must be > 0 (try 2.0)")
        if self.logit_kd_divergence not in DIVERGENCES:
            raise ValueError(f"logit_kd_divergence={self.logit_kd_divergence!r} is not a divergence: use one of "
                             f"{', '.join(DIVERGENCES)}")
        if not 0.0 <= self.logit_kd_beta <= 1.0:
            raise ValueError(f"logit_kd_beta={self.logit_kd_beta} must be in [0, 1] (0 = forward KL, 1 = reverse KL; "
                             "try 0.5)")

    def _check_task(self) -> None:
        """``task`` names a task; a language-model student reads text, has no class head to probe, and its logit KD
        compares both models token by token, so both read the same tokens and the teacher runs live."""
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not a task: use one of {', '.join(TASKS)}")
        if self.task != "causal_lm":
            return
        refused = {"image_column": self.image_column, "fit_head_by_probe": self.fit_head_by_probe}
        if self.logit_kd_weight > 0:
            refused.update({"teacher_text_column": self.teacher_text_column,
                            "student_text_column": self.student_text_column,
                            "teacher_cache": None if self.teacher_cache == "auto" else self.teacher_cache})
        for option, given in refused.items():
            if given:
                reason = ("logit KD over the vocabulary compares both models token by token (the teacher's logits "
                          "are too large to cache)" if option.startswith(("teacher_", "student_")) else
                          "a language-model student reads text and keeps its language-model head")
                raise ValueError(f"task=causal_lm: {option}={given!r} cannot apply, as {reason}: drop it")

    def resolved_task(self, student_is_causal_lm: bool) -> str:
        """``features`` or ``causal_lm``: ``task``, with ``auto`` resolved for a student that is (or is not) a causal
        language model (``hf_pcoh.models.is_causal_lm``)."""
        if self.task != "auto":
            return self.task
        token_objectives = self.ce_weight > 0 or self.logit_kd_weight > 0
        return "causal_lm" if token_objectives and student_is_causal_lm and self.label_column is None else "features"

    def _check_student_forward_chunks(self) -> None:
        """Chunks give pooled features back in the batch's order; logits, token features and left padding they do
        not reassemble (hf_pcoh.length_chunks)."""
        size = self.student_forward_chunk_size
        if size is None:
            return
        if size < 1:
            raise ValueError(f"student_forward_chunk_size={size}: give a number of examples >= 1, or leave it unset")
        uses_logits = [f"{option}={getattr(self, option)}" for option in ("ce_weight", "logit_kd_weight")
                       if getattr(self, option) > 0]
        if self.task == "causal_lm":
            uses_logits.append("task=causal_lm")
        if uses_logits:
            raise ValueError(f"student_forward_chunk_size puts pooled features back together, not logits, which "
                             f"{', '.join(uses_logits)} needs: leave student_forward_chunk_size unset")
        if self.padding_side == "left":
            raise ValueError("student_forward_chunk_size trims each chunk's padding from the right: padding_side "
                             "'left' cannot be chunked; use 'right' or leave student_forward_chunk_size unset")

    def _check_data_and_run_options(self) -> None:
        if self.non_finite_loss not in ("stop", "skip"):
            raise ValueError(f"non_finite_loss={self.non_finite_loss!r} must be 'stop' or 'skip'")
        if self.max_steps == 0 or (self.max_steps < 0 and not self.num_train_epochs > 0):
            # (the Trainer reads max_steps 0 as "not set" and trains num_train_epochs instead)
            raise ValueError(f"max_steps={self.max_steps} with num_train_epochs={self.num_train_epochs} would train 0 "
                             "steps: give max_steps >= 1, or max_steps -1 and num_train_epochs > 0")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips={self.max_consecutive_skips} must be >= 1 (non_finite_loss stop "
                             "stops at the first non-finite update)")
        if not self.max_abs_weight > 0:
            raise ValueError(f"max_abs_weight={self.max_abs_weight} must be > 0 (default {DEFAULT_MAX_ABS_WEIGHT:g}; "
                             "inf turns the bound off)")
        if self.padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side={self.padding_side!r} must be 'left' or 'right'")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be at least 2 tokens")
        if self.image_column and (self.text_column or self.teacher_text_column or self.student_text_column):
            raise ValueError("give text columns or image_column, not both")
        if self.streaming and self.max_steps < 1:
            raise ValueError("streaming: a streamed data set has no length, so the run needs --max_steps (the number of "
                             "updates to train)")
        self._check_teacher_cache()
        if self.streaming and self.teacher_cache not in (None, "auto"):
            raise ValueError(f"teacher_cache={self.teacher_cache!r} stores features per row of a whole training set; a "
                             "streamed one is read as it goes: drop --teacher_cache or --streaming")
        self._check_teacher_embedding_column()
        self._check_student_forward_chunks()
        for option in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise ValueError(f"{option}={value} must be a positive number of rows")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs --hub_model_id USER/NAME: the Hub repo the student is published to")

    def _check_teacher_cache(self) -> None:
        """The words a user tries for "no cache" (``none``, ``off``, ``false``, ``no``; YAML reads the last three
        as ``false``) mean the default, the live teacher, rather than a folder of that name."""
        if self.teacher_cache is False or (isinstance(self.teacher_cache, str)
                                           and self.teacher_cache.strip().lower() in TEACHER_CACHE_OFF):
            self.teacher_cache = None
        elif self.teacher_cache is not None and not isinstance(self.teacher_cache, str):
            raise ValueError(f"teacher_cache={self.teacher_cache!r} is not a folder: give a folder, 'auto', or 'none' "
                             "(the teacher runs live)")

    def _check_teacher_embedding_column(self) -> None:
        """Precomputed teacher embeddings are one pooled vector per row: one layer pair, no teacher to run."""
        if not self.teacher_embedding_column:
            return
        option = f"teacher_embedding_column={self.teacher_embedding_column!r}"
        if len(self.student_layers) != 1 or self.teacher_layers_auto:
            raise ValueError(f"{option} holds one embedding per row: give one student layer (--student_layers last) "
                             "and no teacher_layers auto")
        # Each as the user (or the recipe they named) set it, with how to turn it off.
        refused = {"teacher_cache": (self.teacher_cache, "--teacher_cache none"),
                   "logit_kd_weight > 0": (self.logit_kd_weight > 0, "--logit_kd_weight 0"),
                   "student_init_from_teacher": (self.student_init_from_teacher, "--student_init_from_teacher false"),
                   "pooling none": (self.pooling == "none", "--pooling auto")}
        for name, (given, off) in refused.items():
            if given:
                raise ValueError(f"{option} trains without loading the teacher, so {name} cannot apply: drop it "
                                 f"({off})")

    def _check_loggers(self) -> None:
        """``report_to`` names only loggers whose package is installed (else the Trainer fails deep in its setup)."""
        from transformers.integrations import get_available_reporting_integrations

        requested = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        requested = [name for name in requested if name not in ("none", "all")]
        available = set(get_available_reporting_integrations())
        missing = [name for name in requested if name not in available]
        if missing:
            raise ValueError(f"report_to={missing[0]!r}: its package is not installed; pip install {missing[0]} "
                             "(or pass --report_to none)")

    def _check_batch_size(self) -> None:
        """Batch-level losses compare the points of a batch: each needs its minimum batch size."""
        batch_level = [name for name in self.losses if LOSSES[name].batch_level]
        needed = max((LOSSES[name].min_batch_size for name in batch_level), default=1)
        if self.per_device_train_batch_size < 1 or (batch_level and self.per_device_train_batch_size < needed):
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} is too small: the batch-level "
                f"loss(es) {batch_level} compare points of a batch and need at least {needed} per batch (try 32)"
            )

    @property
    def teacher_layers_auto(self) -> bool:
        """True while the teacher layers are still to be chosen by knowledge quality."""
        return [str(layer) for layer in self.teacher_layers] == [AUTO_LAYERS]

    def loss_options(self, name: str) -> dict[str, Any]:
        """The keyword options given for loss ``name`` in ``loss_kwargs``."""
        return dict(self.loss_kwargs.get(name, {}))
