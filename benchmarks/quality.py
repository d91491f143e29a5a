"""Compare every distillation loss on the real benchmarks, beside two references, over several seeds.

A benchmark is a recipe (teacher, student, data, steps) that every row trains with the same student
initialisation, data, number of steps and seeds; only the training signal differs:

* one row per feature loss of ``LOSSES`` (logit losses such as ``logit_kd`` are left out: they need
  logits, not features), each run through :func:`hf_pcoh.pipeline.run_distillation` with
  ``losses=[name]`` and the loss's default options;
* ``no_teacher_ce``: the same student trained with cross-entropy on the labels only, through a linear
  head on the very embedding that is measured (the pipeline always runs the teacher, so this
  reference is trained with a plain ``transformers.Trainer``);
* ``sentence_transformers_mse`` (text only): the peer a user would pick, sentence-transformers' own
  distillation (:mod:`benchmarks.peers`).

Every student is measured the same way: :func:`hf_pcoh.evaluation.evaluate_embeddings` on held-out
points, with a labelled reference sample for kNN and the probe, and agreement with the teacher's
embeddings of the same points. Both the queries and the reference come from the eval split (shuffled
with a fixed seed), so no row has trained on them, and the teacher embeds them once per benchmark.

Outputs in ``output_dir``: ``<benchmark>.json`` (every run and the mean/std summary),
``<benchmark>.md`` (a table of mean ± std over seeds), ``<benchmark>_quality.png`` (bars with error
bars: kNN@10 accuracy and teacher-neighbour recall@10) and ``<benchmark>_quality_vs_time.png``.
``scripts/benchmark.py`` is the command line. Written to the committed folder (``benchmarks/results``), the
files also re-render docs/benchmarks.md's tables (``<!-- rendered:quality_<benchmark> -->``, :func:`quality_table`);
``tests/test_rendered_tables_all.py`` fails when they differ from the committed files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, PreTrainedModel, Trainer, set_seed

from hf_pcoh import LOSSES, DistillationConfig, FeatureExtractor, __version__
from hf_pcoh.collator import DistillationCollator
from hf_pcoh.config import options_of_used_losses
from hf_pcoh.data import load_splits
from hf_pcoh.errors import unknown_name_message
from hf_pcoh.evaluation import embed, evaluate_embeddings
from hf_pcoh.models import count_parameters
from hf_pcoh.artifacts import write_json
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.setup import DistillationSetup, build_setup
from hf_pcoh.recipes import read_recipe
from hf_pcoh.teacher_training import TeacherTrainingArguments, train_vision_teacher

from benchmarks.peers import train_sentence_transformers_peer
from benchmarks.provenance import REPOSITORY_ROOT
from benchmarks.rendered_tables import render_into_documents

logger = logging.getLogger(__name__)

SCALES = ("tiny", "cpu", "gpu")
BENCHMARKS = ("text", "vision")
# Losses of the registry that compare logits rather than features: they cannot be a row here.
LOGIT_LOSSES = frozenset({"logit_kd"})
NO_TEACHER_ROW = "no_teacher_ce"
PEER_ROW = "sentence_transformers_mse"
# The shuffle of the eval split that gives the held-out queries and the labelled reference.
EVALUATION_SEED = 0
# Shown first in tables and plotted: the class-aware and the label-free headline metrics.
KNN_METRIC = "knn_accuracy@10"
AGREEMENT_METRIC = "teacher_neighbour_recall@10"
SPEED_COLUMNS = ("train_samples_per_second", "train_seconds", "wall_seconds")
# The tiny scale's models (as tests/tiny_models.py): a few layers, a few dozen dimensions.
TINY_TEXT_TEACHER = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
TINY_TEXT_STUDENT = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
TINY_VISION_STUDENT = {"model_type": "vit", "image_size": 8, "patch_size": 2, "num_channels": 1, "hidden_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def feature_losses() -> list[str]:
    """The registry's losses that compare features (every one but the logit losses), in registry order."""
    return [name for name in LOSSES if name not in LOGIT_LOSSES]


# --------------------------------------------------------------------------- what a benchmark is


@dataclass
class TeacherSpec:
    """A vision teacher trained here by :func:`train_vision_teacher` when ``output_dir`` holds none yet."""

    output_dir: str
    dataset_name: str
    training: dict[str, Any] = field(default_factory=dict)  # TeacherTrainingArguments overrides


@dataclass
class BenchmarkSpec:
    """One benchmark: the recipe every row shares, the evaluation sizes, and whether the text peer applies."""

    name: str
    recipe: dict[str, Any]  # DistillationConfig fields shared by every run (not output_dir, losses, seed)
    num_queries: int  # held-out points measured (kNN queries, agreement with the teacher)
    num_reference: int  # labelled held-out points the queries are classified against
    has_peer: bool = False
    teacher: TeacherSpec | None = None
    embedding_batch_size: int = 128


