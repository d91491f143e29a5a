"""Throughput of a distillation step beside its baselines (the speed targets of hf_pcoh).

For one recipe, on the same fixed batches, the median time per step of:

* ``teacher forward``: :meth:`DistillationTrainer.teacher_forward` alone (no gradient), under the run's
  autocast (bf16 or none), the precision a well-configured teacher forward runs at;
* ``student step, plain MSE``: what training the student on stored teacher features would cost without
  hf_pcoh: student forward, a linear projector, MSE to the precomputed teacher features, backward,
  gradient clipping and the optimiser step;
* ``distillation step``: :meth:`DistillationTrainer.training_step` with the teacher in the loop, then
  clipping and the optimiser step (what ``Trainer.train`` runs per batch), for each loss; the teacher
  runs there exactly as the trainer runs it;
* ``from cache``: the same step given precomputed teacher features, i.e. :class:`DistillationModel`
  forward + backward + clipping + step without the teacher forward (what a teacher-feature cache buys).

The targets: a distillation step costs at most ``DISTILLATION_TARGET`` x (teacher forward + plain
student step), and a step from cached features at most ``CACHE_TARGET`` x the plain student step.
Collation and host-to-device copies are done before timing and are excluded from every figure. Each
loss gets its own row: its four variants take turns batch by batch, each round starting one variant
later (so a busy spell of a shared machine, or running after a given neighbour, favours none of them);
the first ``warmup`` rounds are not timed, and each figure is the median over the remaining rounds.

docs/benchmarks.md's ratio table of the vision recipe is rendered from the committed JSON files
(:func:`committed_blocks`); ``scripts/bench_throughput.py --json`` into one of them renders it again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import Trainer

from benchmarks.provenance import REPOSITORY_ROOT, cpu_name
from benchmarks.rendered_tables import render_into_documents
from hf_pcoh import LOSSES, DistillationConfig, DistillationTrainer, FeatureExtractor, Features
from hf_pcoh.config import options_of_used_losses
from hf_pcoh.data import load_splits
from hf_pcoh.models import resolve_checkpoint
from hf_pcoh.setup import DistillationSetup, build_setup
from hf_pcoh.recipes import read_recipe
from hf_pcoh.teacher_training import TeacherTrainingArguments, grey_image_processor


TEACHER_FORWARD = "teacher forward"
PLAIN_STUDENT_STEP = "student step, plain MSE"
BASELINE_SUM = "teacher forward + plain student step"
DISTILLATION_STEP = "distillation step"
CACHED_STEP = "from cache"

DISTILLATION_TARGET = 1.15
CACHE_TARGET = 1.10
# Logit KD needs classification heads on both models, which the feature recipes do not have.
EXCLUDED_LOSSES = ("logit_kd",)
VISION_DATASETS = ("fashion_mnist", "digits")


@dataclass
class ThroughputRow:
    """One loss of one recipe: the median seconds per step of the four variants, timed in the same rounds.

    Each loss has its own teacher-forward and plain-step figures, measured alternately with its own
    steps, so that its ratios compare steps that ran seconds apart (on a shared machine, minutes apart
    can mean a different load).
    """

    recipe: str
    loss: str
    batch_size: int
    teacher_seconds: float
    plain_seconds: float
    distillation_seconds: float
    cached_seconds: float
    note: str = ""

    @property
    def baseline_seconds(self) -> float:
        """A teacher forward plus a plain-MSE student step."""
        return self.teacher_seconds + self.plain_seconds

    @property
    def distillation_ratio(self) -> float:
        return distillation_ratio(self.distillation_seconds, self.teacher_seconds, self.plain_seconds)

    @property
    def cache_ratio(self) -> float:
        return cache_ratio(self.cached_seconds, self.plain_seconds)

    def samples_per_second(self, seconds: float) -> float:
        return self.batch_size / seconds

    def as_dict(self) -> dict[str, Any]:
        """Every field, plus samples/s of each variant, the ratios and whether they meet their targets."""
        variants = {"teacher": self.teacher_seconds, "plain": self.plain_seconds, "baseline": self.baseline_seconds,
                    "distillation": self.distillation_seconds, "cached": self.cached_seconds}
        return {
            **dataclasses.asdict(self),
            **{f"{name}_samples_per_second": self.samples_per_second(seconds) for name, seconds in variants.items()},
            "distillation_ratio": self.distillation_ratio,
            "distillation_target": DISTILLATION_TARGET,
            "distillation_meets_target": self.distillation_ratio <= DISTILLATION_TARGET,
            "cache_ratio": self.cache_ratio,
            "cache_target": CACHE_TARGET,
            "cache_meets_target": self.cache_ratio <= CACHE_TARGET,
        }


def distillation_ratio(distillation_seconds: float, teacher_seconds: float, plain_seconds: float) -> float:
    """Cost of a distillation step relative to a teacher forward plus a plain-MSE student step."""
    return distillation_seconds / (teacher_seconds + plain_seconds)


def cache_ratio(cached_seconds: float, plain_seconds: float) -> float:
    """Cost of a step from cached teacher features relative to a plain-MSE student step."""
    return cached_seconds / plain_seconds


def benchmarked_losses(losses: Sequence[str] | None = None) -> list[str]:
    """The losses to time: the given ones (checked against the registry), or every registered feature loss."""
    if losses is None:
        return [name for name in LOSSES if name not in EXCLUDED_LOSSES]
    for name in losses:
        if name not in LOSSES:
            raise ValueError(f"losses: unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
        if name in EXCLUDED_LOSSES:
            raise ValueError(f"losses: {name!r} compares logits, not features; time one of the feature losses")
    return list(losses)


# ---- building the setup of a recipe ------------------------------------------------------------------
def untrained_vision_teacher(values: dict[str, Any], output_dir: str) -> tuple[dict[str, Any], str]:
    """Replace a missing trained vision teacher by a ResNet of ``scripts/train_teacher.py``'s default size.

    Its speed is that of the trained teacher (same architecture); only its weights are random. The image
    processor is the one ``train_teacher.py`` would save, computed from the data set's training images.
    """
    fields = TeacherTrainingArguments.__dataclass_fields__
    hidden_sizes, depths = fields["hidden_sizes"].default_factory(), fields["depths"].default_factory()
    train = load_splits(values["dataset_name"])["train"]
    images = np.asarray(train.select(range(min(2000, len(train))))["image"])
    processor_dir = os.path.join(output_dir, "teacher_processor")
    grey_image_processor(images).save_pretrained(processor_dir)
    channels = 1 if images.ndim == 3 else images.shape[-1]
    teacher_config = {
        "model_type": "resnet", "num_channels": channels, "embedding_size": hidden_sizes[0],
        "hidden_sizes": hidden_sizes, "depths": depths, "layer_type": "basic",
    }
    values = {**values, "teacher_config": teacher_config, "teacher_processor_name_or_path": processor_dir}
    missing = values.pop("teacher_model_name_or_path")
    note = (f"teacher: untrained ResNet {hidden_sizes} built from config ({missing} not found; the architecture "
            "scripts/train_teacher.py trains)")
    return values, note


def recipe_setup(
    recipe: str,
    output_dir: str,
    batch_size: int | None = None,
    num_batches: int = 12,
    device: str = "cpu",
    bf16: bool = False,
    **overrides: Any,
) -> tuple[DistillationSetup, str]:
    """Build a recipe's teacher, student, collator and just enough data for ``num_batches`` batches.

    Returns the setup and a note on anything that differs from the recipe (an untrained stand-in teacher).
    """
    values = {**read_recipe(recipe), **overrides}
    note = ""
    teacher_path = values.get("teacher_model_name_or_path")
    if (
        teacher_path
        and values.get("dataset_name") in VISION_DATASETS
        and not os.path.isdir(resolve_checkpoint(teacher_path))
    ):
        values, note = untrained_vision_teacher(values, output_dir)
    batch_size = batch_size or values.get("per_device_train_batch_size", 8)
    values.update(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_train_samples=batch_size * num_batches,
        use_cpu=device == "cpu", bf16=bf16, report_to="none", disable_tqdm=True, save_strategy="no",
        evaluate_after_training=False, push_to_hub=False,
        # The teacher must be in the loop for the distillation-step column (a recipe's teacher_cache would turn
        # it into a cached step): only a caller's own teacher_cache (the epoch table's) is kept.
        teacher_cache=overrides.get("teacher_cache"),
    )
    return build_setup(DistillationConfig(**values)), note


# ---- timing ------------------------------------------------------------------------------------------
Batch = dict[str, Any]
TeacherOutput = tuple[list[Features], torch.Tensor | None]  # features per layer pair, logits


@dataclass
class TimedStep:
    """One variant of the table: ``run(k)`` performs its step on batch ``k``."""

    step: str
    loss: str | None
    run: Callable[[int], None]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_median_seconds(
    variants: Sequence[TimedStep], num_batches: int, warmup: int, device: torch.device
) -> list[float]:
    """Median seconds per step of each variant, the variants taking turns batch by batch.

    Taking turns means that a slow spell of a shared machine slows every variant alike instead of
    whichever happened to be running, and each round starts one variant later than the previous one so
    that no variant always runs in the same place (after the same neighbour, with the same caches).
    The first ``warmup`` rounds are not timed.
    """
    times: list[list[float]] = [[] for _ in variants]
    for batch_index in range(num_batches):
        for offset in range(len(variants)):
            position = (batch_index + offset) % len(variants)
            synchronize(device)
            start = time.perf_counter()
            variants[position].run(batch_index)
            synchronize(device)
            if batch_index >= warmup:
                times[position].append(time.perf_counter() - start)
    return [statistics.median(variant_times) for variant_times in times]


def optimizer_step(parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float) -> None:
    """What ``Trainer.train`` does after backward: clip (when ``max_grad_norm > 0``), step, zero the grads."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def build_optimizer(parameters: list[nn.Parameter], config: DistillationConfig) -> torch.optim.Optimizer:
    """The optimiser the Trainer would build from ``config`` (class and hyper-parameters)."""
    optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(config)
    return optimizer_class(parameters, **{**optimizer_kwargs, "weight_decay": config.weight_decay})


