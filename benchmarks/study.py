"""The perception-coherence study: where the namesake loss wins, at budgets that decide.

A grid of *variants* (a loss or combination of losses with its options, the batch size, the student's
width, or a reference row: the sentence-transformers peer, CE on labels without a teacher) is run on
the two real benchmarks of :mod:`benchmarks.quality` at study budgets:

* ``text``: all-MiniLM-L6-v2 -> the 3-layer student of the ``minilm-wordnet`` recipe, the recipe's 16,000
  training glosses once (250 steps of 64; ``max_length`` 32), teacher features from a ``--teacher_cache``;
* ``vision``: the ResNet teacher trained here -> the recipe's 3-layer ViT, 600 steps of 128 (10x the
  quality benchmark's 60), 20,000 training images.

Every trained student is measured on three held-out sets, each under **cosine and euclidean**
geometry (neighbour recall, kNN, dissimilarity Spearman and empirical perception coherence):

* ``validation``: rows 2,000-3,999 (text) / 3,000-5,999 (vision) of the shuffled test split — settings
  are chosen here, never on ``test``;
* ``test``: rows 0-1,999 / 0-2,999 of the same shuffle (the quality benchmark's held-out sample);
* ``ood``: a corpus the student never saw — text: the one-line summaries of the Python standard
  library's docstrings (label-free: agreement metrics only); vision: scikit-learn's handwritten digits
  upscaled to 28x28 (agreement metrics and 10-NN on the digit labels).

Each run writes ``OUTPUT_DIR/<benchmark>/<variant>__seed<k>.json`` as soon as it ends, so a stopped
study resumes where it stopped (a file whose ``settings`` differ from the current ones is run again).
``report`` renders the tables and the plot from whatever files exist.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import random
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, set_seed

from benchmarks.quality import (
    EVALUATION_SEED, RUN_OVERRIDES, BenchmarkSpec, HeldOutSample, benchmark_specs, column_values, ensure_teacher,
    remove_weights, run_config, run_no_teacher_row, run_peer_row,
)
from hf_pcoh.config import DistillationConfig, options_of_used_losses
from hf_pcoh.data import load_splits
from hf_pcoh.evaluation import embed, evaluate_embeddings
from hf_pcoh.models import count_parameters
from hf_pcoh.artifacts import write_json
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.setup import build_setup

logger = logging.getLogger(__name__)

GEOMETRIES = ("cosine", "euclidean")
SPLITS = ("validation", "test", "ood")
# The metric every conclusion of the study is drawn on first, and its companions.
HEADLINE = "teacher_neighbour_recall@10"
TEXT_BATCH = 64
VISION_BATCH = 128
VISION_STEPS = 600


# --------------------------------------------------------------------------- what is run


@dataclass(frozen=True)
class Variant:
    """One row of the study: what is trained (losses and options, or a reference) and how."""

    name: str
    benchmark: str  # "text" or "vision"
    losses: tuple[str, ...] = ("perception_coherence",)
    loss_weights: tuple[float, ...] | None = None
    loss_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # DistillationConfig fields (batch size, student...)
    kind: str = "distillation"  # "distillation", "peer" or "no_teacher"
    group: str = "grid"  # what the row is about, for the tables

    def config_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"losses": list(self.losses), **self.overrides}
        if self.loss_weights is not None:
            fields["loss_weights"] = list(self.loss_weights)
        if self.loss_kwargs:
            fields["loss_kwargs"] = {name: dict(options) for name, options in self.loss_kwargs.items()}
        return fields


def pc(temperature: float = 0.1, dissimilarity: str = "euclidean", **options: Any) -> dict[str, dict[str, Any]]:
    """``loss_kwargs`` for perception coherence."""
    return {"perception_coherence": {"temperature": temperature, "dissimilarity": dissimilarity, **options}}


def batch_overrides(batch: int, base_batch: int, base_lr: float, base_steps: int | None = None) -> dict[str, Any]:
    """A batch size at equal epochs (``base_steps`` scaled down when the budget is in steps), the learning
    rate scaled by sqrt(batch / base_batch)."""
    overrides: dict[str, Any] = {"per_device_train_batch_size": batch,
                                 "learning_rate": base_lr * math.sqrt(batch / base_batch)}
    if base_steps is not None:
        overrides["max_steps"] = max(1, base_steps * base_batch // batch)
    return overrides


def study_variants(benchmark: str) -> list[Variant]:
    """The grid: perception coherence's options, its batch size and partners, and every other loss."""
    base_lr = 1e-4 if benchmark == "text" else 1e-3
    base_batch = TEXT_BATCH if benchmark == "text" else VISION_BATCH
    base_steps = None if benchmark == "text" else VISION_STEPS  # text: one epoch, whatever the batch
    rows: list[Variant] = []

    def add(name: str, group: str, **kwargs: Any) -> None:
        rows.append(Variant(name=name, benchmark=benchmark, group=group, **kwargs))

    for dissimilarity in ("euclidean", "cosine"):
        for temperature in (0.03, 0.1, 0.3, 1.0):
            add(f"pc_{dissimilarity[:3]}_t{temperature:g}", "pc options", loss_kwargs=pc(temperature, dissimilarity))
        add(f"pc_{dissimilarity[:3]}_t0.1_median", "pc options", loss_kwargs=pc(0.1, dissimilarity, scale="median"))
    for locality in (0.05, 0.2):
        add(f"pc_cos_t0.1_local{locality:g}", "pc local", loss_kwargs=pc(0.1, "cosine", locality=locality))
    for batch in (256, 1024):
        add(f"pc_cos_t0.1_b{batch}", "pc batch", loss_kwargs=pc(0.1, "cosine"),
            overrides=batch_overrides(batch, base_batch, base_lr, base_steps))
    for references in (128, 256):  # sampled references alone: the same batch and steps as the exact b1024 row
        add(f"pc_cos_t0.1_b1024_m{references}", "pc batch", loss_kwargs=pc(0.1, "cosine", num_references=references),
            overrides=batch_overrides(1024, base_batch, base_lr, base_steps))
    # The sorted (ramp-kernel) soft rank: at the base batch beside the exact rank, and where it makes large
    # batches cheap.
    add("pc_cos_t0.1_sorted", "pc soft rank", loss_kwargs=pc(0.1, "cosine", soft_rank="sorted"))
    for batch in (256, 1024):
        add(f"pc_cos_t0.1_b{batch}_sorted", "pc soft rank", loss_kwargs=pc(0.1, "cosine", soft_rank="sorted"),
            overrides=batch_overrides(batch, base_batch, base_lr, base_steps))
    for anchor in ("projected_mse", "procrustes"):
        for weight in (0.1, 0.3, 1.0):
            add(f"pc_cos_t0.1+{anchor}{weight:g}", "pc + anchor", losses=("perception_coherence", anchor),
                loss_weights=(1.0, weight), loss_kwargs=pc(0.1, "cosine"))
    for loss in ("projected_mse", "procrustes", "gram", "cka", "rkd_distance", "cospress"):
        add(loss, "other losses", losses=(loss,))
    # CosPress's map started at the identity (ours): with and without the recipe's LayerNorm.
    add("cospress_identity", "cospress map", losses=("cospress",),
        loss_kwargs={"cospress": {"map_init": "identity", "map_layer_norm": False}})
    add("cospress_identity_ln", "cospress map", losses=("cospress",), loss_kwargs={"cospress": {"map_init": "identity"}})
    add("no_teacher_ce", "references", kind="no_teacher")
    if benchmark == "text":
        add("sentence_transformers_mse", "references", kind="peer")
    narrow = narrow_student(benchmark)
    for name, kwargs in (("pc_cos_t0.1", {"loss_kwargs": pc(0.1, "cosine")}), ("pc_euc_t0.1", {"loss_kwargs": pc()}),
                         ("projected_mse", {"losses": ("projected_mse",)}), ("procrustes", {"losses": ("procrustes",)})):
        add(f"narrow_{name}", "narrow student", overrides=narrow, **kwargs)
    return rows


