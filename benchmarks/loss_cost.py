"""Time and peak memory of one forward + backward of every loss, beside the naive perception coherence.

Each measurement runs in its own subprocess (``python -m benchmarks.loss_cost SPEC_JSON``) so that its
peak memory is its own: on CUDA the growth of ``torch.cuda.max_memory_allocated`` over the inputs, on
CPU the growth of the process's peak resident set (``ru_maxrss``) over what it held once the inputs were
built. One thread on CPU. Inputs are ``[B, dim]`` student and ``[B, teacher_dim]`` teacher features drawn
from a standard normal with seed 0; the reported time is the best of the first run and ``repeats`` more.

The naive reference is perception coherence with ``implementation="reference"`` (autograd over the
``[B, B, B]`` comparisons); its row also reports how far the default (chunked) implementation is from it
on the same batch (loss value and gradient). It is skipped, and the table says so, where its estimated
memory exceeds ``naive_memory_fraction`` of what is available.

A loss may carry options as ``NAME:KEY=VALUE,KEY=VALUE`` (values read as YAML), e.g.
``perception_coherence:soft_rank=sorted`` or ``perception_coherence:num_references=128``, to price its
variants side by side. ``scripts/bench_losses.py`` is the command line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hf_pcoh.errors import unknown_name_message
from hf_pcoh.losses import LOSSES, build_loss

NAIVE = "perception_coherence (naive reference)"
# Bytes per element of the [B, B, B] comparisons that the naive reference holds at its peak (measured:
# 12 GiB at B = 1024 on an H100), with a margin.
NAIVE_BYTES_PER_COMPARISON = 16
DEFAULT_LOSSES = ["perception_coherence", "cospress", "procrustes", "gram", "cka", "projected_mse", "rkd_distance", "logit_kd"]
# The measuring subprocess imports ``benchmarks``, which is not installed: it runs from the repository root.
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME"`` or ``"NAME:KEY=VALUE,KEY=VALUE"`` -> (loss name, options); values are read as YAML."""
    import yaml

    name, _, options_text = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, options_text.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"losses: {spec!r}: write options as NAME:KEY=VALUE,KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return name, options


@dataclass
class LossCostOptions:
    """What ``scripts/bench_losses.py`` measures: which losses, at which batch sizes and widths, where."""

    batch_sizes: list[int] = field(default_factory=lambda: [256, 1024, 2048, 4096])
    losses: list[str] = field(default_factory=lambda: list(DEFAULT_LOSSES))
    dim: int = 384  # student feature width (and number of classes for logit_kd)
    teacher_dim: int = 768
    device: str = "cpu"
    repeats: int = 3  # timed runs after the first (the best is reported)
    naive: bool = True  # also run the naive perception coherence after the default one
    timeout: float = 900.0  # seconds allowed per measurement
    naive_memory_fraction: float = 0.5  # run the naive reference only below this share of the free memory

    def __post_init__(self) -> None:
        for spec in self.losses:
            name, options = parse_loss_spec(spec)
            if name not in LOSSES:
                raise ValueError(f"losses: {unknown_name_message('loss', name, list(LOSSES))}")
            if options:
                build_loss(name, student_dim=self.dim, teacher_dim=self.teacher_dim, **options)  # bad options fail now
        if not self.batch_sizes or min(self.batch_sizes) < 2:
            raise ValueError(f"batch_sizes={self.batch_sizes}: give at least one batch size, each >= 2")
        if self.dim < 1 or self.teacher_dim < 1:
            raise ValueError(f"dim={self.dim} and teacher_dim={self.teacher_dim} must be >= 1")
        if self.repeats < 0:
            raise ValueError(f"repeats={self.repeats} must be >= 0")
        if self.naive_memory_fraction <= 0:
            raise ValueError(f"naive_memory_fraction={self.naive_memory_fraction} must be > 0")