class PlainMSEStudent(nn.Module):
    """The baseline: the student's features (same layers and pooling) -> linear projector -> MSE.

    The projector is learned where the widths differ and the identity where they agree, as in
    ``projected_mse``'s default.
    """

    def __init__(self, student: nn.Module, extractors: list[FeatureExtractor], widths: list[tuple[int, int]]) -> None:
        super().__init__()
        self.student = student
        self.extractors = extractors
        self.projectors = nn.ModuleList(
            nn.Linear(student_dim, teacher_dim, bias=False) if student_dim != teacher_dim else nn.Identity()
            for student_dim, teacher_dim in widths
        )

    def forward(self, student_inputs: dict[str, torch.Tensor], teacher_features: list[Features]) -> torch.Tensor:
        outputs = self.student(**student_inputs, output_hidden_states=True)
        mask = student_inputs.get("attention_mask")
        total = torch.zeros((), device=teacher_features[0].values.device)
        for extractor, projector, teacher in zip(self.extractors, self.projectors, teacher_features):
            projected = projector(extractor(outputs, mask).values)
            total = total + F.mse_loss(projected.float(), teacher.values.float())
        return total


def plain_mse_student(trainer: DistillationTrainer, student: nn.Module) -> PlainMSEStudent:
    """``student`` wrapped as the plain-MSE baseline of ``trainer``'s layer pairs (same layers, pooling, widths)."""
    heads = {term.pair_index: trainer.model.heads[term.key] for term in trainer.model.terms}
    widths = [(heads[pair].student_dim, heads[pair].teacher_dim) for pair in sorted(heads)]
    return PlainMSEStudent(student, trainer.model.student_extractors, widths).to(trainer.args.device)


