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

Each run writes ``OUTPUT_DIR/<benchmark>/<variant>__seed<k>.json`` as soon as it ends, with its ``settings`` and
its ``provenance`` (git commit and dirty flag, the versions of torch, transformers, accelerate, datasets, hf_pcoh and
Python, and the corpus: data set and rows used), so a stopped study resumes where it stopped. A stored run is run
again when its settings differ from the current ones, or its versions or corpus do (a file without provenance
counts as differing); the commit is recorded but not compared. ``StudyOptions.reuse_any_version``
(``scripts/study.py run --reuse_any_version``) compares the settings alone.

``report`` renders the tables and the plot from the files of the variants the grid defines now
(:func:`study_variants`); files of variants no longer in it are named below the table. It also renders the study's
blocks of README and docs/study.md (:func:`committed_blocks`; ``tests/test_rendered_tables_all.py`` compares them
with the committed files).

The experiment registered in docs/study.md ("Registered before it runs") is a group of its own,
:func:`registered_variants` (names ``reg_*``, text only): run by name only (``--variants``), never by a plain ``run``,
shown in a screening table of its own and in none of the grid's tables. Its rows train the ``minilm-wordnet`` recipe
as it ships — ``max_length`` 64, which the run's measurement uses too, and 250 steps whatever the batch.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, set_seed

from benchmarks.neighbour_batches import teacher_neighbour_batches
from benchmarks.provenance import REPOSITORY_ROOT, describe_machine
from benchmarks.quality import (
    EVALUATION_SEED, RUN_OVERRIDES, BenchmarkSpec, HeldOutSample, benchmark_specs, column_values, ensure_teacher,
    remove_weights, run_config, run_no_teacher_row, run_peer_row,
)
from benchmarks.rendered_tables import render_into_documents
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
# The out-of-domain sets (see the module docstring): what they are and how many rows.
OOD_TEXTS = 2000
OOD_CORPORA = {"text": {"name": "Python standard library docstring summaries", "rows": OOD_TEXTS},
               "vision": {"name": "scikit-learn digits upscaled to 28x28", "rows": 1797}}
# The provenance a stored run must share with the current one to be reused (the commit is recorded, not compared).
COMPARED_VERSIONS = ("torch", "transformers", "accelerate", "datasets", "hf_pcoh", "python")
COMMITTED_RESULTS = REPOSITORY_ROOT / "benchmarks" / "results" / "study"


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
    # registered arm 5: this share of every batch is teacher neighbours of a few seeds (benchmarks/neighbour_batches.py)
    neighbour_fraction: float | None = None

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


# The registered experiment (docs/study.md, "Registered before it runs"): the minilm-wordnet recipe as it ships
# (max_length 64; the study's other text rows use 32), 250 steps of 64 (the 16,000 glosses once), and rows that
# change the batch keep the 250 steps (equal steps, not epochs: the glosses are then seen B / 64 times).
REGISTERED_PREFIX = "reg_"
REGISTERED_MAX_LENGTH = 64
REGISTERED_STEPS = 250
REGISTERED_DECAYS_PER_RANK = (0.1, 0.3)  # lambda' of two-sided locality, per integer rank
REGISTERED_TOP_K = (10, 30)
REGISTERED_BATCHES = (256, 512, 1024)
# Arm 4's rows from this batch on run the student on length-sorted chunks of TEXT_BATCH (hf_pcoh.length_chunks):
# unchunked, a B = 512 step took about 3 times a B = 256 one here, and B = 1,024 did not fit a session.
CHUNKED_FROM_BATCH = 512
REGISTERED_MIXTURE_WEIGHTS = (0.1, 0.3)
REGISTERED_NEIGHBOUR_FRACTIONS = (0.25, 0.5)
# The anchors the best two candidates are added to, with their loss options.
REGISTERED_ANCHORS = {"projected_mse": ("projected_mse", {}),
                      "cospress_identity_ln": ("cospress", {"cospress": {"map_init": "identity"}})}


def registered_pc(temperature: float = 0.1, **options: Any) -> dict[str, dict[str, Any]]:
    """``loss_kwargs`` of the registration's ``pc``: cosine perception coherence with the sorted soft rank."""
    return pc(temperature, "cosine", soft_rank="sorted", **options)