def narrow_student(benchmark: str) -> dict[str, Any]:
    """A student much narrower than the teacher, where matching absolute geometry is hardest."""
    if benchmark == "text":  # 3 BERT layers of width 128 (MiniLM: 384), randomly initialised
        return {"student_config": {"num_hidden_layers": 3, "hidden_size": 128, "num_attention_heads": 4,
                                   "intermediate_size": 512},
                "student_init_from_teacher": False, "learning_rate": 5e-4}
    return {"student_config": {"model_type": "vit", "image_size": 28, "patch_size": 7, "num_channels": 1,
                               "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
                               "intermediate_size": 32}}


def study_specs(teachers_dir: str) -> dict[str, BenchmarkSpec]:
    """The quality benchmark's ``cpu`` specs at study budgets (see the module docstring)."""
    specs = benchmark_specs("cpu", teachers_dir)
    specs["text"].recipe.update(max_train_samples=16000, max_steps=-1, num_train_epochs=1,
                                per_device_train_batch_size=TEXT_BATCH, max_length=32, logging_steps=50)
    specs["vision"].recipe.update(max_train_samples=20000, max_steps=VISION_STEPS, per_device_train_batch_size=VISION_BATCH,
                                  logging_steps=100)
    for spec in specs.values():  # each variant sets its own losses' options: a recipe's must not leak into them
        spec.recipe.pop("loss_kwargs", None)
    specs["text"].num_queries, specs["text"].num_reference = 1000, 1000
    specs["vision"].num_queries, specs["vision"].num_reference = 1000, 2000
    return specs