def loss_config(config: DistillationConfig, loss: str) -> DistillationConfig:
    """The same run with ``loss`` as its only feature loss."""
    return dataclasses.replace(config, losses=[loss], loss_weights=None,
                               loss_kwargs=options_of_used_losses(config.loss_kwargs, [loss]))


def teacher_step(trainer: DistillationTrainer, batches: list[Batch]) -> TimedStep:
    autocast = trainer.accelerator.autocast  # the baseline teacher runs at the run's precision

    def run(batch_index: int) -> None:
        with autocast():
            trainer.teacher_forward(batches[batch_index])

    return TimedStep(TEACHER_FORWARD, None, run)


def plain_student_step(
    trainer: DistillationTrainer, student: nn.Module, batches: list[Batch], cached: list[TeacherOutput]
) -> TimedStep:
    """The plain-MSE student step on the same features as ``trainer``'s layer pairs."""
    plain = plain_mse_student(trainer, student).train()
    parameters = [parameter for parameter in plain.parameters() if parameter.requires_grad]
    optimizer = build_optimizer(parameters, trainer.args)
    autocast = trainer.accelerator.autocast

    def run(batch_index: int) -> None:
        with autocast():
            loss = plain(batches[batch_index]["student_inputs"], cached[batch_index][0])
        loss.backward()
        optimizer_step(parameters, optimizer, trainer.args.max_grad_norm)

    return TimedStep(PLAIN_STUDENT_STEP, None, run)