def available_bytes(device: str) -> int:
    """Free memory of the device (CUDA) or MemAvailable of the machine (CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One loss at one batch size, in this process: first run for memory (and time), then ``repeats`` timed runs.

    ``spec`` has ``loss``, ``batch_size``, ``dim``, ``teacher_dim``, ``device`` and ``repeats``. Returns
    ``seconds`` (best run), ``peak_bytes`` and the loss ``value``; the naive reference's row adds
    ``max_value_difference`` and ``max_relative_grad_difference`` of the default implementation.
    """
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    batch_size, dim, teacher_dim = spec["batch_size"], spec["dim"], spec["teacher_dim"]
    name = spec["loss"]
    if name == NAIVE:
        loss = build_loss("perception_coherence", student_dim=dim, teacher_dim=teacher_dim, implementation="reference")
    elif name == "logit_kd":
        loss = build_loss(name, student_dim=dim, teacher_dim=dim)
        teacher_dim = dim
    else:
        loss_name, loss_options = parse_loss_spec(name)
        loss = build_loss(loss_name, student_dim=dim, teacher_dim=teacher_dim, **loss_options)
    loss = loss.to(device)
    student = torch.randn(batch_size, dim, device=device, requires_grad=True)
    teacher = torch.randn(batch_size, teacher_dim, device=device)
    cuda = device.type == "cuda"

    def step() -> tuple[float, torch.Tensor, torch.Tensor]:
        student.grad = None
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        value = loss(student, teacher)
        value.backward()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, value.detach(), student.grad.detach().clone()

    # A tiny warm-up loads kernels and caches once, so that they do not count as the loss's memory.
    warm_student = torch.randn(4, dim, device=device, requires_grad=True)
    loss(warm_student, torch.randn(4, teacher_dim, device=device)).backward()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = peak_rss_bytes()
    first_time, value, grad = step()
    peak = (torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes()) - baseline
    times = [first_time]
    for _ in range(spec["repeats"] if first_time < 5.0 else 0):
        times.append(step()[0])
    result = {"seconds": min(times), "peak_bytes": max(peak, 0), "value": value.item()}
    if name == NAIVE:  # how far the memory-efficient default is from the naive formula on the same batch
        chunked = build_loss("perception_coherence", student_dim=dim, teacher_dim=teacher_dim).to(device)
        student.grad = None
        chunked_value = chunked(student, teacher)
        chunked_value.backward()
        result["max_value_difference"] = abs(chunked_value.item() - value.item())
        result["max_relative_grad_difference"] = ((student.grad - grad).abs().max() / grad.abs().max().clamp_min(1e-30)).item()
    return result


def run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`measure` in a fresh subprocess; the row is ``spec`` plus its results, or plus a ``note`` on failure."""
    command = [sys.executable, "-m", "benchmarks.loss_cost", json.dumps(spec)]
    python_path = os.pathsep.join(filter(None, [REPOSITORY_ROOT, os.environ.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                   env={**os.environ, "PYTHONPATH": python_path})
    except subprocess.TimeoutExpired:
        return {**spec, "note": f"timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {**spec, "note": f"failed: {last_line[:120]}"}
    return {**spec, **json.loads(completed.stdout.strip().splitlines()[-1])}


def measure_losses(options: LossCostOptions, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per batch size x loss, each measured in its own process by :func:`run_one`.

    The naive reference comes right after ``perception_coherence`` unless ``options.naive`` is off, and is
    skipped (its row says why) where its ``[B, B, B]`` comparisons would not fit.
    """
    rows = []
    for batch_size in options.batch_sizes:
        names = list(options.losses)
        if "perception_coherence" in names and options.naive:
            names.insert(names.index("perception_coherence") + 1, NAIVE)
        for name in names:
            spec = dict(loss=name, batch_size=batch_size, dim=options.dim, teacher_dim=options.teacher_dim,
                        device=options.device, repeats=options.repeats)
            if name == NAIVE:
                needed = NAIVE_BYTES_PER_COMPARISON * batch_size**3
                available = available_bytes(options.device)
                if needed > available * options.naive_memory_fraction:
                    rows.append({**spec, "note": f"skipped: needs ~{format_bytes(needed)}, {format_bytes(available)} available"})
                    continue
            rows.append(run_one(spec, options.timeout))
            if progress is not None:
                progress(f"measured {name} at B={batch_size}")
    return rows


def format_bytes(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def markdown_table(rows: list[dict[str, Any]], options: LossCostOptions) -> str:
    """The rows as a markdown table under a line that says where and how they were measured."""
    lines = [
        f"device: {options.device}, 1 thread on CPU, float32, student width {options.dim}, teacher width "
        f"{options.teacher_dim}; time = best forward + backward, "
        "memory = peak growth during the first forward + backward",
        "",
        "| loss | B | fwd+bwd | peak memory | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if "seconds" in row:
            time_text = f"{row['seconds'] * 1e3:.1f} ms" if row["seconds"] < 1 else f"{row['seconds']:.2f} s"
            memory_text = format_bytes(row["peak_bytes"])
        else:
            time_text = memory_text = "—"
        note = row.get("note", "")
        if "max_value_difference" in row:
            note = (
                f"default (chunked) vs naive: |Δ loss| = {row['max_value_difference']:.1e}, "
                f"max |Δ grad| / max |grad| = {row['max_relative_grad_difference']:.1e}"
            )
        lines.append(f"| {row['loss']} | {row['batch_size']} | {time_text} | {memory_text} | {note} |")
    return "\n".join(lines)


if __name__ == "__main__":  # one measurement, as JSON on the last line of stdout (see run_one)
    print(json.dumps(measure(json.loads(sys.argv[1]))))