# --------------------------------------------------------------------------- where it is measured


@dataclass
class HeldOutSet:
    """Inputs (and labels, when the set has them) with the teacher's embeddings of them."""

    queries: list[str] | np.ndarray
    reference: list[str] | np.ndarray
    query_labels: np.ndarray | None
    reference_labels: np.ndarray | None
    teacher_queries: np.ndarray
    teacher_reference: np.ndarray


def python_docstring_summaries(limit: int, seed: int = 0) -> list[str]:
    """First lines of the Python standard library's docstrings (real English, not glosses): ``limit`` of them.

    Read with ``ast`` (nothing is imported); test suites and duplicates are left out.
    """
    root = sysconfig.get_paths()["stdlib"]
    summaries: set[str] = set()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("test", "tests", "idlelib", "site-packages",
                                                                   "lib2to3", "__pycache__"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as stream:
                    tree = ast.parse(stream.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node)
                    line = text.strip().splitlines()[0].strip() if text else ""
                    if len(line.split()) >= 5 and not line.startswith((">>>", ":", "@")):
                        summaries.add(line)
    ordered = sorted(summaries)
    random.Random(seed).shuffle(ordered)
    if len(ordered) < limit:
        raise ValueError(f"only {len(ordered)} docstring summaries in {root}; lower the OOD size")
    return ordered[:limit]


def upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as 28x28 grey uint8 images (nearest-neighbour upscaling)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)  # [N, 8, 8]
    rows = (np.arange(28) * 8) // 28
    return small[:, rows][:, :, rows][..., None], digits.target.astype(np.int64)