def trainer_steps(
    loss: str, trainer: DistillationTrainer, batches: list[Batch], cached: list[TeacherOutput]
) -> list[TimedStep]:
    """The distillation step (``training_step``, teacher in the loop) and the step from ``cached`` features."""
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train: one batch per optimiser step
    model = trainer.accelerator.prepare_model(trainer.model)  # adds the autocast wrapper, as train() does
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = trainer.create_optimizer()
    max_grad_norm = trainer.args.max_grad_norm

    def distillation_step(batch_index: int) -> None:
        trainer.training_step(model, batches[batch_index])
        optimizer_step(parameters, optimizer, max_grad_norm)

    def cached_step(batch_index: int) -> None:
        batch, (teacher_features, teacher_logits) = batches[batch_index], cached[batch_index]
        model.train()
        output = model(student_inputs=batch["student_inputs"], teacher_features=teacher_features,
                       labels=batch.get("labels"), teacher_logits=teacher_logits)
        trainer.accelerator.backward(output.loss)
        optimizer_step(parameters, optimizer, max_grad_norm)

    return [TimedStep(DISTILLATION_STEP, loss, distillation_step), TimedStep(CACHED_STEP, loss, cached_step)]


def build_trainer(setup: DistillationSetup, loss: str) -> DistillationTrainer:
    """A trainer for ``loss`` alone, on its own copy of the initial student."""
    return DistillationTrainer(
        student=copy.deepcopy(setup.student), teacher=setup.teacher, args=loss_config(setup.config, loss),
        train_dataset=setup.train_dataset, collator=setup.collator,
    )


