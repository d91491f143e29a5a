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

The figures that README, docs/benchmarks.md and docs/study.md show come from named suites (:data:`SUITES`):
``python scripts/bench_losses.py --suite NAME`` measures one and writes ``benchmarks/results/loss_cost/NAME.json``
(the options, the rows, the machine and its load average before and after), then renders the documents' blocks
(``<!-- rendered:loss_cost_* -->``, :func:`committed_blocks`) whose suites are all measured;
``tests/test_rendered_tables_all.py`` fails when a committed block differs from its rendering.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_pcoh.errors import unknown_name_message
from hf_pcoh.losses import LOSSES, build_loss

NAIVE = "perception_coherence (naive reference)"
# Bytes per element of the [B, B, B] comparisons that the naive reference holds at its peak (measured:
# 12 GiB at B = 1024 on an H100), with a margin.
NAIVE_BYTES_PER_COMPARISON = 16
DEFAULT_LOSSES = ["perception_coherence", "cospress", "procrustes", "gram", "cka", "projected_mse", "rkd_distance", "logit_kd"]
# A loss whose first forward + backward takes this long is not run again (its time is that one run).
SINGLE_RUN_SECONDS = 5.0
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
    # loss spec -> batch sizes not to run (too slow): their rows say "not run: ..." instead of figures
    skip: dict[str, list[int]] = field(default_factory=dict)

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
        for spec, batch_sizes in self.skip.items():
            if spec not in self.losses and not (spec == NAIVE and self.naive):
                raise ValueError(f"skip: {spec!r} is not one of the losses measured ({self.losses})")
            if not set(batch_sizes) <= set(self.batch_sizes):
                raise ValueError(f"skip: {spec!r} at {batch_sizes}: every batch size must be one of "
                                 f"batch_sizes={self.batch_sizes}")


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
    ``seconds`` (best run), ``runs`` (how many were timed: one where the first takes :data:`SINGLE_RUN_SECONDS` or
    more), ``peak_bytes`` and the loss ``value``; the naive reference's row adds
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
    for _ in range(spec["repeats"] if first_time < SINGLE_RUN_SECONDS else 0):
        times.append(step()[0])
    result = {"seconds": min(times), "runs": len(times), "peak_bytes": max(peak, 0), "value": value.item()}
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
    skipped (its row says why, with ``needed_bytes`` and ``available_bytes``) where its ``[B, B, B]`` comparisons
    would not fit. A loss at a batch size of ``options.skip`` is not run; its row's note says so.
    """
    rows = []
    for batch_size in options.batch_sizes:
        names = list(options.losses)
        if "perception_coherence" in names and options.naive:
            names.insert(names.index("perception_coherence") + 1, NAIVE)
        for name in names:
            spec = dict(loss=name, batch_size=batch_size, dim=options.dim, teacher_dim=options.teacher_dim,
                        device=options.device, repeats=options.repeats)
            if batch_size in options.skip.get(name, ()):
                rows.append({**spec, "note": f"not run: the suite leaves {name} out at B={batch_size} (skip)"})
                continue
            if name == NAIVE:
                needed = NAIVE_BYTES_PER_COMPARISON * batch_size**3
                available = available_bytes(options.device)
                if needed > available * options.naive_memory_fraction:
                    note = f"skipped: needs ~{format_bytes(needed)}, {format_bytes(available)} available"
                    rows.append({**spec, "note": note, "needed_bytes": needed, "available_bytes": available})
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


# --------------------------------------------------------------------------- the committed suites

EXACT = "perception_coherence"
SORTED = "perception_coherence:soft_rank=sorted"
SAMPLED_128 = "perception_coherence:num_references=128"
SAMPLED_256 = "perception_coherence:num_references=256"
# The suites whose result files README and docs show: name -> LossCostOptions keyword arguments. Measured by
# ``python scripts/bench_losses.py --suite NAME`` into RESULTS_DIR/NAME.json.
SUITES: dict[str, dict[str, Any]] = {
    # the default against the naive [B, B, B] formula (which needs ~16 GiB at B=1024 and ~128 GiB at 2048)
    "pc_exact_vs_naive": dict(losses=[EXACT], batch_sizes=[256, 512, 1024, 2048], naive=True,
                              naive_memory_fraction=0.8),
    "all_losses_b1024": dict(losses=list(DEFAULT_LOSSES), batch_sizes=[1024], naive=False),
    # 256 sampled references at B = 4096 and 8192: about twice the time of 128 (~2 min at 8192), left out
    "pc_large_batches": dict(losses=[SORTED, SAMPLED_128, SAMPLED_256], batch_sizes=[256, 1024, 2048, 4096, 8192],
                             naive=False, skip={SAMPLED_256: [4096, 8192]}),
}
RESULTS_DIR = Path(REPOSITORY_ROOT) / "benchmarks" / "results" / "loss_cost"
LOAD_AVERAGE_NOTE = ("os.getloadavg() (1, 5 and 15 min) before the first and after the last measurement: the "
                     "measurement keeps about one core busy; more than that is other processes sharing the machine")


def suite_command(name: str) -> str:
    return f"python scripts/bench_losses.py --suite {name}"


def suite_options(name: str) -> LossCostOptions:
    if name not in SUITES:
        raise ValueError(f"suite: {unknown_name_message('suite', name, list(SUITES))}")
    return LossCostOptions(**SUITES[name])


def result_path(name: str, results_dir: str | os.PathLike = RESULTS_DIR) -> Path:
    return Path(results_dir) / f"{name}.json"


def is_committed(results_dir: str | os.PathLike) -> bool:
    return Path(results_dir).resolve() == RESULTS_DIR.resolve()


def measure_suite(name: str, results_dir: str | os.PathLike = RESULTS_DIR,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the suite ``name`` and write its result file: the command and options, the rows as
    :func:`measure_losses` returns them, the machine, and the load average before and after (other processes
    may share the machine while it runs: the file says how busy it was)."""
    from benchmarks.provenance import describe_machine
    from hf_pcoh.artifacts import write_json

    options = suite_options(name)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = measure_losses(options, progress)
    result = {
        "suite": name,
        "command": suite_command(name),
        "options": asdict(options),
        "machine": describe_machine(options.device),
        "threads": 1,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg()), "note": LOAD_AVERAGE_NOTE},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    path = result_path(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def read_results(names: Sequence[str], results_dir: str | os.PathLike = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """The result files of the suites ``names``; a missing one is an error naming the command that writes it."""
    missing = [name for name in names if not result_path(name, results_dir).is_file()]
    if missing:
        raise FileNotFoundError(
            f"loss-cost result files missing in {results_dir}: {', '.join(f'{name}.json' for name in missing)}. "
            f"Measure them (on a quiet machine): {'; '.join(suite_command(name) for name in missing)}")
    return {name: json.loads(result_path(name, results_dir).read_text(encoding="utf-8")) for name in names}


# --------------------------------------------------------------------------- the documents' blocks

SUMMARY_BATCH = 1024  # README quotes the sampled references at this batch
STUDY_BATCH = 1024
# docs/study.md's table at STUDY_BATCH: (row label, loss spec whose cost it shows, the study's variant)
STUDY_ROWS = (
    ("exact (pairwise sigmoid, every point a reference)", EXACT, "pc_cos_t0.1_b1024"),
    ("`soft_rank: sorted` (ramp kernel by sorting, every point a reference)", SORTED, "pc_cos_t0.1_b1024_sorted"),
    ("`num_references: 256` (sampled reference points)", SAMPLED_256, "pc_cos_t0.1_b1024_m256"),
    ("`num_references: 128`", SAMPLED_128, "pc_cos_t0.1_b1024_m128"),
)
# (benchmark, validation metric, header) of that table
STUDY_COLUMNS = (
    ("vision", "teacher_neighbour_recall@10/cosine", "vision val recall@10"),
    ("vision", "dissimilarity_spearman/cosine", "vision val Spearman"),
    ("text", "teacher_neighbour_recall@10/cosine", "text val recall@10"),
)
RECALL = "teacher_neighbour_recall@10/cosine"
PC_EXACT_LABELS = {EXACT: "ours (folded comparisons, custom autograd Function)",
                   NAIVE: "naive reference (autograd over the [B, B, B] comparisons)"}


def three_significant(value: float) -> str:
    decimals = 2 if value < 9.995 else 1 if value < 99.95 else 0
    return f"{value:.{decimals}f}"


def small_or_large(small: float, small_unit: str, large: float, large_unit: str, small_below: float) -> str:
    """``small`` in ``small_unit`` with one decimal below 10 and none up to ``small_below``; above it ``large`` in
    ``large_unit`` to three significant digits."""
    if small < 9.95:
        return f"{small:.1f} {small_unit}"
    if small < small_below:
        return f"{small:.0f} {small_unit}"
    return f"{three_significant(large)} {large_unit}"


def format_seconds(seconds: float) -> str:
    """``90 ms`` below a second (``4.5 ms`` below 10 ms), three significant digits above (``6.95 s``, ``65.3 s``)."""
    return small_or_large(seconds * 1e3, "ms", seconds, "s", small_below=999.5)


def format_memory(count: float) -> str:
    """``87 MiB`` below a GiB (``4.5 MiB`` below 10 MiB), three significant digits above (``2.13 GiB``)."""
    return small_or_large(count / 2**20, "MiB", count / 2**30, "GiB", small_below=1023.5)


def format_difference(value: float) -> str:
    """``4.1e-7`` (``0`` for zero)."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def and_list(items: Sequence[str]) -> str:
    """``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def batch_list(rows: Sequence[dict[str, Any]]) -> str:
    """``256, 512 and 1,024``: the batch sizes of ``rows``."""
    return and_list([f"{row['batch_size']:,}" for row in rows])


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def find_row(result: dict[str, Any], loss: str, batch_size: int) -> dict[str, Any] | None:
    return next((row for row in result["rows"] if row["loss"] == loss and row["batch_size"] == batch_size), None)


def measured_row(result: dict[str, Any], loss: str, batch_size: int) -> dict[str, Any]:
    """The row of ``loss`` at ``batch_size``, which must hold figures (a block quotes it)."""
    row = find_row(result, loss, batch_size)
    if row is None or "seconds" not in row:
        state = "has no row" if row is None else f"was not measured ({row.get('note')})"
        raise ValueError(f"{result['suite']}: {loss} at B={batch_size} {state}; the block quoting it needs it: "
                         f"measure again with {result['command']}")
    return row


def cost_cell(row: dict[str, Any] | None) -> str:
    """``90 ms, 87 MiB``; for a row not measured, why: ``needs ~128 GiB: not run``, ``not run``, ``timed out ...``."""
    if row is None:
        return "—"
    if "seconds" in row:
        return f"{format_seconds(row['seconds'])}, {format_memory(row['peak_bytes'])}"
    if "needed_bytes" in row:
        return f"needs ~{format_memory(row['needed_bytes'])}: not run"
    return row.get("note", "not run").split(":")[0]


def loss_label(spec: str) -> str:
    """``CosPress`` for a loss; for a variant given by its options, the options in backticks (``soft_rank: sorted``)."""
    from benchmarks.default_run import LOSS_NAMES

    name, options = parse_loss_spec(spec)
    if options:
        return "`" + ", ".join(f"{key}: {value}" for key, value in options.items()) + "`"
    return {**LOSS_NAMES, "logit_kd": "logit KD"}.get(name, name)


def measured_where(result: dict[str, Any], load: bool = True) -> str:
    """``AMD EPYC ..., 2 cores, 1 thread, load average 0.05 before and 1.01 after (1 min); float32, widths 384/768``."""
    machine, options = result["machine"], result["options"]
    where = machine["gpu"] if machine.get("gpu") else f"{machine['cpu']}, {result['threads']} thread"
    if load:
        before, after = result["load_average"]["before"][0], result["load_average"]["after"][0]
        where += f", load average {before:.2f} before and {after:.2f} after (1 min)"
    return f"{where}; float32, widths {options['dim']}/{options['teacher_dim']}"


def caption(result: dict[str, Any]) -> str:
    """The line above a table: the command, where it ran, and what time and memory mean."""
    return (f"`{result['command']}`: each measurement in its own process; {measured_where(result)}; time = the best "
            f"forward + backward of up to {result['options']['repeats'] + 1} runs (one where the first takes "
            f"{SINGLE_RUN_SECONDS:.0f} s or more), memory = peak growth during the first:")


def cost_table(result: dict[str, Any], corner: str, labels: dict[str, str] | None = None) -> str:
    """One row per loss of ``result``, one column per batch size, cells ``time, memory``."""
    batch_sizes = result["options"]["batch_sizes"]
    losses = list(dict.fromkeys(row["loss"] for row in result["rows"]))
    lines = [markdown_row([corner, *(f"B={batch_size}" for batch_size in batch_sizes)]),
             "|---|" + "---:|" * len(batch_sizes)]
    for loss in losses:
        cells = [cost_cell(find_row(result, loss, batch_size)) for batch_size in batch_sizes]
        lines.append(markdown_row([(labels or {}).get(loss) or loss_label(loss), *cells]))
    return "\n".join(lines)


def pc_exact_block(result: dict[str, Any]) -> str:
    """docs/benchmarks.md: the default perception coherence beside its naive reference, and how far apart they are."""
    compared = [row for row in result["rows"] if "max_value_difference" in row]
    if compared:
        largest = max(row["max_value_difference"] for row in compared)
        agreement = (
            f"Ours against the naive reference on the same inputs, at every batch size where both ran "
            f"(B = {batch_list(compared)}): |Δ loss| {'= 0' if largest == 0 else '≤ ' + format_difference(largest)}"
            f", max |Δ gradient| / "
            f"max |gradient| ≤ {format_difference(max(row['max_relative_grad_difference'] for row in compared))}.")
    else:
        agreement = "The naive reference ran at no batch size here: nothing to compare."
    return "\n".join([caption(result), "", cost_table(result, "perception coherence", PC_EXACT_LABELS), "", agreement])


def other_losses_block(result: dict[str, Any]) -> str:
    """docs/benchmarks.md: every loss at the suite's batch size."""
    return "\n".join([caption(result), "", cost_table(result, "loss")])


def large_batches_block(result: dict[str, Any]) -> str:
    """docs/benchmarks.md: the sorted soft rank and sampled references up to large batches."""
    return "\n".join([caption(result), "", cost_table(result, "perception coherence")])


def device_phrase(result: dict[str, Any]) -> str:
    machine = result["machine"]
    return f"one {machine['gpu']}" if machine.get("gpu") else "one CPU thread"


def cost_summary(exact: dict[str, Any], large: dict[str, Any]) -> str:
    """README: the sorted rank's cost by batch size against the exact rank's, and sampled references at B=1024."""
    def measured(result: dict[str, Any], loss: str) -> list[dict[str, Any]]:
        rows = [row for row in result["rows"] if row["loss"] == loss and "seconds" in row]
        if not rows:
            raise ValueError(f"{result['suite']}: {loss} was measured at no batch size; measure again with "
                             f"{result['command']}")
        return rows

    sorted_rows, exact_rows = measured(large, SORTED), measured(exact, EXACT)
    sorted_parts = [f"{format_seconds(row['seconds'])} at {'B=' if index == 0 else ''}{row['batch_size']:,}"
                    for index, row in enumerate(sorted_rows)]
    largest = sorted_rows[-1]
    sorted_parts[-1] = (f"{format_seconds(largest['seconds'])} ({format_memory(largest['peak_bytes'])}) at "
                        f"{'B=' if len(sorted_rows) == 1 else ''}{largest['batch_size']:,}")
    sampled = measured_row(large, SAMPLED_128, SUMMARY_BATCH)
    options = large["options"]
    return (
        f"Forward + backward on {device_phrase(large)} (widths {options['dim']}/{options['teacher_dim']}; "
        f"`{large['command']}` and `--suite {exact['suite']}`): {and_list(sorted_parts)} with the sorted rank, against "
        f"{and_list([format_seconds(row['seconds']) for row in exact_rows])} for the exact rank at B = "
        f"{batch_list(exact_rows)}; {loss_label(SAMPLED_128)} takes "
        f"{format_seconds(sampled['seconds'])} at B={SUMMARY_BATCH:,} (and costs quality, see the study).")


def committed_study_results() -> dict[str, list[dict[str, Any]]]:
    """The study's committed runs of the benchmarks :data:`STUDY_COLUMNS` reads, by benchmark."""
    from benchmarks.study import COMMITTED_RESULTS, load_results

    return {benchmark: load_results(str(COMMITTED_RESULTS), benchmark)
            for benchmark in dict.fromkeys(benchmark for benchmark, _, _ in STUDY_COLUMNS)}


def study_validation(study_results: dict[str, list[dict[str, Any]]], benchmark: str, variant: str) -> dict[str, float]:
    """The validation metrics of the seed-0 run of ``variant`` on ``benchmark``."""
    run = next((run for run in study_results[benchmark] if run["variant"] == variant and run["seed"] == 0), None)
    if run is None:
        raise ValueError(f"{benchmark}: no seed-0 run of {variant} in benchmarks/results/study/{benchmark}; run it "
                         f"(python scripts/study.py run --benchmarks {benchmark} --variants {variant} --seeds 0)")
    return run["metrics"]["validation"]


def study_b1024_block(exact: dict[str, Any], large: dict[str, Any],
                      study_results: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """docs/study.md: cost (the suites) and quality (the study's seed-0 validation runs) of each way of ranking at
    B=1024, and how much faster the sorted rank is than the exact one."""
    study_results = committed_study_results() if study_results is None else study_results
    variants = ", ".join(f"`{variant}`" for _, _, variant in STUDY_ROWS)
    lines = [
        f"Cost: `{exact['command']}` (exact) and `--suite {large['suite']}` (the others), "
        f"{measured_where(large, load=False)}; quality: the study's seed-0 runs {variants}, validation split, cosine:",
        "",
        markdown_row([f"perception coherence at B={STUDY_BATCH}", "fwd+bwd", "peak memory",
                      *(header for _, _, header in STUDY_COLUMNS)]),
        "|---|" + "---:|" * (2 + len(STUDY_COLUMNS)),
    ]
    for label, loss, variant in STUDY_ROWS:
        row = measured_row(exact if loss == EXACT else large, loss, STUDY_BATCH)
        quality = [f"{study_validation(study_results, benchmark, variant)[key]:.3f}"
                   for benchmark, key, _ in STUDY_COLUMNS]
        lines.append(markdown_row([label, format_seconds(row["seconds"]), format_memory(row["peak_bytes"]), *quality]))
    speedup = measured_row(exact, EXACT, STUDY_BATCH)["seconds"] / measured_row(large, SORTED, STUDY_BATCH)["seconds"]
    lines += ["", f"At B={STUDY_BATCH} the sorted rank's forward + backward is {speedup:.0f}x faster than the "
              "exact rank's."]
    return "\n".join(lines)


# Each block of README and docs: the suites it shows, and its renderer (called with their results in that order).
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "loss_cost_pc_exact": (("pc_exact_vs_naive",), pc_exact_block),
    "loss_cost_others": (("all_losses_b1024",), other_losses_block),
    "loss_cost_large": (("pc_large_batches",), large_batches_block),
    "loss_cost_summary": (("pc_exact_vs_naive", "pc_large_batches"), cost_summary),
    "loss_cost_study_b1024": (("pc_exact_vs_naive", "pc_large_batches"), study_b1024_block),
}


def rendered_blocks(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The blocks whose suites are all in ``results`` (suite name -> the content of its result file)."""
    return {name: render(*(results[suite] for suite in suites))
            for name, (suites, render) in BLOCKS.items() if set(suites) <= set(results)}


def committed_blocks(results_dir: str | os.PathLike = RESULTS_DIR) -> dict[str, str]:
    """Every block, rendered from the committed result files (a missing one is an error naming its command)."""
    return rendered_blocks(read_results(list(SUITES), results_dir))


def render_committed_suites() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """After measuring: the blocks whose suites all have committed result files, rendered into the documents (the
    names replaced, by document); and, by block, the suites still to measure for the others."""
    from benchmarks.rendered_tables import render_into_documents

    results = read_results([name for name in SUITES if result_path(name, RESULTS_DIR).is_file()], RESULTS_DIR)
    pending = {name: [suite for suite in suites if suite not in results]
               for name, (suites, _) in BLOCKS.items() if not set(suites) <= set(results)}
    return render_into_documents(rendered_blocks(results)), pending


def quoted_figures(study_results: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, list[str]]:
    """The quality figures that prose beside the cost tables quotes from the study's runs at B=1024 (and 256),
    by document; each must appear in it as written here."""
    study_results = committed_study_results() if study_results is None else study_results

    def recall(benchmark: str, variant: str) -> float:
        return study_validation(study_results, benchmark, variant)[RECALL]

    sampled = ("pc_cos_t0.1_b1024_m256", "pc_cos_t0.1_b1024_m128")
    losses = {benchmark: [recall(benchmark, "pc_cos_t0.1_b1024") - recall(benchmark, variant) for variant in sampled]
              for benchmark in ("vision", "text")}
    vision = f"{min(losses['vision']):.2f}–{max(losses['vision']):.2f}"
    text = f"{min(losses['text']):.3f}–{max(losses['text']):.3f}"
    return {
        "README.md": [f"cost {vision} recall at B=1024 on vision and {text} on text"],
        "docs/benchmarks.md": [f"sampled references lose {vision} recall at B=1024"],
        "docs/study.md": [
            f"student loses {vision} recall against the exact loss",
            f"the text student loses only {text} ({recall('text', sampled[0]):.3f} and "
            f"{recall('text', sampled[1]):.3f} against {recall('text', 'pc_cos_t0.1_b1024'):.3f})",
            f"({recall('vision', 'pc_cos_t0.1_b256_sorted'):.3f} against {recall('vision', 'pc_cos_t0.1_b256'):.3f}; "
            f"{recall('vision', 'pc_cos_t0.1_b1024_sorted'):.3f} against {recall('vision', 'pc_cos_t0.1_b1024'):.3f})",
        ],
    }


if __name__ == "__main__":  # one measurement, as JSON on the last line of stdout (see run_one)
    print(json.dumps(measure(json.loads(sys.argv[1]))))
