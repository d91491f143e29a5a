"""End to end beside the sentence-transformers recipe, on the same job, on this machine.

The job: distil ``sentence-transformers/all-MiniLM-L6-v2`` into a 2-layer BERT student initialised from
its layers 0 and 5, on ``num_glosses`` WordNet glosses (the rows ``hf_pcoh`` trains on: the training
split shuffled with the seed), for one epoch in batches of ``batch_size``, regressing the teacher's
sentence embedding. Each job is timed from nothing loaded to a trained student saved on disk:

* ``sentence_transformers``: the library's own distillation recipe (its "Model Distillation" example):
  the teacher ``SentenceTransformer.encode``\\ s the training texts once (sorted by length, as ``encode``
  does), the student is the teacher with only layers 0 and 5 kept, and ``SentenceTransformerTrainer``
  trains it with ``losses.MSELoss`` on those embeddings; then ``student.save``.
* ``hf_pcoh``: :func:`hf_pcoh.pipeline.run_distillation` with ``projected_mse`` and the teacher live in
  every step (the library's default), the same student, data, batch, epoch, learning rate and seed.
* ``hf_pcoh_cache_auto``: the same with ``teacher_cache: auto`` (the teacher's features computed once,
  in order of length, before training), from an empty cache, so the time includes computing them.
  This is what the ``minilm-wordnet`` recipe does, so it is the job run by default (:func:`recipe_variant`).
* ``hf_pcoh_group_by_length`` (not run unless asked): the same with ``train_sampling_strategy:
  group_by_length`` (batches of texts of similar length; it changes which examples share a batch).

The table gives each job's wall time, its samples/s (trained samples / wall time), the ratio of its
samples/s to the sentence-transformers recipe's (above 1: faster), the seconds of ``Trainer.train``
alone, and the student's agreement with the teacher on ``held_out`` glosses of the test split:
teacher-neighbour recall@10 and dissimilarity Spearman, both with cosine
(:func:`hf_pcoh.evaluation.evaluate_embeddings`); every student and the teacher are embedded by
``SentenceTransformer(folder).encode`` (an hf_pcoh student is saved as a sentence-transformers model).
With ``rounds`` > 1 the jobs alternate (ABBA: each round reverses the order) and the median wall time
is reported. ``scripts/bench_end_to_end.py`` is the command line. Written to the committed file
(``benchmarks/results/end_to_end.json``), the JSON also re-renders docs/benchmarks.md's table
(:func:`end_to_end_table`); ``tests/test_rendered_tables_all.py`` fails when the docs differ from the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmarks.provenance import REPOSITORY_ROOT
from benchmarks.rendered_tables import render_into_documents
from hf_pcoh import DistillationConfig, __version__
from hf_pcoh.artifacts import write_json
from hf_pcoh.data import load_splits
from hf_pcoh.evaluation import evaluate_embeddings
from hf_pcoh.models import resolve_checkpoint
from hf_pcoh.pipeline import run_distillation

logger = logging.getLogger(__name__)

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
DATASET = "wordnet_glosses"
SENTENCE_TRANSFORMERS_JOB = "sentence_transformers"
# The hf_pcoh jobs: the DistillationConfig fields each sets beyond the shared job.
HF_PCOH_VARIANTS: dict[str, dict[str, Any]] = {
    "hf_pcoh": {},
    "hf_pcoh_cache_auto": {"teacher_cache": "auto"},
    "hf_pcoh_group_by_length": {"train_sampling_strategy": "group_by_length"},
}
RECALL = "teacher_neighbour_recall@10/cosine"
SPEARMAN = "dissimilarity_spearman/cosine"
# --smoke: sizes for a test (about a minute on 2 CPU cores).
SMOKE_SIZES = {"num_glosses": 64, "batch_size": 16, "held_out": 48, "max_length": 32}
DEFAULT_OUTPUT = "benchmarks/results/end_to_end.json"
SMOKE_OUTPUT = "benchmarks/results/end_to_end_smoke.json"


def recipe_variant() -> str:
    """The hf_pcoh job the ``minilm-wordnet`` recipe runs: with the teacher cache when it sets one."""
    from hf_pcoh.recipes import read_recipe

    return "hf_pcoh_cache_auto" if read_recipe("minilm-wordnet").get("teacher_cache") == "auto" else "hf_pcoh"


@dataclass
class EndToEndOptions:
    """What ``scripts/bench_end_to_end.py`` runs (defaults: under 15 minutes on 2 CPU cores)."""

    num_glosses: int = field(default=20000, metadata={"help": "Training glosses (one epoch over them)."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size of every job (and of encode)."})
    held_out: int = field(default=2000, metadata={"help": "Test-split glosses the students are compared with the "
                                                  "teacher on."})
    max_length: int = field(default=128, metadata={"help": "Tokens kept per gloss, in every job."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of every job."})
    variants: list[str] = field(
        default_factory=lambda: [recipe_variant()],
        metadata={"help": f"hf_pcoh jobs beside the sentence-transformers recipe, of {list(HF_PCOH_VARIANTS)} "
                  "(default: the one the minilm-wordnet recipe runs)."})
    rounds: int = field(default=1, metadata={"help": "Rounds of every job, alternating their order (median wall "
                                             "time reported)."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    seed: int = field(default=0, metadata={"help": "Seed of the data shuffle and of every job."})
    smoke: bool = field(default=False, metadata={"help": f"Tiny sizes for a test ({SMOKE_SIZES}); they replace "
                                                 "the size options."})
    output: str | None = field(default=None, metadata={"help": f"JSON results (default {DEFAULT_OUTPUT}, or "
                                                       f"{SMOKE_OUTPUT} with --smoke)."})
    work_dir: str | None = field(default=None, metadata={"help": "Where the students are written (default: a "
                                                         "temporary folder, removed at the end)."})

    def __post_init__(self) -> None:
        if self.smoke:
            for name, value in SMOKE_SIZES.items():
                setattr(self, name, value)
        for name in self.variants:
            if name not in HF_PCOH_VARIANTS:
                raise ValueError(f"variants: {name!r} is not one of {list(HF_PCOH_VARIANTS)}")
        if not self.variants:
            raise ValueError(f"variants is empty; name at least one of {list(HF_PCOH_VARIANTS)}")
        for name in ("num_glosses", "batch_size", "held_out", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_glosses < self.batch_size:
            raise ValueError(f"num_glosses={self.num_glosses} is fewer than one batch of {self.batch_size}")
        if self.held_out <= 10:
            raise ValueError(f"held_out={self.held_out}: recall@10 needs more than 10 glosses")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1")
        if self.output is None:
            self.output = SMOKE_OUTPUT if self.smoke else DEFAULT_OUTPUT

    @property
    def trained_samples(self) -> int:
        """Examples each job trains on: whole batches of one epoch (the last incomplete one is dropped)."""
        return (self.num_glosses // self.batch_size) * self.batch_size


@dataclass
class JobRun:
    """One job, one round: its times and its student's agreement with the teacher."""

    job: str
    round: int
    wall_seconds: float  # from nothing loaded to the trained student saved
    train_seconds: float  # Trainer.train alone
    samples: int
    metrics: dict[str, float]

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.wall_seconds