def benchmark_setup(
    setup: DistillationSetup,
    losses: Sequence[str] | None = None,
    steps: int = 10,
    warmup: int = 2,
    recipe: str = "",
    note: str = "",
) -> list[ThroughputRow]:
    """One row per loss: teacher forward, plain-MSE student step, distillation step and step from cache.

    Needs ``(warmup + steps) x per_device_train_batch_size`` training rows; every variant of every loss
    runs on the same batches. For each loss in turn, its four variants take turns batch by batch.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    losses = benchmarked_losses(losses)
    batch_size = setup.config.per_device_train_batch_size
    num_batches = warmup + steps
    if len(setup.train_dataset) < batch_size * num_batches:
        raise ValueError(
            f"{num_batches} batches of {batch_size} need {batch_size * num_batches} training rows, the setup has "
            f"{len(setup.train_dataset)}: raise max_train_samples or lower steps / warmup / batch size"
        )
    trainer = build_trainer(setup, losses[0])
    # Every variant sees the same batches, collated and moved to the device before any timing.
    batches = [
        trainer._prepare_inputs(setup.collator([setup.train_dataset[row] for row in range(first, first + batch_size)]))
        for first in range(0, num_batches * batch_size, batch_size)
    ]
    with trainer.accelerator.autocast():
        cached = [trainer.teacher_forward(batch) for batch in batches]
    baselines = [teacher_step(trainer, batches), plain_student_step(trainer, copy.deepcopy(setup.student), batches, cached)]
    rows = []
    for loss in losses:
        trainer = trainer if trainer.args.losses == [loss] else build_trainer(setup, loss)
        variants = baselines + trainer_steps(loss, trainer, batches, cached)
        teacher, plain, distillation, from_cache = interleaved_median_seconds(
            variants, num_batches, warmup, trainer.args.device
        )
        rows.append(ThroughputRow(recipe, loss, batch_size, teacher, plain, distillation, from_cache, note))
    return rows


def measure_recipe(
    recipe: str,
    output_dir: str,
    losses: Sequence[str] | None = None,
    steps: int = 10,
    warmup: int = 2,
    batch_size: int | None = None,
    device: str = "cpu",
    bf16: bool = False,
    **overrides: Any,
) -> list[ThroughputRow]:
    """:func:`recipe_setup` then :func:`benchmark_setup`: the table rows of one recipe."""
    setup, note = recipe_setup(recipe, output_dir, batch_size, warmup + steps, device, bf16, **overrides)
    return benchmark_setup(setup, losses, steps, warmup, recipe, note)


# ---- the table ---------------------------------------------------------------------------------------
def describe_machine(device: str) -> str:
    """``cpu (AMD EPYC, 2 CPU cores), torch 2.13.0+cpu`` or ``cuda (NVIDIA H100 ...), torch ...``: where figures came from."""
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{cpu_name()}, {os.cpu_count()} CPU cores"
    return f"{device} ({where}), torch {torch.__version__}"


def markdown_table(rows: Sequence[ThroughputRow]) -> str:
    """The rows as a markdown table (samples/s, ms per step in brackets), with the ratios' definitions."""

    def cell(row: ThroughputRow, seconds: float) -> str:
        return f"{row.samples_per_second(seconds):.1f} ({seconds * 1e3:.0f} ms)"

    def verdict(ratio: float, target: float) -> str:
        return f"{ratio:.2f} {'yes' if ratio <= target else 'NO'}"

    lines = [
        f"| recipe | loss | B | {TEACHER_FORWARD} | {PLAIN_STUDENT_STEP} | {BASELINE_SUM} | {DISTILLATION_STEP} | "
        f"ratio (<= {DISTILLATION_TARGET:.2f}) | {CACHED_STEP} | ratio (<= {CACHE_TARGET:.2f}) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.recipe} | {row.loss} | {row.batch_size} | {cell(row, row.teacher_seconds)} | "
            f"{cell(row, row.plain_seconds)} | {cell(row, row.baseline_seconds)} | "
            f"{cell(row, row.distillation_seconds)} | {verdict(row.distillation_ratio, DISTILLATION_TARGET)} | "
            f"{cell(row, row.cached_seconds)} | {verdict(row.cache_ratio, CACHE_TARGET)} |"
        )
    notes = sorted({f"{row.recipe}: {row.note}" for row in rows if row.note})
    lines += [
        "",
        "samples/s (median ms per step). Ratios of times: distillation step / (teacher forward + plain-MSE student "
        "step); step from cache / plain-MSE student step. Each loss's row was timed in its own alternating rounds.",
        *notes,
    ]
    return "\n".join(lines)


# ---- docs/benchmarks.md ------------------------------------------------------------------------------
COMMITTED_RESULTS = REPOSITORY_ROOT / "benchmarks" / "results"
# Each block: the result files it shows, one figure per file in each cell ("first / second") where a loss is in both.
RATIO_TABLES = {"throughput_vision": ("throughput_vision.json", "throughput_vision_pc.json")}
# The order docs/benchmarks.md lists the losses in (others after them).
TABLE_LOSS_ORDER = ("procrustes", "gram", "cka", "cospress", "projected_mse", "perception_coherence", "rkd_distance")


