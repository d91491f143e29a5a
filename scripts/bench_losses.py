"""Time and peak memory of one forward + backward of every loss, beside the naive perception coherence.

    python scripts/bench_losses.py                                   # all losses, B = 256 1024 2048 4096
    python scripts/bench_losses.py --batch-sizes 256 512 --losses perception_coherence procrustes --device cuda
    python scripts/bench_losses.py --json results.json               # also write the rows as JSON
    python scripts/bench_losses.py --losses perception_coherence perception_coherence:soft_rank=sorted \
        perception_coherence:num_references=128                      # variants of one loss (NAME:KEY=VALUE,...)

Each measurement runs in its own subprocess so that its peak memory is its own; :mod:`benchmarks.loss_cost`
holds the logic and says how time and memory are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.loss_cost import DEFAULT_LOSSES, LossCostOptions, markdown_table, measure_losses  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", "--batch_sizes", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--losses", nargs="+", default=DEFAULT_LOSSES, help="registry names, each optionally with options as NAME:KEY=VALUE,KEY=VALUE (default: all)")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = LossCostOptions(
            batch_sizes=args.batch_sizes, losses=args.losses, dim=args.dim, teacher_dim=args.teacher_dim,
            device=args.device, repeats=args.repeats, naive=not args.no_naive, timeout=args.timeout,
            naive_memory_fraction=args.naive_memory_fraction,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = measure_losses(options, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(markdown_table(rows, options))
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    elif args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