def registered_candidates(batch: int = TEXT_BATCH) -> dict[str, dict[str, dict[str, Any]]]:
    """Candidates 1-3 of the registration, ``name -> loss_kwargs``: two-sided locality (its decay ``lambda'`` per
    integer rank is ``locality = 1 / ((B - 2) lambda')``, see ``hf_pcoh/losses/perception_coherence.py``), top-k,
    sharper ranks."""
    candidates = {f"pc_two_sided{decay:g}": registered_pc(locality=1.0 / ((batch - 2) * decay), locality_sides="both")
                  for decay in REGISTERED_DECAYS_PER_RANK}
    candidates.update({f"pc_top{k}": registered_pc(top_k=k) for k in REGISTERED_TOP_K})
    candidates.update({f"pc_t{temperature:g}": registered_pc(temperature) for temperature in (0.03, 0.05)})
    candidates["pc_t0.05_hard"] = registered_pc(0.05, hard_teacher_ranks=True)
    return candidates


def add_controls_and_mixtures(add: Callable[..., None], anchors: dict[str, tuple[str, dict[str, Any]]],
                              candidates: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Arms 6 and 7 through ``add(name, group, **variant_fields)``: each anchor alone (a control), and each candidate
    beside it at every weight of :data:`REGISTERED_MIXTURE_WEIGHTS` (the anchor at weight 1)."""
    for anchor, (loss, anchor_kwargs) in anchors.items():
        add(anchor, "controls", losses=(loss,), loss_kwargs=anchor_kwargs)
        for name, loss_kwargs in candidates.items():
            for weight in REGISTERED_MIXTURE_WEIGHTS:
                add(f"{anchor}+{name}_w{weight:g}", "mixtures", losses=(loss, "perception_coherence"),
                    loss_weights=(1.0, weight), loss_kwargs={**anchor_kwargs, **loss_kwargs})


def registered_variants(benchmark: str) -> list[Variant]:
    """The registered experiment's rows (``reg_`` + the names below); on text at its setting
    (:data:`REGISTERED_MAX_LENGTH`, :data:`REGISTERED_STEPS` steps):

    1-3. ``pc_two_sided{lambda'}``, ``pc_top{k}``, ``pc_t{tau}``, ``pc_t0.05_hard`` (:func:`registered_candidates`);
    4. ``pc_b{B}`` and ``projected_mse_b{B}``, B in 256, 512, 1024 (learning rate x sqrt(B/64), 250 steps);
    5. ``{candidate}_nbr{f}`` and ``projected_mse_nbr{f}``: teacher-neighbour batches, neighbour fraction f in
       0.25, 0.5 (:mod:`benchmarks.neighbour_batches`) — every candidate has its rows, the best runs by name;
    6. ``{anchor}+{candidate}_w{w}``: a candidate of 1-3 at weight w in 0.1, 0.3 beside the anchor (projected MSE or
       CosPress with the identity map and the recipe's LayerNorm) at weight 1 — every candidate has its rows, so
       the best two, chosen by the screening, run by name;
    7. controls ``projected_mse`` and ``cospress_identity_ln`` (the recipe itself);

    and ``pc_t0.1``, the plain ``pc`` at the setting: a reference row, not a candidate (the choice rule passes it
    over). Vision: :func:`registered_vision_variants`.
    """
    if benchmark == "vision":
        return registered_vision_variants()
    setting = {"max_length": REGISTERED_MAX_LENGTH, "max_steps": REGISTERED_STEPS}
    rows: list[Variant] = []

    def add(name: str, group: str, **kwargs: Any) -> None:
        overrides = {**setting, **kwargs.pop("overrides", {})}
        rows.append(Variant(name=REGISTERED_PREFIX + name, benchmark=benchmark, group=f"registered: {group}",
                            overrides=overrides, **kwargs))

    candidates = registered_candidates()
    for name, loss_kwargs in candidates.items():
        options = loss_kwargs["perception_coherence"]
        group = ("two-sided locality" if "locality_sides" in options else "top-k" if "top_k" in options
                 else "sharper ranks")
        add(name, group, loss_kwargs=loss_kwargs)
    for batch in REGISTERED_BATCHES:
        overrides = batch_overrides(batch, TEXT_BATCH, 1e-4)  # no base_steps: the 250 steps stay
        if batch >= CHUNKED_FROM_BATCH:  # the same features up to rounding, a fraction of the padding (docs/study.md)
            overrides["student_forward_chunk_size"] = TEXT_BATCH
        add(f"pc_b{batch}", "batch at equal steps", loss_kwargs=registered_pc(), overrides=overrides)
        add(f"projected_mse_b{batch}", "batch at equal steps", losses=("projected_mse",), overrides=overrides)
    for fraction in REGISTERED_NEIGHBOUR_FRACTIONS:  # arm 5: on MSE, and on each candidate (the best runs by name)
        add(f"projected_mse_nbr{fraction:g}", "teacher-neighbour batches", losses=("projected_mse",),
            neighbour_fraction=fraction)
        for name, loss_kwargs in candidates.items():
            add(f"{name}_nbr{fraction:g}", "teacher-neighbour batches", loss_kwargs=loss_kwargs,
                neighbour_fraction=fraction)
    add_controls_and_mixtures(add, REGISTERED_ANCHORS, candidates)
    add("pc_t0.1", "reference (not a candidate)", loss_kwargs=registered_pc())
    return rows


def registered_vision_variants() -> list[Variant]:
    """The registration's vision check: every text row of 1-3, 6 and 7 under the same name at the study's vision
    setting (600 steps of 128, the ``fashion-mnist`` student), run by name for the finalists at seed 0 (validation).

    Two-sided locality keeps its decay per rank (``locality`` from B = 128). The CosPress control has its learned
    map (the default): the vision student is narrower than the teacher (64 against 128 features), so an identity
    start would keep only the teacher's first 64 coordinates. Teacher-neighbour batches (5) and larger batches (4)
    have no vision rows.
    """
    rows: list[Variant] = []
    candidates = registered_candidates(VISION_BATCH)
    anchors = {"projected_mse": ("projected_mse", {}), "cospress_identity_ln": ("cospress", {})}

    def add(name: str, group: str, **kwargs: Any) -> None:
        rows.append(Variant(name=REGISTERED_PREFIX + name, benchmark="vision", group=f"registered: {group}", **kwargs))

    for name, loss_kwargs in candidates.items():
        add(name, "vision check", loss_kwargs=loss_kwargs)
    add_controls_and_mixtures(add, anchors, candidates)
    return rows


def registered_screening_names(benchmark: str = "text") -> list[str]:
    """The rows of the registered screening (seed 0): every candidate of 1-4 and both controls — not the mixtures
    nor the teacher-neighbour batches, which wait for the best candidates, nor the reference row."""
    waiting = ("registered: mixtures", "registered: teacher-neighbour batches",
               "registered: reference (not a candidate)")
    return [variant.name for variant in registered_variants(benchmark) if variant.group not in waiting]


def known_variants(benchmark: str) -> dict[str, Variant]:
    """Every variant a run may name: the grid's and the registered experiment's, by name."""
    return {variant.name: variant for variant in (*study_variants(benchmark), *registered_variants(benchmark))}


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
        texts = python_docstring_summaries(OOD_TEXTS)
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
    described = asdict(variant)
    if described["neighbour_fraction"] is None:  # uniform batches: described as before the option existed
        del described["neighbour_fraction"]
    return json.loads(json.dumps({"recipe": spec.recipe, "variant": described, "seed": seed,
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


def corpus_description(spec: BenchmarkSpec, benchmark: str) -> dict[str, Any]:
    """The data a run of ``benchmark`` reads: the data set, the rows used of each split, the out-of-domain set."""
    recipe = spec.recipe
    held_out_rows = spec.num_queries + spec.num_reference
    return {"dataset_name": recipe["dataset_name"], "dataset_config_name": recipe.get("dataset_config_name"),
            "train_split": recipe.get("train_split", "train"), "train_rows": recipe.get("max_train_samples"),
            "held_out_split": recipe.get("eval_split", "test"),
            "held_out_rows": {"test": held_out_rows, "validation": held_out_rows},
            "ood": OOD_CORPORA[benchmark]}


def run_provenance(spec: BenchmarkSpec, benchmark: str) -> dict[str, Any]:
    """Where a run's figures come from: machine, versions, Python, commit and dirty flag, and the corpus."""
    return json.loads(json.dumps({**describe_machine("cpu"), "corpus": corpus_description(spec, benchmark)},
                                 sort_keys=True, default=str))


def compared_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """The part of a provenance that decides reuse: the versions, Python and the corpus (not the commit)."""
    return {**{key: provenance.get(key) for key in COMPARED_VERSIONS}, "corpus": provenance.get("corpus")}


def why_stale(stored: dict[str, Any], settings: dict[str, Any], provenance: dict[str, Any] | None,
              reuse_any_version: bool = False) -> str | None:
    """Why a stored run must be run again (None: it is reused).

    The settings must agree; unless ``reuse_any_version``, so must the versions and the corpus of its provenance
    (``provenance`` is the current one) — a run stored without provenance differs. The git commit never counts.
    """
    if comparable(stored.get("settings", {})) != comparable(settings):
        return "its settings differ"
    if reuse_any_version:
        return None
    if "provenance" not in stored:
        return "it has no provenance (versions and corpus unknown)"
    if provenance is None:
        raise ValueError("the current provenance is needed to compare a stored run's versions and corpus "
                         "(or reuse_any_version=True)")
    before, now = compared_provenance(stored["provenance"]), compared_provenance(provenance)
    differing = [key for key in now if before.get(key) != now[key]]
    return f"its {', '.join(differing)} differ" if differing else None


def stored_result(path: str, settings: dict[str, Any], provenance: dict[str, Any] | None = None,
                  reuse_any_version: bool = False) -> dict[str, Any] | None:
    """The run stored at ``path`` when it can be reused (:func:`why_stale`), else None."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        stored = json.load(stream)
    reason = why_stale(stored, settings, provenance, reuse_any_version)
    if reason is not None:
        logger.info("%s is run again: %s", path, reason)
        return None
    return stored


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


def measurement_spec(spec: BenchmarkSpec, variant: Variant) -> BenchmarkSpec:
    """The spec a variant is measured under: the benchmark's, with the variant's own ``max_length`` when it sets one
    (the registered rows train and are measured at the recipe's 64 tokens; the teacher's held-out embeddings too)."""
    max_length = variant.overrides.get("max_length")
    if max_length is None or max_length == spec.recipe.get("max_length"):
        return spec
    return dataclasses.replace(spec, recipe={**spec.recipe, "max_length": max_length})


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
        batches = (teacher_neighbour_batches(variant.neighbour_fraction) if variant.neighbour_fraction is not None
                   else contextlib.nullcontext())
        with batches:
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
    reuse_any_version: bool = False  # reuse stored runs whatever their versions and corpus (settings still compared)


def pending_runs(options: StudyOptions, specs: dict[str, BenchmarkSpec],
                 provenance: dict[str, dict[str, Any]] | None = None) -> list[tuple[Variant, int]]:
    """The (variant, seed) of this shard without a reusable stored run; ``provenance``: the current one per
    benchmark (default: :func:`run_provenance`)."""
    if provenance is None and not options.reuse_any_version:
        provenance = {benchmark: run_provenance(specs[benchmark], benchmark) for benchmark in options.benchmarks}
    runs = []
    for benchmark in options.benchmarks:
        current = provenance.get(benchmark) if provenance else None
        known = known_variants(benchmark)
        names = options.variants or [variant.name for variant in study_variants(benchmark)]  # registered: by name only
        for name in names:
            if name not in known:
                continue
            for seed in options.seeds:
                variant = known[name]
                settings = run_settings(specs[benchmark], variant, seed)
                path = result_path(options.output_dir, variant, seed)
                if stored_result(path, settings, current, options.reuse_any_version) is None:
                    runs.append((variant, seed))
    index, count = options.shard
    return [run for position, run in enumerate(runs) if position % count == index]


def run_study(options: StudyOptions) -> list[str]:
    """Run every pending (variant, seed) of this shard, writing one JSON per run; return the paths written."""
    specs = study_specs(options.teachers_dir)
    provenance = {benchmark: run_provenance(specs[benchmark], benchmark) for benchmark in options.benchmarks}
    runs = pending_runs(options, specs, provenance)
    logger.info("study: %d runs to do in this shard", len(runs))
    written: list[str] = []
    contexts: dict[tuple[str, Any], tuple[Any, dict[str, HeldOutSet]]] = {}
    for number, (variant, seed) in enumerate(runs, 1):
        spec = specs[variant.benchmark]
        measured = measurement_spec(spec, variant)
        context = (variant.benchmark, measured.recipe.get("max_length"))
        if context not in contexts:
            if spec.teacher is not None:
                ensure_teacher(spec.teacher)
            folder = "setup" if measured is spec else f"setup_max_length{context[1]}"
            base = run_config(measured, ["projected_mse"], 0, os.path.join(options.work_dir, variant.benchmark, folder))
            setup = build_setup(base)
            contexts[context] = (setup, held_out_sets(measured, setup))
        setup, sets = contexts[context]
        run_dir = os.path.join(options.work_dir, variant.benchmark, variant.name, f"seed{seed}")
        # One cache folder per shard: two processes must not build the same cache at once.
        cache_dir = os.path.join(options.work_dir, f"teacher_cache_shard{options.shard[0]}")
        outcome = train_variant(spec, variant, seed, run_dir, cache_dir, sets, setup)
        path = result_path(options.output_dir, variant, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, {"benchmark": variant.benchmark, "variant": variant.name, "group": variant.group,
                          "seed": seed, "settings": run_settings(spec, variant, seed), **outcome,
                          "torch_threads": torch.get_num_threads(),
                          # re-read: the commit and dirty flag of this moment, versions and corpus as compared
                          "provenance": run_provenance(spec, variant.benchmark)})
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


def grid_results(results: list[dict[str, Any]], benchmark: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The runs of the variants :func:`study_variants` defines now, and the names of the other variants stored
    (the registered experiment's apart: :func:`registered_results`)."""
    grid = {variant.name for variant in study_variants(benchmark)}
    registered = {variant.name for variant in registered_variants(benchmark)}
    current = [result for result in results if result["variant"] in grid]
    others = sorted({result["variant"] for result in results if result["variant"] not in grid | registered})
    return current, others


def registered_results(results: list[dict[str, Any]], benchmark: str) -> list[dict[str, Any]]:
    """The runs of the registered experiment's variants (:func:`registered_variants`)."""
    registered = {variant.name for variant in registered_variants(benchmark)}
    return [result for result in results if result["variant"] in registered]


def three_seed_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the variants run with 3 or more seeds (those reported on test)."""
    return [r for r in results if sum(o["variant"] == r["variant"] for o in results) >= 3]


def write_study_report(output_dir: str, benchmarks: Sequence[str] = ("text", "vision")) -> dict[str, str]:
    """``study_<benchmark>.md`` (validation: every variant of the current grid; test: those run with 3+ seeds) and a
    plot each; from the committed folder, the study's blocks of README and docs/study.md too."""
    files = {}
    for benchmark in benchmarks:
        stored = load_results(output_dir, benchmark)
        results, others = grid_results(stored, benchmark)
        registered = [result for result in registered_results(stored, benchmark) if result["seed"] == 0]
        if not results:
            continue
        validation = summarise_rows([r for r in results if r["seed"] == 0], "validation")
        full = three_seed_results(results)
        test = summarise_rows(full, "test")
        ood = summarise_rows(full, "ood")
        table_path = os.path.join(output_dir, f"study_{benchmark}.md")
        plot_path = os.path.join(output_dir, f"study_{benchmark}.png")
        lines = [f"# Study: {benchmark}", "",
                 "## Screening on the validation split (seed 0; settings are chosen here)", "",
                 format_study_table(validation), ""]
        if others:
            lines += [f"not in the current grid: {', '.join(others)}", ""]
        lines += ["## Test split and out-of-domain set (variants run with 3 seeds; mean ± std)", "",
                  format_study_table(test, ood=ood) if test else "(no variant has 3 seeds yet)", "",
                  f"![{benchmark}]({os.path.basename(plot_path)})", ""]
        if registered:
            lines += ["## The registered experiment (docs/study.md): screening on the validation split (seed 0)", "",
                      format_study_table(summarise_rows(registered, "validation")), ""]
        with open(table_path, "w", encoding="utf-8") as stream:
            stream.write("\n".join(lines))
        plot_study(test or validation, plot_path, f"{benchmark}: {'test, 3 seeds' if test else 'validation, seed 0'}")
        files[benchmark] = table_path
    if files and os.path.realpath(output_dir) == os.path.realpath(COMMITTED_RESULTS):
        # README and docs quote the committed runs only: a study written elsewhere leaves them alone
        for document, names in render_into_documents(rendered_blocks(output_dir)).items():
            logger.info("%s: rendered %s", document, ", ".join(names))
        from benchmarks import registered_study  # it imports this module

        try:
            registered = registered_study.rendered_blocks(output_dir)
        except ValueError as error:  # the registered experiment still running: its blocks wait
            logger.warning("the registered experiment's blocks are not rendered yet: %s", error)
        else:
            for document, names in render_into_documents(registered).items():
                logger.info("%s: rendered %s", document, ", ".join(names))
    return files


# --------------------------------------------------------------------------- README's and docs' blocks

# docs/study.md's test tables: the finalists of each benchmark, in the order the text discusses them, with a note.
STUDY_TEST_ROWS = {
    "text": (
        ("projected_mse", "(= the sentence-transformers peer, seed 0 identical to every digit)"),
        ("cospress_identity_ln", "(the `minilm-wordnet` recipe's loss)"),
        ("cospress_identity", "(no LayerNorm)"),
        ("pc_cos_t0.1+projected_mse1", ""),
        ("pc_cos_t0.1", ""),
        ("pc_euc_t0.1", "(the old default)"),
    ),
    "vision": (
        ("pc_cos_t0.1+procrustes1", ""),
        ("procrustes", ""),
        ("pc_cos_t0.1_sorted", "(the sorted soft rank)"),
        ("pc_cos_t0.1", ""),
        ("projected_mse", ""),
        ("pc_euc_t0.1", "(the old default)"),
    ),
}
# (split, metric key, header)
STUDY_TEST_COLUMNS = (
    ("test", "teacher_neighbour_recall@10/cosine", "nbr recall@10"),
    ("test", "teacher_neighbour_recall@10/euclidean", "nbr recall@10 euc"),
    ("test", "dissimilarity_spearman/cosine", "Spearman"),
    ("test", "dissimilarity_spearman/euclidean", "Spearman euc"),
    ("test", "knn_accuracy@10/cosine", "10-NN"),
    ("test", "perception_coherence/cosine", "coherence"),
    ("ood", "teacher_neighbour_recall@10/cosine", "OOD nbr recall@10"),
    ("ood", "dissimilarity_spearman/cosine", "OOD Spearman"),
)
# README's table: one row per loss, the text and the vision variant that stand for it (None: not a finalist there).
STUDY_SUMMARY_ROWS = (
    ("perception coherence, old default (euclidean, τ 0.1)", "pc_euc_t0.1", "pc_euc_t0.1"),
    ("perception coherence, cosine", "pc_cos_t0.1", "pc_cos_t0.1"),
    ("perception coherence (cosine) + projected MSE", "pc_cos_t0.1+projected_mse1", None),
    ("perception coherence (cosine) + Procrustes", None, "pc_cos_t0.1+procrustes1"),
    ("CosPress, map started at the identity (`map_init: identity`, ours)", "cospress_identity_ln", None),
    ("projected MSE (= the sentence-transformers `MSELoss` recipe)", "projected_mse", "projected_mse"),
    ("Procrustes", None, "procrustes"),
)
STUDY_SUMMARY_COLUMNS = (
    ("teacher_neighbour_recall@10/cosine", "nbr recall@10"),
    ("knn_accuracy@10/cosine", "10-NN acc."),
    ("dissimilarity_spearman/cosine", "Spearman"),
)
# A figure is bold when it is within this many units of the last printed digit of its column's best.
BOLD_WITHIN = 1


def thousandths(value: float) -> int:
    """``value`` as printed with 3 decimals, in thousandths."""
    return round(float(f"{value:.3f}") * 1000)


def mean_and_std(row: RowSummary, key: str, best: float | None) -> str:
    """``mean ± std`` (3 decimals), bold within :data:`BOLD_WITHIN` thousandths of ``best``."""
    text = f"{row.means[key]:.3f} ± {row.stds[key]:.3f}"
    if best is not None and thousandths(best) - thousandths(row.means[key]) <= BOLD_WITHIN:
        return f"**{text}**"
    return text


def markdown_row(cells: Sequence[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def finalist_summaries(results: list[dict[str, Any]]) -> dict[str, dict[str, RowSummary]]:
    """``{split: {variant: RowSummary}}`` on test and out of domain, of the variants run with 3 or more seeds."""
    full = three_seed_results(results)
    return {split: {row.variant: row for row in summarise_rows(full, split)} for split in ("test", "ood")}


def require_rows(summaries: dict[str, RowSummary], variants: Sequence[str], benchmark: str) -> None:
    missing = [variant for variant in variants if variant not in summaries]
    if missing:
        raise ValueError(f"{benchmark}: {missing} have fewer than 3 seeds in the result files; run them "
                         "(scripts/study.py run --variants ... --seeds 0 1 2) or take them out of the table")


def study_test_table(results: list[dict[str, Any]], benchmark: str) -> str:
    """docs/study.md's test table of ``benchmark``: the rows of :data:`STUDY_TEST_ROWS`, every column of
    :data:`STUDY_TEST_COLUMNS` (mean ± sample std over 3 seeds), bold near each column's best."""
    summaries = finalist_summaries(results)
    rows = STUDY_TEST_ROWS[benchmark]
    require_rows(summaries["test"], [variant for variant, _ in rows], benchmark)
    best = {(split, key): max(summaries[split][variant].means[key] for variant, _ in rows)
            for split, key, _ in STUDY_TEST_COLUMNS}
    lines = [markdown_row(["variant", *(header for _, _, header in STUDY_TEST_COLUMNS)]),
             "|---|" + "---:|" * len(STUDY_TEST_COLUMNS)]
    for variant, note in rows:
        cells = [mean_and_std(summaries[split][variant], key, best[(split, key)])
                 for split, key, _ in STUDY_TEST_COLUMNS]
        lines.append(markdown_row([f"`{variant}` {note}".rstrip(), *cells]))
    return "\n".join(lines)


def study_summary_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """README's table: the losses of :data:`STUDY_SUMMARY_ROWS` on text and vision, test split, 3 seeds."""
    benchmarks = ("text", "vision")
    summaries = {benchmark: finalist_summaries(results[benchmark])["test"] for benchmark in benchmarks}
    for index, benchmark in enumerate(benchmarks):
        require_rows(summaries[benchmark], [row[1 + index] for row in STUDY_SUMMARY_ROWS if row[1 + index]], benchmark)
    best = {(benchmark, key): max(summaries[benchmark][row[1 + index]].means[key]
                                  for row in STUDY_SUMMARY_ROWS if row[1 + index])
            for index, benchmark in enumerate(benchmarks) for key, _ in STUDY_SUMMARY_COLUMNS}
    headers = [f"{benchmark}: {header}" for benchmark in benchmarks for _, header in STUDY_SUMMARY_COLUMNS]
    lines = [markdown_row(["test split, 3 seeds", *headers]), "|---|" + "---:|" * len(headers)]
    for label, *variants in STUDY_SUMMARY_ROWS:
        cells = [mean_and_std(summaries[benchmark][variant], key, best[(benchmark, key)]) if variant else ""
                 for benchmark, variant in zip(benchmarks, variants) for key, _ in STUDY_SUMMARY_COLUMNS]
        lines.append(markdown_row([label, *cells]))
    return "\n".join(lines)


def rendered_blocks(output_dir: str) -> dict[str, str]:
    """The study's blocks of README (``study_summary``) and docs/study.md (``study_<benchmark>_test``), from the
    files of the current grid's variants in ``output_dir``."""
    results = {benchmark: grid_results(load_results(output_dir, benchmark), benchmark)[0]
               for benchmark in ("text", "vision")}
    return {"study_summary": study_summary_table(results),
            **{f"study_{benchmark}_test": study_test_table(results[benchmark], benchmark) for benchmark in results}}


def committed_blocks() -> dict[str, str]:
    """:func:`rendered_blocks` of the committed result files."""
    return rendered_blocks(str(COMMITTED_RESULTS))