def ratio_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per loss: the step ratio, the cached-step ratio and the epoch ratio of each result file."""
    step = [{row["loss"]: row for row in result["rows"]} for result in results]
    epoch = [{row["loss"]: row for row in result.get("epoch_rows", [])} for result in results]
    losses = list(dict.fromkeys(loss for rows in step for loss in rows))
    losses.sort(key=lambda loss: TABLE_LOSS_ORDER.index(loss) if loss in TABLE_LOSS_ORDER else len(TABLE_LOSS_ORDER))
    first = results[0]["rows"][0]
    epoch_target = next((row["target"] for rows in epoch for row in rows.values()), CACHE_TARGET)

    def figures(tables: list[dict[str, dict[str, Any]]], loss: str, key: str) -> str:
        return " / ".join(f"{rows[loss][key]:.2f}" for rows in tables if loss in rows) or "—"

    lines = [f"| loss | distillation step / (teacher + plain step) ≤ {first['distillation_target']:.2f} | "
             f"cache step / plain step | epoch from cache / plain epoch ≤ {epoch_target:.2f} |",
             "|---|---:|---:|---:|"]
    for loss in losses:
        lines.append(f"| {loss} | {figures(step, loss, 'distillation_ratio')} | {figures(step, loss, 'cache_ratio')} | "
                     f"{figures(epoch, loss, 'ratio')} |")
    return "\n".join(lines)


def read_result(name: str) -> dict[str, Any]:
    with open(COMMITTED_RESULTS / name, encoding="utf-8") as stream:
        return json.load(stream)


def committed_blocks() -> dict[str, str]:
    """docs/benchmarks.md's ratio tables rendered from the committed JSON files."""
    return {block: ratio_table([read_result(name) for name in names]) for block, names in RATIO_TABLES.items()}


def render_if_committed(path: str) -> list[str]:
    """After ``scripts/bench_throughput.py --json PATH``: the blocks rendered again when PATH is a committed file."""
    names = {os.path.realpath(COMMITTED_RESULTS / name) for files in RATIO_TABLES.values() for name in files}
    if os.path.realpath(path) not in names:
        return []
    return [name for names in render_into_documents(committed_blocks()).values() for name in names]


def figure_range(values: Sequence[float], decimals: int) -> str:
    """``low–high`` at ``decimals`` decimals."""
    return f"{min(values):.{decimals}f}–{max(values):.{decimals}f}"


def quoted_figures() -> list[str]:
    """The figures docs/benchmarks.md's prose quotes from the committed files (each must appear as written here)."""
    vision, vision_again, text = (read_result(name) for name in (
        "throughput_vision.json", "throughput_vision_pc.json", "throughput_text.json"))
    costly = ("perception_coherence", "cospress")
    costly_rows = [row for result in (vision, vision_again) for row in result["rows"] if row["loss"] in costly]
    costly_epochs = [row for result in (vision, vision_again) for row in result["epoch_rows"] if row["loss"] in costly]
    text_epochs = [row["ratio"] for row in text["epoch_rows"]]
    milliseconds = [1e3 * row["plain_seconds"] for row in vision["rows"]]
    return [
        f"plain step is {figure_range(milliseconds, 0)} ms here",
        f"{figure_range([1e3 * row['teacher_seconds'] for row in text['rows']], 0)} ms a forward",
        f"beside a {figure_range([row['plain_seconds'] for row in text['rows']], 2)} s plain student step",
        f"every loss at {figure_range([row['distillation_ratio'] for row in text['rows']], 2)} (distillation step), "
        f"{figure_range([row['cache_ratio'] for row in text['rows']], 2)} (cache step) and "
        f"{figure_range(text_epochs, 2)} (epoch from the cache)",
        f"of a {figure_range([1e3 * row['plain_seconds'] for row in costly_rows], 0)} ms step",
        f"per epoch {figure_range([row['ratio'] for row in costly_epochs], 2)}, per step without data loading "
        f"{figure_range([row['cache_ratio'] for row in costly_rows], 2)}",
    ]