def held_out_sets(spec: BenchmarkSpec, setup: Any) -> dict[str, HeldOutSet]:
    """validation / test from the shuffled test split, and the out-of-domain set; each embedded by the teacher."""
    config = setup.config
    held_out = load_splits(config.dataset_name, config.dataset_config_name)[config.eval_split]
    held_out = held_out.shuffle(seed=EVALUATION_SEED)
    size = spec.num_queries + spec.num_reference
    column, label_column = setup.collator.input_column, setup.collator.label_column
    raw: dict[str, tuple[Any, Any, Any, Any]] = {}
    for name, start in (("test", 0), ("validation", size)):
        rows = held_out.select(range(start, start + size))
        values = column_values(rows, column)
        labels = rows.with_format("numpy")[label_column][:]
        raw[name] = (values[: spec.num_queries], values[spec.num_queries:], labels[: spec.num_queries],
                     labels[spec.num_queries:])
    if setup.modality == "text":
        texts = python_docstring_summaries(2000)
        raw["ood"] = (texts[:1000], texts[1000:], None, None)
    else:
        images, labels = upscaled_digits()
        raw["ood"] = (images[:797], images[797:], labels[:797], labels[797:])
    teacher_extractor = setup.readout.teacher_embedding
    sets = {}
    for name, (queries, reference, query_labels, reference_labels) in raw.items():
        teacher = [embed(setup.teacher, setup.collator.teacher_processor, values, teacher_extractor, setup.modality,
                         spec.embedding_batch_size, config.max_length, config.device).values
                   for values in (queries, reference)]
        sets[name] = HeldOutSet(queries, reference, query_labels, reference_labels, teacher[0], teacher[1])
    return sets


def measure(student: torch.nn.Module, sets: dict[str, HeldOutSet], setup: Any, spec: BenchmarkSpec) -> dict[str, Any]:
    """``{split: {metric/geometry: value}}`` for one student, both geometries, plus its size."""
    config = setup.config
    student_extractor = setup.readout.student_embedding
    results: dict[str, Any] = {"parameters": count_parameters(student)}
    for name, held_out in sets.items():
        queries, reference = (embed(student, setup.collator.student_processor, values, student_extractor,
                                    setup.modality, spec.embedding_batch_size, config.max_length, config.device).values
                              for values in (held_out.queries, held_out.reference))
        values = evaluate_embeddings(
            reference, queries, held_out.reference_labels, held_out.query_labels,
            teacher_train=held_out.teacher_reference, teacher_test=held_out.teacher_queries, geometries=GEOMETRIES,
        )
        metrics = {key: float(value) for key, value in values.items()
                   if "/" in key or key == "linear_probe_accuracy"}  # the unsuffixed aliases left out
        results[name] = metrics
    return results


# --------------------------------------------------------------------------- running and resuming


def run_settings(spec: BenchmarkSpec, variant: Variant, seed: int) -> dict[str, Any]:
    """Everything a run's result depends on; a stored run is reused only when these agree."""
    return json.loads(json.dumps({"recipe": spec.recipe, "variant": asdict(variant), "seed": seed,
                                  "num_queries": spec.num_queries, "num_reference": spec.num_reference,
                                  "evaluation_seed": EVALUATION_SEED, "splits": list(SPLITS)},
                                 sort_keys=True, default=str))


def result_path(output_dir: str, variant: Variant, seed: int) -> str:
    return os.path.join(output_dir, variant.benchmark, f"{variant.name}__seed{seed}.json")


# Recipe fields every variant sets itself (its losses' options, the cache folder): a built-in recipe changing
# them (as the study's own conclusions changed them) leaves the runs already stored valid.
FIELDS_SET_BY_VARIANTS = ("loss_kwargs", "teacher_cache")


def comparable(settings: dict[str, Any]) -> dict[str, Any]:
    recipe = {key: value for key, value in settings.get("recipe", {}).items() if key not in FIELDS_SET_BY_VARIANTS}
    return {**settings, "recipe": recipe}