@dataclass
class JobSummary:
    """A job over its rounds: the median wall time, and the mean of the rest."""

    job: str
    wall_seconds: float
    train_seconds: float
    samples_per_second: float
    ratio_to_sentence_transformers: float  # samples/s over the recipe's: above 1, faster
    recall_at_10: float
    spearman: float
    rounds: int


# --------------------------------------------------------------------------- the data


def training_texts(options: EndToEndOptions) -> list[str]:
    """The glosses every job trains on: the rows hf_pcoh's setup takes (training split, shuffled with the seed)."""
    train = load_splits(DATASET)["train"].shuffle(seed=options.seed)
    return list(train.select(range(min(options.num_glosses, len(train))))["text"])


def held_out_texts(options: EndToEndOptions) -> list[str]:
    """Test-split glosses that no job trains on."""
    test = load_splits(DATASET)["test"].shuffle(seed=0)
    return list(test.select(range(min(options.held_out, len(test))))["text"])


# --------------------------------------------------------------------------- the jobs


def sentence_transformer(folder: str, options: EndToEndOptions) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=options.device)
    model.max_seq_length = options.max_length
    return model


def run_sentence_transformers_job(options: EndToEndOptions, run_dir: str) -> tuple[float, float, str]:
    """The library's distillation recipe: encode once, keep teacher layers 0 and 5, MSELoss. Returns
    (wall seconds, Trainer.train seconds, the student's folder)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    start = time.perf_counter()
    teacher_path = resolve_checkpoint(TEACHER)
    teacher = sentence_transformer(teacher_path, options)
    texts = training_texts(options)
    targets = teacher.encode(texts, batch_size=options.batch_size, convert_to_numpy=True, show_progress_bar=False)
    student = sentence_transformer(teacher_path, options)
    backbone = student[0].auto_model
    backbone.encoder.layer = torch.nn.ModuleList([backbone.encoder.layer[index] for index in (0, 5)])
    backbone.config.num_hidden_layers = 2
    train_dataset = Dataset.from_dict({"sentence": texts, "label": targets.tolist()})
    arguments = SentenceTransformerTrainingArguments(
        output_dir=run_dir, per_device_train_batch_size=options.batch_size, num_train_epochs=1,
        learning_rate=options.learning_rate, seed=options.seed, dataloader_drop_last=True, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_steps=50, use_cpu=options.device == "cpu",
    )
    trainer = SentenceTransformerTrainer(model=student, args=arguments, train_dataset=train_dataset,
                                         loss=losses.MSELoss(student))
    train_seconds = float(trainer.train().metrics["train_runtime"])
    student_dir = os.path.join(run_dir, "student")
    student.save(student_dir)
    return time.perf_counter() - start, train_seconds, student_dir


def hf_pcoh_config(options: EndToEndOptions, variant: str, run_dir: str) -> DistillationConfig:
    """The same job as a DistillationConfig: MiniLM -> 2 layers from its layers 0 and 5, projected MSE."""
    return DistillationConfig(
        output_dir=run_dir, overwrite_output_dir=True, teacher_model_name_or_path=TEACHER,
        student_config={"num_hidden_layers": 2}, student_init_from_teacher=True, student_init_layer_map=[0, 5],
        dataset_name=DATASET, max_train_samples=options.num_glosses, losses=["projected_mse"],
        per_device_train_batch_size=options.batch_size, num_train_epochs=1, learning_rate=options.learning_rate,
        max_length=options.max_length, seed=options.seed, save_strategy="no", evaluate_after_training=False,
        report_to="none", disable_tqdm=True, logging_steps=50, use_cpu=options.device == "cpu",
        **HF_PCOH_VARIANTS[variant],
    )


@contextlib.contextmanager
def empty_datasets_cache(folder: str) -> Iterator[None]:
    """``HF_DATASETS_CACHE`` pointed at an empty ``folder``: ``teacher_cache: auto`` computes its features anew."""
    import datasets

    saved = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = folder
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = saved


def run_hf_pcoh_job(options: EndToEndOptions, variant: str, run_dir: str) -> tuple[float, float, str]:
    """:func:`run_distillation` of the job. Returns (wall seconds, Trainer.train seconds, the student's folder)."""
    with empty_datasets_cache(os.path.join(run_dir, "hf_datasets_cache")):
        start = time.perf_counter()
        result = run_distillation(hf_pcoh_config(options, variant, run_dir))
        wall = time.perf_counter() - start
    return wall, float(result.train_metrics["train_runtime"]), result.output_dir


def agreement_with_teacher(student_dir: str, held_out: list[str], teacher_embeddings: np.ndarray,
                           options: EndToEndOptions) -> dict[str, float]:
    """Teacher-neighbour recall@10 and dissimilarity Spearman (cosine) of a saved student on the held-out glosses."""
    student = sentence_transformer(student_dir, options)
    embeddings = student.encode(held_out, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
    metrics = evaluate_embeddings(embeddings, embeddings, teacher_train=teacher_embeddings,
                                  teacher_test=teacher_embeddings, ks=(10,), geometries=("cosine",))
    return {RECALL: float(metrics[RECALL]), SPEARMAN: float(metrics[SPEARMAN])}


def job_order(options: EndToEndOptions, round_index: int) -> list[str]:
    """The jobs of a round: the recipe first, then the hf_pcoh variants; every other round reversed (ABBA)."""
    jobs = [SENTENCE_TRANSFORMERS_JOB, *options.variants]
    return jobs if round_index % 2 == 0 else jobs[::-1]


def run_job(job: str, options: EndToEndOptions, run_dir: str) -> tuple[float, float, str]:
    if job == SENTENCE_TRANSFORMERS_JOB:
        return run_sentence_transformers_job(options, run_dir)
    return run_hf_pcoh_job(options, job, run_dir)


# --------------------------------------------------------------------------- summary and table


def summarise(runs: list[JobRun]) -> list[JobSummary]:
    """One summary per job, in first-run order; the ratio is of samples/s at the median wall times."""
    jobs = list(dict.fromkeys(run.job for run in runs))
    by_job = {job: [run for run in runs if run.job == job] for job in jobs}
    speed = {job: job_runs[0].samples / statistics.median(run.wall_seconds for run in job_runs)
             for job, job_runs in by_job.items()}
    reference = speed.get(SENTENCE_TRANSFORMERS_JOB)
    summaries = []
    for job, job_runs in by_job.items():
        summaries.append(JobSummary(
            job=job,
            wall_seconds=statistics.median(run.wall_seconds for run in job_runs),
            train_seconds=statistics.median(run.train_seconds for run in job_runs),
            samples_per_second=speed[job],
            ratio_to_sentence_transformers=speed[job] / reference if reference else float("nan"),
            recall_at_10=float(np.mean([run.metrics[RECALL] for run in job_runs])),
            spearman=float(np.mean([run.metrics[SPEARMAN] for run in job_runs])),
            rounds=len(job_runs),
        ))
    return summaries


TABLE_HEADER = ("| job | wall time (s) | samples/s | samples/s ÷ sentence-transformers | Trainer.train (s) | "
                "teacher-neighbour recall@10 (cosine) | dissimilarity Spearman (cosine) |")


def markdown_table(summaries: list[JobSummary]) -> str:
    """The results as a markdown table, one row per job."""
    lines = [TABLE_HEADER, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for summary in summaries:
        lines.append(
            f"| {summary.job} | {summary.wall_seconds:.1f} | {summary.samples_per_second:.1f} | "
            f"{summary.ratio_to_sentence_transformers:.2f} | {summary.train_seconds:.1f} | "
            f"{summary.recall_at_10:.4f} | {summary.spearman:.4f} |"
        )
    return "\n".join(lines)


def describe_setting(options: EndToEndOptions) -> str:
    return (f"{TEACHER} -> 2 layers (teacher layers 0 and 5) on {options.num_glosses} WordNet glosses, one epoch "
            f"of {options.batch_size} ({options.trained_samples} samples), max_length {options.max_length}; agreement on "
            f"{options.held_out} test glosses; {options.device}, {torch.get_num_threads()} torch thread(s), "
            f"{options.rounds} round(s)")


# --------------------------------------------------------------------------- running it


@dataclass
class EndToEndReport:
    summaries: list[JobSummary]
    runs: list[JobRun]
    table: str
    setting: str
    output: str


def run_end_to_end(options: EndToEndOptions, progress: Callable[[str], None] | None = None) -> EndToEndReport:
    """Every job x round, each student measured against the teacher; the table and ``options.output`` (JSON)."""
    from threadpoolctl import threadpool_limits

    saved_threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        with contextlib.ExitStack() as stack:
            work_dir = options.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="end_to_end_"))
            # One BLAS thread for numpy/scipy in the metrics, as benchmarks.quality does.
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
            held_out = held_out_texts(options)
            teacher = sentence_transformer(resolve_checkpoint(TEACHER), options)
            teacher_embeddings = teacher.encode(held_out, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
            del teacher
            runs: list[JobRun] = []
            for round_index in range(options.rounds):
                for job in job_order(options, round_index):
                    run_dir = os.path.join(work_dir, f"round{round_index}", job)
                    wall, train_seconds, student_dir = run_job(job, options, run_dir)
                    metrics = agreement_with_teacher(student_dir, held_out, teacher_embeddings, options)
                    run = JobRun(job, round_index, wall, train_seconds, options.trained_samples, metrics)
                    runs.append(run)
                    message = (f"round {round_index} {job}: {wall:.1f} s, {run.samples_per_second:.1f} samples/s, "
                               f"recall@10 {metrics[RECALL]:.4f}, Spearman {metrics[SPEARMAN]:.4f}")
                    logger.info(message)
                    if progress is not None:
                        progress(message)
            setting = describe_setting(options)
    finally:
        torch.set_num_threads(saved_threads)
    summaries = summarise(runs)
    table = markdown_table(summaries)
    os.makedirs(os.path.dirname(os.path.abspath(options.output)), exist_ok=True)
    write_json(options.output, {
        "setting": setting,
        "options": dataclasses.asdict(options),
        "environment": {
            "hf_pcoh_version": __version__, "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "runs": [{**dataclasses.asdict(run), "samples_per_second": run.samples_per_second} for run in runs],
        "summary": [dataclasses.asdict(summary) for summary in summaries],
        "table": table,
    })
    if os.path.realpath(options.output) == os.path.realpath(COMMITTED_RESULT):  # what README and docs quote
        with open(options.output, encoding="utf-8") as stream:
            render_into_documents({"end_to_end": end_to_end_table(json.load(stream))})
    return EndToEndReport(summaries, runs, table, setting, options.output)


# --------------------------------------------------------------------------- README's and docs' figures

COMMITTED_RESULT = REPOSITORY_ROOT / DEFAULT_OUTPUT
JOB_LABELS = {
    SENTENCE_TRANSFORMERS_JOB: "sentence-transformers recipe (`encode` once, `SentenceTransformerTrainer` + `MSELoss`)",
    "hf_pcoh": "hf_pcoh, the teacher live in every step (the library's default without a recipe)",
    "hf_pcoh_cache_auto": "hf_pcoh, `teacher_cache: auto` (the `minilm-wordnet` recipe's setting)",
    "hf_pcoh_group_by_length": "hf_pcoh, `train_sampling_strategy: group_by_length`",
}


def end_to_end_table(result: dict[str, Any]) -> str:
    """docs/benchmarks.md's table of the result file: one row per job (medians over rounds), the ratio of an
    hf_pcoh job in bold."""
    rounds = result["options"]["rounds"]
    lines = [f"| job | wall time (s), median of {rounds} | samples/s | samples/s ÷ sentence-transformers | "
             "Trainer.train (s) | teacher-neighbour recall@10 (cosine) | dissimilarity Spearman (cosine) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for job in result["summary"]:
        ratio = f"{job['ratio_to_sentence_transformers']:.2f}"
        if job["job"] != SENTENCE_TRANSFORMERS_JOB:
            ratio = f"**{ratio}**"
        lines.append(f"| {JOB_LABELS.get(job['job'], job['job'])} | {job['wall_seconds']:.1f} | "
                     f"{job['samples_per_second']:.1f} | {ratio} | {job['train_seconds']:.1f} | "
                     f"{job['recall_at_10']:.4f} | {job['spearman']:.4f} |")
    return "\n".join(lines)


def committed_blocks() -> dict[str, str]:
    with open(COMMITTED_RESULT, encoding="utf-8") as stream:
        return {"end_to_end": end_to_end_table(json.load(stream))}


def quoted_figures() -> dict[str, list[str]]:
    """The figures README's and docs/benchmarks.md's prose quote from the committed file, by document."""
    with open(COMMITTED_RESULT, encoding="utf-8") as stream:
        result = json.load(stream)
    reference, job = result["summary"][0], result["summary"][1]
    rounds: dict[int, dict[str, float]] = {}
    for run in result["runs"]:
        rounds.setdefault(run["round"], {})[run["job"]] = run["wall_seconds"]
    per_round = [f"{times[job['job']]:.1f} s against {times[reference['job']]:.1f} s"
                 for _, times in sorted(rounds.items())]
    return {
        "README.md": [f"takes {job['wall_seconds']:.1f} s against {reference['wall_seconds']:.1f} s "
                      f"({job['ratio_to_sentence_transformers']:.2f}x the samples/s"],
        "docs/benchmarks.md": [f"round 1: {per_round[0]}; round 2, order reversed: {per_round[1]}"],
    }