# Fields every benchmark run sets, whatever its recipe says: nothing but the student is written,
# the benchmark measures the students itself (on one held-out sample shared by every row), and the
# teacher runs inside every step (no teacher_cache), so samples/s is what a distillation costs.
RUN_OVERRIDES: dict[str, Any] = {
    "save_strategy": "no", "evaluate_after_training": False, "report_to": "none", "disable_tqdm": True,
    "push_to_hub": False, "eval_strategy": "no", "teacher_cache": None,
    "overwrite_output_dir": True,  # a benchmark's run folder is scratch space: a rerun replaces it
}


def benchmark_specs(scale: str, teachers_dir: str = "benchmarks/teachers") -> dict[str, BenchmarkSpec]:
    """The ``text`` and ``vision`` benchmarks at ``scale``.

    * ``tiny`` (tests, seconds): a random 2-layer BERT teacher (MiniLM's tokenizer) into a 1-layer
      16-d student on 64 WordNet glosses; a 2-stage ResNet trained here for 30 steps on scikit-learn's
      digits into a 2-layer ViT. 4 steps of 16 (text) / 32 (vision).
    * ``cpu`` (default; every row x 3 seeds in under an hour on 2 CPU cores: about 51 minutes as
      measured with one thread on a busy 2-core machine, text 38 and vision 13 of them): the
      ``minilm-wordnet`` recipe (all-MiniLM-L6-v2 -> a 3-layer student initialised from its layers)
      for 50 steps of 64 glosses (3,200 distinct glosses), with ``max_length`` 32 instead of 64 (90 %
      of glosses fit; batches padded to 64 tokens cost 1.6x more), measured on 1,000 held-out glosses
      against 1,000 labelled ones; the ``fashion-mnist`` recipe (a ResNet trained here -> a 3-layer
      64-d ViT) for 60 steps of 128 images (7,680 images), measured on 1,000 held-out images against 2,000.
    * ``gpu``: the recipes at full size: every training gloss for one epoch in batches of 256, every
      training image for 5 epochs; measured on 5,000 held-out points against 5,000 labelled ones.
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; use one of {SCALES}")
    fashion_teacher = TeacherSpec(os.path.join(teachers_dir, "fashion-mnist"), "fashion_mnist")
    if scale == "tiny":
        digits_teacher = TeacherSpec(
            os.path.join(teachers_dir, "digits-tiny"), "digits",
            {"hidden_sizes": [16, 32], "depths": [1, 1], "max_steps": 30, "per_device_train_batch_size": 64,
             "learning_rate": 3e-3},
        )
        text = BenchmarkSpec("text", {
            "teacher_config": TINY_TEXT_TEACHER, "teacher_processor_name_or_path": MINILM,
            "student_config": TINY_TEXT_STUDENT, "dataset_name": "wordnet_glosses", "pooling": "mean",
            "max_length": 32, "max_train_samples": 64, "per_device_train_batch_size": 16, "max_steps": 4,
            "learning_rate": 1e-3, "logging_steps": 2,
        }, num_queries=48, num_reference=64, has_peer=True)
        vision = BenchmarkSpec("vision", {
            "teacher_model_name_or_path": digits_teacher.output_dir, "student_config": TINY_VISION_STUDENT,
            "dataset_name": "digits", "pooling": "mean", "teacher_pooling": "gap", "max_train_samples": 128,
            "per_device_train_batch_size": 32, "max_steps": 4, "learning_rate": 1e-3, "logging_steps": 2,
        }, num_queries=64, num_reference=96, teacher=digits_teacher)
        return {"text": text, "vision": vision}
    text_recipe = read_recipe("minilm-wordnet")
    vision_recipe = read_recipe("fashion-mnist")
    vision_recipe["teacher_model_name_or_path"] = fashion_teacher.output_dir
    for recipe in (text_recipe, vision_recipe):
        for name in ("output_dir", "losses", "loss_weights", "seed", "save_steps", "save_total_limit"):
            recipe.pop(name, None)
    if scale == "cpu":
        text_recipe.update(max_train_samples=3200, max_steps=50, per_device_train_batch_size=64, max_length=32,
                           logging_steps=10)
        vision_recipe.update(max_train_samples=7680, max_steps=60, per_device_train_batch_size=128, logging_steps=20)
        return {
            "text": BenchmarkSpec("text", text_recipe, num_queries=1000, num_reference=1000, has_peer=True),
            "vision": BenchmarkSpec("vision", vision_recipe, num_queries=1000, num_reference=2000,
                                    teacher=fashion_teacher, embedding_batch_size=256),
        }
    text_recipe.update(max_train_samples=None, num_train_epochs=1, per_device_train_batch_size=256, logging_steps=50)
    vision_recipe.update(max_train_samples=None, num_train_epochs=5, per_device_train_batch_size=256, logging_steps=50)
    return {
        "text": BenchmarkSpec("text", text_recipe, num_queries=5000, num_reference=5000, has_peer=True,
                              embedding_batch_size=256),
        "vision": BenchmarkSpec("vision", vision_recipe, num_queries=5000, num_reference=5000,
                                teacher=fashion_teacher, embedding_batch_size=512),
    }


def ensure_teacher(spec: TeacherSpec) -> None:
    """Train the vision teacher into ``spec.output_dir`` unless a checkpoint is already there."""
    if os.path.isfile(os.path.join(spec.output_dir, "config.json")):
        logger.info("using the teacher in %s", spec.output_dir)
        return
    logger.info("no teacher in %s: training one on %s", spec.output_dir, spec.dataset_name)
    arguments = TeacherTrainingArguments(
        output_dir=spec.output_dir, dataset_name=spec.dataset_name, report_to="none", save_strategy="no",
        disable_tqdm=True, **spec.training,
    )
    metrics = train_vision_teacher(arguments)
    logger.info("teacher in %s: test accuracy %.4f", spec.output_dir, metrics["test_accuracy"])


def run_config(spec: BenchmarkSpec, losses: Sequence[str], seed: int, output_dir: str) -> DistillationConfig:
    """The :class:`DistillationConfig` of one run: the benchmark's recipe with this loss, seed and folder."""
    fields = dict(spec.recipe)
    fields.update(RUN_OVERRIDES)
    fields["loss_kwargs"] = options_of_used_losses(fields.get("loss_kwargs"), losses)
    return DistillationConfig(output_dir=output_dir, losses=list(losses), seed=seed, **fields)