def stored_result(path: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        stored = json.load(stream)
    return stored if comparable(stored.get("settings", {})) == comparable(settings) else None


def variant_config(spec: BenchmarkSpec, variant: Variant, seed: int, run_dir: str, cache_dir: str) -> DistillationConfig:
    """The benchmark's recipe, the variant's fields on top, teacher features from ``cache_dir``."""
    fields = {**spec.recipe, **RUN_OVERRIDES, **variant.config_fields(), "teacher_cache": cache_dir}
    fields["loss_kwargs"] = options_of_used_losses(fields.get("loss_kwargs"), variant.losses)
    return DistillationConfig(output_dir=run_dir, seed=seed, **fields)


class StudySample(HeldOutSample):
    """The quality benchmark's reference rows measure through ``sample.measure``: here it measures the study's sets."""

    def __init__(self, sets: dict[str, HeldOutSet], setup: Any, spec: BenchmarkSpec) -> None:
        self.sets, self.setup, self.spec = sets, setup, spec
        self.last: dict[str, Any] | None = None

    def measure(self, student: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        self.last = measure(student, self.sets, self.setup, self.spec)
        return {}


def train_variant(spec: BenchmarkSpec, variant: Variant, seed: int, run_dir: str, cache_dir: str,
                  sets: dict[str, HeldOutSet], setup: Any) -> dict[str, Any]:
    """Train one (variant, seed) and measure it; the peer and no-teacher rows reuse the quality benchmark's."""
    start = time.perf_counter()
    if variant.kind != "distillation":
        sample = StudySample(sets, setup, spec)
        runner = run_peer_row if variant.kind == "peer" else run_no_teacher_row
        record = runner(spec, seed, run_dir, sample)
        metrics = sample.last
        train_seconds, samples_per_second = record.train_seconds, record.train_samples_per_second
    else:
        config = variant_config(spec, variant, seed, run_dir, cache_dir)
        set_seed(seed)
        result = run_distillation(config)
        student = AutoModel.from_pretrained(result.output_dir, use_safetensors=True)
        metrics = measure(student, sets, setup, spec)
        remove_weights(result.output_dir)
        train_seconds = float(result.train_metrics["train_runtime"])
        samples_per_second = float(result.train_metrics["train_samples_per_second"])
    return {"metrics": metrics, "train_seconds": train_seconds, "train_samples_per_second": samples_per_second,
            "wall_seconds": time.perf_counter() - start}


@dataclass
class StudyOptions:
    benchmarks: Sequence[str] = ("text", "vision")
    seeds: Sequence[int] = (0,)
    variants: Sequence[str] | None = None  # names; default: the whole grid
    output_dir: str = "benchmarks/results/study"
    work_dir: str = "outputs/study"
    teachers_dir: str = "benchmarks/teachers"
    shard: tuple[int, int] = (0, 1)  # (index, count): this process runs every count-th pending run


def pending_runs(options: StudyOptions, specs: dict[str, BenchmarkSpec]) -> list[tuple[Variant, int]]:
    runs = []
    for benchmark in options.benchmarks:
        grid = {variant.name: variant for variant in study_variants(benchmark)}
        names = options.variants or list(grid)
        for name in names:
            if name not in grid:
                continue
            for seed in options.seeds:
                variant = grid[name]
                settings = run_settings(specs[benchmark], variant, seed)
                if stored_result(result_path(options.output_dir, variant, seed), settings) is None:
                    runs.append((variant, seed))
    index, count = options.shard
    return [run for position, run in enumerate(runs) if position % count == index]


def run_study(options: StudyOptions) -> list[str]:
    """Run every pending (variant, seed) of this shard, writing one JSON per run; return the paths written."""
    specs = study_specs(options.teachers_dir)
    runs = pending_runs(options, specs)
    logger.info("study: %d runs to do in this shard", len(runs))
    written: list[str] = []
    contexts: dict[str, tuple[Any, dict[str, HeldOutSet]]] = {}
    for number, (variant, seed) in enumerate(runs, 1):
        spec = specs[variant.benchmark]
        if variant.benchmark not in contexts:
            if spec.teacher is not None:
                ensure_teacher(spec.teacher)
            base = run_config(spec, ["projected_mse"], 0, os.path.join(options.work_dir, variant.benchmark, "setup"))
            setup = build_setup(base)
            contexts[variant.benchmark] = (setup, held_out_sets(spec, setup))
        setup, sets = contexts[variant.benchmark]
        run_dir = os.path.join(options.work_dir, variant.benchmark, variant.name, f"seed{seed}")
        # One cache folder per shard: two processes must not build the same cache at once.
        cache_dir = os.path.join(options.work_dir, f"teacher_cache_shard{options.shard[0]}")
        outcome = train_variant(spec, variant, seed, run_dir, cache_dir, sets, setup)
        path = result_path(options.output_dir, variant, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, {"benchmark": variant.benchmark, "variant": variant.name, "group": variant.group,
                          "seed": seed, "settings": run_settings(spec, variant, seed), **outcome,
                          "torch_threads": torch.get_num_threads()})
        test = outcome["metrics"]["test"]
        logger.info("[%d/%d] %s %s seed %d: val recall@10 cos %.4f, test recall@10 cos %.4f, %.0f s",
                    number, len(runs), variant.benchmark, variant.name, seed,
                    outcome["metrics"]["validation"].get(f"{HEADLINE}/cosine", float("nan")),
                    test.get(f"{HEADLINE}/cosine", float("nan")), outcome["wall_seconds"])
        written.append(path)
    return written


# --------------------------------------------------------------------------- tables and plot

# The columns of the study's tables: (metric key, header). Neighbour metrics are cosine (how sentence
# embeddings and retrieval use them); Spearman is shown under both geometries.
TABLE_COLUMNS = (
    ("teacher_neighbour_recall@10/cosine", "nbr recall@10 cos"),
    ("teacher_neighbour_recall@10/euclidean", "nbr recall@10 euc"),
    ("dissimilarity_spearman/cosine", "Spearman cos"),
    ("dissimilarity_spearman/euclidean", "Spearman euc"),
    ("knn_accuracy@10/cosine", "10-NN cos"),
    ("perception_coherence/cosine", "coherence cos"),
)
OOD_COLUMNS = (
    ("teacher_neighbour_recall@10/cosine", "OOD nbr recall@10 cos"),
    ("dissimilarity_spearman/cosine", "OOD Spearman cos"),
)


def load_results(output_dir: str, benchmark: str) -> list[dict[str, Any]]:
    """Every stored run of one benchmark."""
    folder = os.path.join(output_dir, benchmark)
    if not os.path.isdir(folder):
        return []
    results = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as stream:
                results.append(json.load(stream))
    return results


@dataclass
class RowSummary:
    variant: str
    group: str
    seeds: list[int]
    means: dict[str, float]
    stds: dict[str, float]
    train_seconds: float


def summarise_rows(results: list[dict[str, Any]], split: str, seeds: Sequence[int] | None = None) -> list[RowSummary]:
    """Mean and standard deviation (ddof 1) over seeds of every metric of ``split``, one row per variant."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if seeds is None or result["seed"] in seeds:
            by_variant.setdefault(result["variant"], []).append(result)
    rows = []
    for variant, runs in by_variant.items():
        keys = sorted({key for run in runs for key in run["metrics"][split]})
        values = {key: [run["metrics"][split][key] for run in runs if key in run["metrics"][split]] for key in keys}
        rows.append(RowSummary(
            variant, runs[0]["group"], sorted(run["seed"] for run in runs),
            {key: float(np.mean(v)) for key, v in values.items()},
            {key: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for key, v in values.items()},
            float(np.mean([run["train_seconds"] for run in runs])),
        ))
    return rows


def format_cell(row: RowSummary, key: str, best: float | None) -> str:
    if key not in row.means:
        return "—"
    text = f"{row.means[key]:.3f}"
    if not math.isnan(row.stds.get(key, float("nan"))):
        text += f" ± {row.stds[key]:.3f}"
    return f"**{text}**" if best is not None and abs(row.means[key] - best) < 1e-12 else text


def format_study_table(rows: list[RowSummary], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS,
                       ood: list[RowSummary] | None = None) -> str:
    """A markdown table, one row per variant (grouped), best value of each column in bold."""
    ood_by_variant = {row.variant: row for row in ood or []}
    headers = ["variant", "seeds", *(header for _, header in columns)]
    if ood is not None:
        headers += [header for _, header in OOD_COLUMNS]
    headers.append("train s")
    best = {key: max((row.means[key] for row in rows if key in row.means), default=None) for key, _ in columns}
    ood_best = {key: max((row.means[key] for row in ood or [] if key in row.means), default=None) for key, _ in OOD_COLUMNS}
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" + "---:|" * (len(headers) - 1)]
    for row in sorted(rows, key=lambda r: (r.group, r.variant)):
        cells = [f"`{row.variant}`", str(len(row.seeds)), *(format_cell(row, key, best[key]) for key, _ in columns)]
        if ood is not None:
            other = ood_by_variant.get(row.variant)
            cells += [format_cell(other, key, ood_best[key]) if other else "—" for key, _ in OOD_COLUMNS]
        cells.append(f"{row.train_seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_study(rows: list[RowSummary], path: str, title: str, x_key: str = "dissimilarity_spearman/cosine",
               y_key: str = "teacher_neighbour_recall@10/cosine") -> None:
    """Each variant as a point (x: Spearman, y: neighbour recall, both cosine), error bars over seeds, by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 6))
    groups = sorted({row.group for row in rows})
    colours = plt.get_cmap("tab10")
    for index, group in enumerate(groups):
        members = [row for row in rows if row.group == group and x_key in row.means and y_key in row.means]
        xs = [row.means[x_key] for row in members]
        ys = [row.means[y_key] for row in members]
        xerr = [0 if math.isnan(row.stds[x_key]) else row.stds[x_key] for row in members]
        yerr = [0 if math.isnan(row.stds[y_key]) else row.stds[y_key] for row in members]
        axes.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", color=colours(index), label=group, capsize=2)
        for row, x, y in zip(members, xs, ys):
            axes.annotate(row.variant, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    axes.set_xlabel(x_key)
    axes.set_ylabel(y_key)
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_study_report(output_dir: str, benchmarks: Sequence[str] = ("text", "vision")) -> dict[str, str]:
    """``study_<benchmark>.md`` (validation: every variant; test: the variants run with 3+ seeds) and a plot each."""
    files = {}
    for benchmark in benchmarks:
        results = load_results(output_dir, benchmark)
        if not results:
            continue
        validation = summarise_rows([r for r in results if r["seed"] == 0], "validation")
        full = [r for r in results if sum(o["variant"] == r["variant"] for o in results) >= 3]
        test = summarise_rows(full, "test")
        ood = summarise_rows(full, "ood")
        table_path = os.path.join(output_dir, f"study_{benchmark}.md")
        plot_path = os.path.join(output_dir, f"study_{benchmark}.png")
        lines = [f"# Study: {benchmark}", "",
                 "## Screening on the validation split (seed 0; settings are chosen here)", "",
                 format_study_table(validation), "",
                 "## Test split and out-of-domain set (variants run with 3 seeds; mean ± std)", "",
                 format_study_table(test, ood=ood) if test else "(no variant has 3 seeds yet)", "",
                 f"![{benchmark}]({os.path.basename(plot_path)})", ""]
        with open(table_path, "w", encoding="utf-8") as stream:
            stream.write("\n".join(lines))
        plot_study(test or validation, plot_path, f"{benchmark}: {'test, 3 seeds' if test else 'validation, seed 0'}")
        files[benchmark] = table_path
    return files
