"""Time and peak memory of one forward + backward of every loss, beside the naive perception coherence.

    python scripts/bench_losses.py                                   # all losses, B = 256 1024 2048 4096
    python scripts/bench_losses.py --batch-sizes 256 512 --losses perception_coherence procrustes --device cuda
    python scripts/bench_losses.py --json results.json               # also write the rows as JSON

Each measurement runs in its own subprocess so that its peak memory is its own: on CUDA the growth of
``torch.cuda.max_memory_allocated`` over the inputs, on CPU the growth of the process's peak resident set
(``ru_maxrss``) over what it held once the inputs were built. One thread on CPU. The naive reference is
perception coherence with ``implementation="reference"`` (autograd over the ``[B, B, B]`` comparisons); it
is skipped, and the table says so, where its estimated memory exceeds half of what is available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

NAIVE = "perception_coherence (naive reference)"
# Bytes per element of the [B, B, B] comparisons that the naive reference holds at its peak (measured:
# 12 GiB at B = 1024 on an H100), with a margin.
NAIVE_BYTES_PER_COMPARISON = 16
DEFAULT_LOSSES = ["perception_coherence", "cospress", "procrustes", "gram", "cka", "projected_mse", "rkd_distance", "logit_kd"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", "--batch_sizes", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--losses", nargs="+", default=DEFAULT_LOSSES, help="registry names (default: all)")
    parser.add_argument("--dim", type=int, default=384, help="student feature width (and number of classes for logit_kd)")
    parser.add_argument("--teacher-dim", "--teacher_dim", type=int, default=768, help="teacher feature width")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0, ...)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first (the best is reported)")
    parser.add_argument("--no-naive", "--no_naive", action="store_true", help="do not run the naive reference")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per measurement")
    parser.add_argument("--naive-memory-fraction", "--naive_memory_fraction", type=float, default=0.5,
                        help="run the naive reference only where its estimated memory is below this share of what "
                        "is available (default 0.5)")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="also write the rows as JSON (to PATH, or stdout)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    return parser.parse_args(argv)


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
    """One loss at one batch size: first run for memory (and time), then ``repeats`` timed runs."""
    import torch

    from hf_pcoh.losses import build_loss

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
        loss = build_loss(name, student_dim=dim, teacher_dim=teacher_dim)
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
    command = [sys.executable, os.path.abspath(__file__), "--measure", json.dumps(spec)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "note": f"timed out after {timeout:.0f} s"}
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {**spec, "note": f"failed: {last_line[:120]}"}
    return {**spec, **json.loads(completed.stdout.strip().splitlines()[-1])}


def format_bytes(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def markdown_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"device: {args.device}, 1 thread on CPU, float32, student width {args.dim}, teacher width {args.teacher_dim}; "
        "time = best forward + backward, memory = peak growth during the first forward + backward",
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    rows = []
    for batch_size in args.batch_sizes:
        names = list(args.losses)
        if "perception_coherence" in names and not args.no_naive:
            names.insert(names.index("perception_coherence") + 1, NAIVE)
        for name in names:
            spec = dict(loss=name, batch_size=batch_size, dim=args.dim, teacher_dim=args.teacher_dim,
                        device=args.device, repeats=args.repeats)
            if name == NAIVE:
                needed = NAIVE_BYTES_PER_COMPARISON * batch_size**3
                available = available_bytes(args.device)
                if needed > available * args.naive_memory_fraction:
                    rows.append({**spec, "note": f"skipped: needs ~{format_bytes(needed)}, {format_bytes(available)} available"})
                    continue
            rows.append(run_one(spec, args.timeout))
            print(f"measured {name} at B={batch_size}", file=sys.stderr, flush=True)
    table = markdown_table(rows, args)
    print(table)
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    elif args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