# --------------------------------------------------------------------------- measuring students


@dataclass
class HeldOutSample:
    """The held-out points every student of a benchmark is measured on, with the teacher's embeddings."""

    modality: str
    query_inputs: list[str] | np.ndarray  # texts, or images [N, H, W, C]
    query_labels: np.ndarray
    reference_inputs: list[str] | np.ndarray
    reference_labels: np.ndarray
    teacher_queries: np.ndarray  # [num_queries, d_t]
    teacher_reference: np.ndarray  # [num_reference, d_t]
    teacher_metrics: dict[str, float]
    student_processor: Any
    student_extractor: FeatureExtractor
    max_length: int
    batch_size: int

    def measure(self, student: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """Every metric of :func:`evaluate_embeddings` for ``student``, plus parameters and embeddings/s."""
        queries = embed(student, self.student_processor, self.query_inputs, self.student_extractor, self.modality,
                        self.batch_size, self.max_length, device)
        reference = embed(student, self.student_processor, self.reference_inputs, self.student_extractor,
                          self.modality, self.batch_size, self.max_length, device)
        metrics = evaluate_embeddings(
            reference.values, queries.values, self.reference_labels, self.query_labels,
            teacher_train=self.teacher_reference, teacher_test=self.teacher_queries,
        )
        metrics["parameters"] = count_parameters(student)
        points = len(queries.values) + len(reference.values)
        metrics["embeddings_per_second"] = points / (queries.seconds + reference.seconds)
        return {name: float(value) for name, value in metrics.items()}


def column_values(dataset: Any, column: str) -> list[str] | np.ndarray:
    """A column read once: an ``[N, ...]`` array for images, a list for text.

    ``dataset[column]`` is a lazy ``datasets`` column that converts rows to Python lists at every
    slice; batching over it would convert images pixel by pixel, once per batch.
    """
    values = dataset.with_format("numpy")[column][:]
    return values.tolist() if values.dtype.kind in "OUS" else values


def held_out_sample(spec: BenchmarkSpec, setup: DistillationSetup) -> HeldOutSample:
    """Queries and labelled reference from the eval split (fixed shuffle), embedded once by the teacher."""
    config = setup.config
    splits = load_splits(config.dataset_name, config.dataset_config_name)
    if config.eval_split not in splits:
        raise ValueError(f"eval_split={config.eval_split!r} is not a split of {config.dataset_name} ({list(splits)})")
    held_out = splits[config.eval_split]
    needed = spec.num_queries + spec.num_reference
    if len(held_out) < needed:
        raise ValueError(f"{spec.name}: the eval split has {len(held_out)} rows but num_queries + num_reference = "
                         f"{needed}; lower them")
    label_column = setup.collator.label_column
    if label_column is None:
        raise ValueError(f"{spec.name}: the benchmark needs class labels (kNN accuracy and the CE reference)")
    held_out = held_out.shuffle(seed=EVALUATION_SEED)
    input_column = setup.collator.input_column
    query_inputs = column_values(held_out.select(range(spec.num_queries)), input_column)
    reference_inputs = column_values(held_out.select(range(spec.num_queries, needed)), input_column)
    labels = held_out.select(range(needed)).with_format("numpy")[label_column][:]
    query_labels, reference_labels = labels[: spec.num_queries], labels[spec.num_queries :]
    student_extractor, teacher_extractor = setup.readout.student_embedding, setup.readout.teacher_embedding
    device = config.device
    teacher_queries = embed(setup.teacher, setup.collator.teacher_processor, query_inputs, teacher_extractor,
                            setup.modality, spec.embedding_batch_size, config.max_length, device)
    teacher_reference = embed(setup.teacher, setup.collator.teacher_processor, reference_inputs, teacher_extractor,
                              setup.modality, spec.embedding_batch_size, config.max_length, device)
    teacher_metrics = evaluate_embeddings(teacher_reference.values, teacher_queries.values, reference_labels,
                                          query_labels)
    teacher_metrics["parameters"] = count_parameters(setup.teacher)
    teacher_metrics["embeddings_per_second"] = needed / (teacher_queries.seconds + teacher_reference.seconds)
    return HeldOutSample(
        modality=setup.modality, query_inputs=query_inputs, query_labels=query_labels,
        reference_inputs=reference_inputs, reference_labels=reference_labels,
        teacher_queries=teacher_queries.values, teacher_reference=teacher_reference.values,
        teacher_metrics={name: float(value) for name, value in teacher_metrics.items()},
        student_processor=setup.collator.student_processor, student_extractor=student_extractor,
        max_length=config.max_length, batch_size=spec.embedding_batch_size,
    )


# --------------------------------------------------------------------------- the rows


@dataclass
class RunRecord:
    """One trained student: its row (loss or reference), seed, every metric and its cost."""

    row: str
    kind: str  # "distillation", "no_teacher" or "peer"
    seed: int
    metrics: dict[str, float]
    train_samples_per_second: float
    train_seconds: float  # training only (the peer: plus embedding its training texts with the teacher)
    wall_seconds: float  # everything: building the models, training, saving and measuring
    train_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def trained_samples(config: DistillationConfig, train_rows: int) -> int:
    """Examples the Trainer processes: steps x global batch, or epochs x rows (with dropped last batches)."""
    batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * max(1, config.world_size)
    if config.max_steps > 0:
        return config.max_steps * batch
    return int(math.ceil(config.num_train_epochs * (train_rows // batch) * batch))


def run_distillation_row(spec: BenchmarkSpec, loss: str, seed: int, run_dir: str, sample: HeldOutSample,
                         keep_model: bool) -> RunRecord:
    """Distil with ``losses=[loss]`` through :func:`run_distillation`, reload the saved student, measure it."""
    start = time.perf_counter()
    config = run_config(spec, [loss], seed, run_dir)
    set_seed(seed)  # the student's random parts and the heads start from the seed, as in every row
    result = run_distillation(config)
    student = AutoModel.from_pretrained(result.output_dir, use_safetensors=True)  # the saved artefact
    metrics = sample.measure(student, config.device)
    if not keep_model:
        remove_weights(result.output_dir)
    train = result.train_metrics
    return RunRecord(loss, "distillation", seed, metrics, float(train["train_samples_per_second"]),
                     float(train["train_runtime"]), time.perf_counter() - start, train.get("train_loss"))


class EmbeddingClassifier(nn.Module):
    """A student with a linear classification head on the embedding the benchmark measures.

    ``forward(student_inputs, labels=None) -> {"loss", "logits"}``: cross-entropy of the head's logits
    on the pooled features of ``extractor`` (``[B, d] -> [B, num_labels]``).
    """

    def __init__(self, student: PreTrainedModel, extractor: FeatureExtractor, dim: int, num_labels: int) -> None:
        super().__init__()
        self.student = student
        self.extractor = extractor
        self.head = nn.Linear(dim, num_labels)

    def forward(self, student_inputs: dict[str, torch.Tensor], labels: torch.Tensor | None = None) -> dict[str, Any]:
        outputs = self.student(**student_inputs, output_hidden_states=True)
        features = self.extractor(outputs, student_inputs.get("attention_mask")).values  # [B, d]
        logits = self.head(features)  # [B, num_labels]
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def run_no_teacher_row(spec: BenchmarkSpec, seed: int, run_dir: str, sample: HeldOutSample) -> RunRecord:
    """Train the same student (same init, data, steps, seed) with cross-entropy on the labels only."""
    start = time.perf_counter()
    config = run_config(spec, [feature_losses()[0]], seed, run_dir)
    set_seed(seed)
    setup = build_setup(config)  # the same student as the distillation rows (initialised from the teacher or seed)
    student_extractor = setup.readout.student_embedding
    collator = setup.collator
    probe = collator([setup.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        dim = student_extractor(setup.student(**probe["student_inputs"], output_hidden_states=True),
                                probe["student_inputs"].get("attention_mask")).dim
    num_labels = setup.train_dataset.features[collator.label_column].num_classes
    model = EmbeddingClassifier(setup.student, student_extractor, dim, num_labels)
    # The student's processor only: this row never runs the teacher.
    student_only = DistillationCollator(
        student_processor=collator.student_processor, teacher_processor=collator.student_processor,
        input_column=collator.input_column, modality=collator.modality, label_column=collator.label_column,
        max_length=collator.max_length,
    )
    trainer = Trainer(model=model, args=config, train_dataset=setup.train_dataset, data_collator=student_only)
    train = trainer.train().metrics
    metrics = sample.measure(setup.student, config.device)
    return RunRecord(NO_TEACHER_ROW, "no_teacher", seed, metrics, float(train["train_samples_per_second"]),
                     float(train["train_runtime"]), time.perf_counter() - start, train.get("train_loss"))


def run_peer_row(spec: BenchmarkSpec, seed: int, run_dir: str, sample: HeldOutSample) -> RunRecord:
    """sentence-transformers' MSE distillation of the same student on the same data, steps and seed.

    Its training time includes embedding the training texts with the teacher (which the other rows do
    inside their steps), so ``train_samples_per_second`` compares like with like.
    """
    start = time.perf_counter()
    config = run_config(spec, [feature_losses()[0]], seed, run_dir)
    set_seed(seed)
    setup = build_setup(config)
    if setup.modality != "text":
        raise ValueError("the sentence-transformers peer applies to text benchmarks only")
    teacher_extractor = setup.readout.teacher_embedding
    samples = trained_samples(config, len(setup.train_dataset))
    train_rows = setup.train_dataset.select(range(min(samples, len(setup.train_dataset))))
    texts = column_values(train_rows, setup.collator.input_column)
    teacher_embeddings = embed(setup.teacher, setup.collator.teacher_processor, texts, teacher_extractor, "text",
                               spec.embedding_batch_size, config.max_length, config.device)
    result = train_sentence_transformers_peer(
        setup.student, setup.collator.student_processor, texts, teacher_embeddings.values, config, run_dir,
        config.max_length,
    )
    metrics = sample.measure(result.student, config.device)
    shutil.rmtree(os.path.join(run_dir, "initial_student"), ignore_errors=True)
    train_seconds = float(result.train_metrics["train_runtime"]) + teacher_embeddings.seconds
    return RunRecord(PEER_ROW, "peer", seed, metrics, samples / train_seconds, train_seconds,
                     time.perf_counter() - start, result.train_metrics.get("train_loss"))


def remove_weights(output_dir: str) -> None:
    """Delete the saved student's weights (the benchmark keeps only its measurements)."""
    for name in os.listdir(output_dir):
        if name.endswith((".safetensors", ".bin", ".pt")):
            os.remove(os.path.join(output_dir, name))


# --------------------------------------------------------------------------- aggregation and reports


@dataclass
class Summary:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed) over ``n`` seeds."""

    mean: float
    std: float
    n: int

    def format(self) -> str:
        """``mean ± std``, both with the decimals that suit the mean."""
        return f"{format_number(self.mean)} ± {format_number(self.std, scale=self.mean)}"


def format_number(value: float, scale: float | None = None) -> str:
    """4 decimals below 10, 1 decimal below 1000, whole numbers with separators above (judged on ``scale``)."""
    if math.isnan(value):
        return "nan"
    magnitude = abs(value if scale is None or math.isnan(scale) else scale)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.4f}"


def summarise(values: Sequence[float]) -> Summary:
    """:class:`Summary` of one metric's values over seeds (NaNs propagate: a failed metric stays visible)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return Summary(float(array.mean()), std, len(array))


def aggregate_runs(runs: Sequence[RunRecord]) -> dict[str, dict[str, Summary]]:
    """``{row: {metric or speed column: Summary over the row's seeds}}``, rows in first-seen order."""
    grouped: dict[str, list[RunRecord]] = {}
    for run in runs:
        grouped.setdefault(run.row, []).append(run)
    summary: dict[str, dict[str, Summary]] = {}
    for row, row_runs in grouped.items():
        names = list(dict.fromkeys(name for run in row_runs for name in run.metrics))
        columns = {name: [run.metrics.get(name, float("nan")) for run in row_runs] for name in names}
        for column in SPEED_COLUMNS:
            columns[column] = [getattr(run, column) for run in row_runs]
        summary[row] = {name: summarise(values) for name, values in columns.items()}
    return summary


def metric_columns(summary: dict[str, dict[str, Summary]]) -> list[str]:
    """The headline metrics first, then every other metric as first seen, then the speed columns."""
    names = list(dict.fromkeys(name for row in summary.values() for name in row if name not in SPEED_COLUMNS))
    headline = [name for name in (KNN_METRIC, AGREEMENT_METRIC) if name in names]
    return headline + [name for name in names if name not in headline] + list(SPEED_COLUMNS)


def format_benchmark_table(
    summary: dict[str, dict[str, Summary]], teacher_metrics: dict[str, float] | None = None
) -> str:
    """A markdown table: one row per loss/reference (mean ± std over seeds), the teacher last.

    Example:
        >>> print(format_benchmark_table({"cka": {"knn_accuracy@10": Summary(0.5, 0.01, 3)}}))
        | loss / reference | seeds | knn_accuracy@10 | train_samples_per_second | train_seconds | wall_seconds |
        | --- | ---: | ---: | ---: | ---: | ---: |
        | cka | 3 | 0.5000 ± 0.0100 | - | - | - |
    """
    if not summary:
        raise ValueError("summary is empty: run at least one loss or reference")
    columns = metric_columns(summary)
    lines = ["| " + " | ".join(["loss / reference", "seeds", *columns]) + " |",
             "| " + " | ".join(["---", *("---:" for _ in range(len(columns) + 1))]) + " |"]
    for row, metrics in summary.items():
        seeds = max(value.n for value in metrics.values())
        cells = [metrics[name].format() if name in metrics else "-" for name in columns]
        lines.append("| " + " | ".join([row, str(seeds), *cells]) + " |")
    if teacher_metrics:
        cells = [format_number(teacher_metrics[name]) if name in teacher_metrics else "-" for name in columns]
        lines.append("| " + " | ".join(["teacher", "-", *cells]) + " |")
    return "\n".join(lines)


def plot_quality(summary: dict[str, dict[str, Summary]], path: str, title: str,
                 teacher_metrics: dict[str, float] | None = None) -> None:
    """Bars with error bars (std over seeds): kNN@10 accuracy and teacher-neighbour recall@10 per row."""
    from matplotlib.figure import Figure

    rows = list(summary)
    figure = Figure(figsize=(max(8.0, 1.1 * len(rows) + 3), 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, (KNN_METRIC, AGREEMENT_METRIC)):
        means = [summary[row][metric].mean if metric in summary[row] else np.nan for row in rows]
        stds = [summary[row][metric].std if metric in summary[row] else 0.0 for row in rows]
        colours = ["tab:grey" if row in (NO_TEACHER_ROW, PEER_ROW) else "tab:blue" for row in rows]
        axis.bar(range(len(rows)), means, yerr=stds, capsize=4, color=colours)
        if teacher_metrics and metric in teacher_metrics:
            axis.axhline(teacher_metrics[metric], color="tab:red", linestyle="--", label="teacher")
            axis.legend(loc="lower right")
        axis.set_xticks(range(len(rows)), rows, rotation=35, ha="right")
        axis.set_ylabel(metric)
        axis.set_title(metric)
    figure.suptitle(f"{title} (mean ± std over seeds; grey: references)")
    figure.savefig(path, dpi=120)


def plot_quality_vs_time(summary: dict[str, dict[str, Summary]], path: str, title: str) -> None:
    """Scatter of quality (kNN@10 accuracy, teacher-neighbour recall@10) against training seconds."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, (KNN_METRIC, AGREEMENT_METRIC)):
        for row, metrics in summary.items():
            if metric not in metrics:
                continue
            seconds, quality = metrics["train_seconds"], metrics[metric]
            marker = "s" if row in (NO_TEACHER_ROW, PEER_ROW) else "o"
            axis.errorbar(seconds.mean, quality.mean, xerr=seconds.std, yerr=quality.std, fmt=marker, capsize=3)
            axis.annotate(row, (seconds.mean, quality.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlabel("training time (s)")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{title}: quality vs training time (squares: references)")
    figure.savefig(path, dpi=120)


# --------------------------------------------------------------------------- running everything


@dataclass
class BenchmarkOptions:
    """What ``scripts/benchmark.py`` runs: benchmarks, losses, seeds, scale and folders."""

    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS),
                                  metadata={"help": f"Benchmarks to run, of {BENCHMARKS}."})
    losses: list[str] | None = field(
        default=None, metadata={"help": "Losses to compare (default: every feature loss of hf_pcoh.LOSSES)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2],
                             metadata={"help": "Seeds; each row runs once per seed."})
    scale: str = field(default="cpu", metadata={"help": "tiny (seconds, tests), cpu (under an hour on 2 CPU cores) "
                                                "or gpu (full size); see benchmarks.quality.benchmark_specs."})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the JSON, tables and plots go."})
    work_dir: str | None = field(default=None,
                                 metadata={"help": "Where runs write (default: outputs/benchmark-runs/SCALE)."})
    teachers_dir: str = field(default="benchmarks/teachers",
                              metadata={"help": "Where vision teachers are trained when missing, and read from."})
    references: bool = field(default=True, metadata={"help": "Also run the no-teacher CE and (text) the peer rows."})
    keep_models: bool = field(default=False, metadata={"help": "Keep each distilled student's weights in work_dir."})
    resume: bool = field(default=True, metadata={"help": "Reuse runs already in OUTPUT_DIR/<benchmark>.json made with "
                                                 "the same settings."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r}; use one of {SCALES}")
        for name in self.benchmarks:
            if name not in BENCHMARKS:
                raise ValueError(f"benchmarks: {unknown_name_message('benchmark', name, list(BENCHMARKS))}")
        for name in self.losses or []:
            if name not in LOSSES:
                raise ValueError(f"losses: {unknown_name_message('loss', name, list(LOSSES))}")
            if name in LOGIT_LOSSES:
                raise ValueError(f"losses: {name!r} compares logits, not features; choose among {feature_losses()}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} must be at least one seed, each once")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads} must be >= 1")
        if self.work_dir is None:
            self.work_dir = os.path.join("outputs", "benchmark-runs", self.scale)


@dataclass
class BenchmarkReport:
    """What one benchmark wrote: its runs, the summary and the paths of its files."""

    name: str
    runs: list[RunRecord]
    summary: dict[str, dict[str, Summary]]
    teacher_metrics: dict[str, float]
    files: dict[str, str]


def benchmark_settings(spec: BenchmarkSpec, scale: str) -> dict[str, Any]:
    """The settings a results file was produced with (runs are reused only when these agree)."""
    return json.loads(json.dumps({
        "scale": scale, "recipe": spec.recipe, "num_queries": spec.num_queries, "num_reference": spec.num_reference,
        "evaluation_seed": EVALUATION_SEED, "teacher": spec.teacher.__dict__ if spec.teacher else None,
    }, default=str, sort_keys=True))


def previous_runs(path: str, settings: dict[str, Any]) -> dict[tuple[str, int], RunRecord]:
    """Runs of an earlier results file with the same settings, by (row, seed)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as stream:
        previous = json.load(stream)
    if previous.get("settings") != settings:
        logger.info("%s was made with other settings: running everything again", path)
        return {}
    return {(run["row"], run["seed"]): RunRecord(**run) for run in previous.get("runs", [])}


def run_benchmark(spec: BenchmarkSpec, options: BenchmarkOptions,
                  progress: Callable[[str], None] | None = None) -> BenchmarkReport:
    """Train and measure every row x seed of one benchmark; write its JSON (after every run), table and plots."""
    os.makedirs(options.output_dir, exist_ok=True)
    if spec.teacher is not None:
        ensure_teacher(spec.teacher)
    losses = options.losses or feature_losses()
    work_dir = os.path.join(options.work_dir, spec.name)
    base = run_config(spec, [losses[0]], options.seeds[0], os.path.join(work_dir, "setup"))
    set_seed(options.seeds[0])
    sample = held_out_sample(spec, build_setup(base))
    rows: list[tuple[str, str]] = [(loss, "distillation") for loss in losses]
    if options.references:
        rows.append((NO_TEACHER_ROW, "no_teacher"))
        if spec.has_peer:
            rows.append((PEER_ROW, "peer"))
    settings = benchmark_settings(spec, options.scale)
    json_path = os.path.join(options.output_dir, f"{spec.name}.json")
    done = previous_runs(json_path, settings) if options.resume else {}
    runs: list[RunRecord] = []
    total = len(rows) * len(options.seeds)
    for row, kind in rows:
        for seed in options.seeds:
            if (row, seed) in done:
                runs.append(done[(row, seed)])
                continue
            run_dir = os.path.join(work_dir, row, f"seed{seed}")
            if kind == "distillation":
                record = run_distillation_row(spec, row, seed, run_dir, sample, options.keep_models)
            elif kind == "no_teacher":
                record = run_no_teacher_row(spec, seed, run_dir, sample)
            else:
                record = run_peer_row(spec, seed, run_dir, sample)
            runs.append(record)
            message = (f"{spec.name} [{len(runs)}/{total}] {row} seed {seed}: {KNN_METRIC} "
                       f"{record.metrics.get(KNN_METRIC, float('nan')):.4f}, {AGREEMENT_METRIC} "
                       f"{record.metrics.get(AGREEMENT_METRIC, float('nan')):.4f}, "
                       f"{record.train_samples_per_second:.1f} samples/s, {record.wall_seconds:.1f} s")
            logger.info(message)
            if progress is not None:
                progress(message)
            write_results(json_path, spec, options, settings, sample.teacher_metrics, runs)
    summary = aggregate_runs(runs)
    files = write_reports(spec, options, settings, sample.teacher_metrics, runs, summary)
    return BenchmarkReport(spec.name, runs, summary, sample.teacher_metrics, files)


def write_results(path: str, spec: BenchmarkSpec, options: BenchmarkOptions, settings: dict[str, Any],
                  teacher_metrics: dict[str, float], runs: list[RunRecord]) -> None:
    """``<benchmark>.json``: settings, environment, teacher, every run and the mean/std summary."""
    summary = aggregate_runs(runs)
    payload = {
        "benchmark": spec.name,
        "settings": settings,
        "environment": {
            "hf_pcoh_version": __version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
        },
        "seeds": list(options.seeds),
        "teacher": teacher_metrics,
        "runs": [run.to_dict() for run in runs],
        "summary": {row: {name: value.__dict__ for name, value in metrics.items()} for row, metrics in summary.items()},
    }
    write_json(path, payload)


def write_reports(spec: BenchmarkSpec, options: BenchmarkOptions, settings: dict[str, Any],
                  teacher_metrics: dict[str, float], runs: list[RunRecord],
                  summary: dict[str, dict[str, Summary]]) -> dict[str, str]:
    """Write the JSON, the markdown table and both plots; return their paths."""
    files = {name: os.path.join(options.output_dir, f"{spec.name}{suffix}") for name, suffix in (
        ("json", ".json"), ("table", ".md"), ("quality_plot", "_quality.png"), ("time_plot", "_quality_vs_time.png"))}
    write_results(files["json"], spec, options, settings, teacher_metrics, runs)
    recipe = spec.recipe
    teacher = recipe.get("teacher_model_name_or_path") or "a teacher built from teacher_config"
    if recipe.get("max_steps", -1) > 0:
        steps = f"{recipe['max_steps']} steps"
    else:
        steps = f"{recipe.get('num_train_epochs')} epoch(s)"
    lines = [
        f"# Benchmark: {spec.name} ({options.scale} scale)",
        "",
        f"Teacher {teacher}; data {recipe['dataset_name']} ({recipe.get('max_train_samples') or 'all'} training rows, "
        f"{steps} of {recipe['per_device_train_batch_size']}); measured on {spec.num_queries} held-out points "
        f"against {spec.num_reference} labelled held-out points. Mean ± std over seeds {list(options.seeds)}; "
        "`train_seconds` is training only, `wall_seconds` the whole run (models, training, measuring).",
        "",
        format_benchmark_table(summary, teacher_metrics),
        "",
        f"![quality]({os.path.basename(files['quality_plot'])})",
        f"![quality vs time]({os.path.basename(files['time_plot'])})",
        "",
    ]
    with open(files["table"], "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines))
    title = f"{spec.name} ({options.scale})"
    plot_quality(summary, files["quality_plot"], title, teacher_metrics)
    plot_quality_vs_time(summary, files["time_plot"], title)
    if os.path.realpath(options.output_dir) == os.path.realpath(COMMITTED_RESULTS):  # what docs quote
        with open(files["json"], encoding="utf-8") as stream:
            render_into_documents({f"quality_{spec.name}": quality_table(json.load(stream))})
    return files


# --------------------------------------------------------------------------- docs/benchmarks.md's tables

COMMITTED_RESULTS = REPOSITORY_ROOT / "benchmarks" / "results"
# (summary key, header) of docs/benchmarks.md's tables; the speed column last, never bold.
DOC_COLUMNS = (
    (KNN_METRIC, "10-NN acc."), ("knn_accuracy@1", "1-NN acc."), (AGREEMENT_METRIC, "teacher-neighbour recall@10"),
    ("dissimilarity_spearman", "dissimilarity Spearman"), ("perception_coherence", "perception coherence"),
)
REFERENCE_LABELS = {NO_TEACHER_ROW: "*no teacher (CE on labels)*", PEER_ROW: "*sentence-transformers MSELoss (peer)*"}


def parameter_count(parameters: float) -> str:
    """``22.7 M``, ``308 k``."""
    return f"{parameters / 1e6:.1f} M" if parameters >= 1e6 else f"{parameters / 1e3:.0f} k"


def quality_table(result: dict[str, Any]) -> str:
    """docs/benchmarks.md's table of one benchmark's result file, with its caption: mean ± std over seeds (3
    decimals), training seconds, the teacher last; bold: the best of each metric (and any within 0.001 of it) among
    the distilled students and the peer (the no-teacher reference learns the labels, not the teacher)."""
    summary, teacher = result["summary"], result["teacher"]
    competing = [row for row in summary if row != NO_TEACHER_ROW]
    best = {key: max(round(summary[row][key]["mean"], 3) for row in competing if key in summary[row])
            for key, _ in DOC_COLUMNS}

    def cell(row: str, key: str) -> str:
        value = summary[row][key]
        text = f"{value['mean']:.3f} ± {value['std']:.3f}"
        near_best = row != NO_TEACHER_ROW and round(best[key] - round(value["mean"], 3), 3) <= 0.001
        return f"**{text}**" if near_best else text

    lines = [f"Mean ± std over {len(result['seeds'])} seeds, {len(result['runs'])} runs:", "",
             "| loss / reference | " + " | ".join(header for _, header in DOC_COLUMNS) + " | training s |",
             "|---|" + "---:|" * (len(DOC_COLUMNS) + 1)]
    for row, figures in summary.items():
        label = REFERENCE_LABELS.get(row, f"`{row}`")
        cells = [cell(row, key) for key, _ in DOC_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {figures['train_seconds']['mean']:.1f} |")
    teacher_cells = [f"{teacher[key]:.3f}" if key in teacher else "—" for key, _ in DOC_COLUMNS]
    lines.append(f"| teacher ({parameter_count(teacher['parameters'])} parameters) | " + " | ".join(teacher_cells)
                 + " | — |")
    return "\n".join(lines)


def committed_blocks() -> dict[str, str]:
    """docs/benchmarks.md's tables rendered from the committed ``text.json`` and ``vision.json``."""
    blocks = {}
    for benchmark in BENCHMARKS:
        with open(COMMITTED_RESULTS / f"{benchmark}.json", encoding="utf-8") as stream:
            blocks[f"quality_{benchmark}"] = quality_table(json.load(stream))
    return blocks


def run_benchmarks(
    options: BenchmarkOptions, progress: Callable[[str], None] | None = None
) -> dict[str, BenchmarkReport]:
    """Every benchmark of ``options`` in turn; see :func:`run_benchmark`."""
    from threadpoolctl import threadpool_limits

    specs = benchmark_specs(options.scale, options.teachers_dir)
    torch_threads = torch.get_num_threads()
    if options.num_threads is not None:
        torch.set_num_threads(options.num_threads)
    try:
        # One BLAS thread for numpy/scipy (the probe, distances): their small problems gain nothing from
        # more, and a multi-threaded BLAS beside torch's threads on a busy CPU ran the probe 100x slower.
        with threadpool_limits(limits=1, user_api="blas"):
            return {name: run_benchmark(specs[name], options, progress) for name in options.benchmarks}
    finally:
        torch.set_num_threads(torch_threads)
