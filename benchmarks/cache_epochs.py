"""An epoch trained from the teacher-feature cache beside an epoch of plain student training.

The target: with cached teacher features an epoch costs at most 1.10x plain student training.
Both sides run through ``Trainer.train`` on the same training rows, which carry the cached teacher
features (``--teacher_cache``), so each side pays what a real epoch pays: reading the rows and their
Arrow feature columns, the processor and collation (``DataLoader`` in the main process, as the
Trainer's default), the forward and backward, clipping, the optimiser and the Trainer's bookkeeping.

* plain student training: :class:`PlainStudentTrainer`, a bare ``transformers.Trainer`` whose loss is
  the student's features (same layers and pooling) through a linear projector, MSE to the cached
  features: no hf_pcoh loss, head or trainer code in its step;
* from the cache: :class:`~hf_pcoh.trainer.DistillationTrainer` with one loss, the teacher never run.

A callback stamps the end of every optimiser step; a side's figure is the time from the end of step
``warmup`` to the end of the last step, per step, so start-up (optimiser and data loader creation, the
first steps' allocations) is left out. Sides take turns, each round starting one side later, and each
figure is the median over the rounds (a busy spell of a shared machine then slows every side alike).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback

from hf_pcoh import Features
from hf_pcoh.collator import CACHED_FEATURES_KEY, cached_feature_column
from hf_pcoh.setup import DistillationSetup

from benchmarks.throughput import (
    CACHE_TARGET,
    benchmarked_losses,
    build_trainer,
    plain_mse_student,
    recipe_setup,
    synchronize,
)

PLAIN_EPOCH = "plain student training"


@dataclass
class EpochRow:
    """One loss of one recipe: seconds per step of an epoch from the cache and of plain student training."""

    recipe: str
    loss: str
    batch_size: int
    timed_steps: int
    plain_seconds: float
    cached_seconds: float
    note: str = ""

    @property
    def ratio(self) -> float:
        """An epoch from the cache relative to an epoch of plain student training (the same steps)."""
        return self.cached_seconds / self.plain_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "plain_samples_per_second": self.batch_size / self.plain_seconds,
            "cached_samples_per_second": self.batch_size / self.cached_seconds,
            "ratio": self.ratio,
            "target": CACHE_TARGET,
            "meets_target": self.ratio <= CACHE_TARGET,
        }


class StepClock(TrainerCallback):
    """Stamps ``time.perf_counter()`` at the end of every optimiser step."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronize(args.device)
        self.step_ends.append(time.perf_counter())

    def seconds_per_step(self, warmup: int) -> float:
        """Mean seconds per step after the first ``warmup`` steps (data loading included)."""
        ends = self.step_ends[max(warmup, 1) - 1 :]
        if len(ends) < 2:
            raise ValueError(f"{len(self.step_ends)} steps ran: too few to time any after warmup={warmup}")
        return (ends[-1] - ends[0]) / (len(ends) - 1)


class PlainStudentTrainer(Trainer):
    """Plain student training on cached teacher features: student -> linear projector -> MSE, nothing else."""

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        teacher_features = [Features(values) for values in inputs[CACHED_FEATURES_KEY]]
        loss = model(inputs["student_inputs"], teacher_features)
        return (loss, None) if return_outputs else loss


def epoch_seconds_per_step(trainer: Trainer, warmup: int) -> float:
    """Train ``trainer`` for its epoch and return its seconds per step after ``warmup`` steps."""
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.remove_callback(PrinterCallback)  # the logs are still made (as in real training), not printed
    trainer.train()
    return clock.seconds_per_step(warmup)


def cached_recipe_setup(
    recipe: str, output_dir: str, batch_size: int | None = None, num_batches: int = 12, device: str = "cpu",
    bf16: bool = False,
) -> tuple[DistillationSetup, str]:
    """:func:`~benchmarks.throughput.recipe_setup` whose training rows carry the teacher's cached features."""
    return recipe_setup(recipe, output_dir, batch_size, num_batches, device, bf16,
                        teacher_cache=os.path.join(output_dir, "teacher_cache"), num_train_epochs=1, max_steps=-1)


def benchmark_cache_epochs(
    setup: DistillationSetup,
    losses: Sequence[str] | None = None,
    warmup: int = 2,
    rounds: int = 2,
    recipe: str = "",
    note: str = "",
) -> list[EpochRow]:
    """One row per loss: an epoch from the cache against an epoch of plain student training.

    ``setup`` must come from :func:`cached_recipe_setup` (its rows carry ``teacher_features_<i>``).
    """
    if cached_feature_column(0) not in setup.train_dataset.column_names:
        raise ValueError("the training rows carry no cached teacher features: build the setup with --teacher_cache")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    losses = benchmarked_losses(losses)
    batch_size = setup.config.per_device_train_batch_size
    steps = len(setup.train_dataset) // batch_size  # dataloader_drop_last
    if steps < warmup + 2:
        raise ValueError(f"an epoch of {steps} steps is too short to time after {warmup} warm-up steps")
    reference = build_trainer(setup, losses[0])  # only for the plain model's layer pairs and widths

    def plain_trainer() -> Trainer:
        model = plain_mse_student(reference, copy.deepcopy(setup.student))
        return PlainStudentTrainer(model=model, args=setup.config, train_dataset=setup.train_dataset,
                                   data_collator=setup.collator)

    sides: list[tuple[str, Callable[[], Trainer]]] = [(PLAIN_EPOCH, plain_trainer)]
    sides += [(loss, lambda loss=loss: build_trainer(setup, loss)) for loss in losses]
    seconds: dict[str, list[float]] = {name: [] for name, _ in sides}
    for round_index in range(rounds):
        for offset in range(len(sides)):
            name, make_trainer = sides[(round_index + offset) % len(sides)]
            seconds[name].append(epoch_seconds_per_step(make_trainer(), warmup))
    plain = statistics.median(seconds[PLAIN_EPOCH])
    return [
        EpochRow(recipe, loss, batch_size, steps - max(warmup, 1), plain, statistics.median(seconds[loss]), note)
        for loss in losses
    ]


def measure_cache_epochs(
    recipe: str,
    output_dir: str,
    losses: Sequence[str] | None = None,
    num_batches: int = 12,
    warmup: int = 2,
    rounds: int = 2,
    batch_size: int | None = None,
    device: str = "cpu",
    bf16: bool = False,
) -> list[EpochRow]:
    """:func:`cached_recipe_setup` then :func:`benchmark_cache_epochs`: the epoch rows of one recipe."""
    setup, note = cached_recipe_setup(recipe, output_dir, batch_size, num_batches, device, bf16)
    return benchmark_cache_epochs(setup, losses, warmup, rounds, recipe, note)


def epoch_markdown_table(rows: Sequence[EpochRow]) -> str:
    """The epoch rows as a markdown table (samples/s, ms per step in brackets)."""

    def cell(row: EpochRow, seconds: float) -> str:
        return f"{row.batch_size / seconds:.1f} ({seconds * 1e3:.0f} ms)"

    lines = [
        f"| recipe | loss | B | timed steps | {PLAIN_EPOCH} | epoch from the cache | ratio (<= {CACHE_TARGET:.2f}) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        verdict = "yes" if row.ratio <= CACHE_TARGET else "NO"
        lines.append(
            f"| {row.recipe} | {row.loss} | {row.batch_size} | {row.timed_steps} | {cell(row, row.plain_seconds)} | "
            f"{cell(row, row.cached_seconds)} | {row.ratio:.2f} {verdict} |"
        )
    notes = sorted({f"{row.recipe}: {row.note}" for row in rows if row.note})
    lines += [
        "",
        "samples/s (ms per step) through Trainer.train, data loading included; ratio = epoch from the cache / "
        "epoch of plain student training on the same rows.",
        *notes,
    ]
    return "\n".join(lines)
