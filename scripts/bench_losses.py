"""Time and peak memory of one forward + backward of every loss, beside the naive perception coherence.

    python scripts/bench_losses.py --suite all                       # the committed suites (README and docs)
    python scripts/bench_losses.py --suite pc_exact_vs_naive         # one of them (repeatable)
    python scripts/bench_losses.py                                   # all losses, B = 256 1024 2048 4096
    python scripts/bench_losses.py --batch-sizes 256 512 --losses perception_coherence procrustes --device cuda
    python scripts/bench_losses.py --json results.json               # also write the rows as JSON
    python scripts/bench_losses.py --losses perception_coherence perception_coherence:soft_rank=sorted \
        perception_coherence:num_references=128                      # variants of one loss (NAME:KEY=VALUE,...)

A suite (``benchmarks.loss_cost.SUITES``) is measured with its own settings into
``benchmarks/results/loss_cost/NAME.json`` (or ``--results-dir``), with the machine and its load average; into the
committed folder, the blocks of README and docs whose suites are all measured are rendered again. Each measurement
runs in its own subprocess so that its peak memory is its own; :mod:`benchmarks.loss_cost` holds the logic and
says how time and memory are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loss_cost  # noqa: E402
from benchmarks.loss_cost import LossCostOptions, markdown_table, measure_losses  # noqa: E402

# The options of a free-form measurement (LossCostOptions fields, then the others); a suite sets them itself, so
# with --suite they are an error.
OPTION_FIELDS = ("batch_sizes", "losses", "dim", "teacher_dim", "device", "repeats", "timeout", "naive_memory_fraction")
MEASUREMENT_OPTIONS = (*OPTION_FIELDS, "no_naive", "json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = LossCostOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=[*loss_cost.SUITES, "all"],
                        help="measure a committed suite with its own settings and write its result file (repeatable; "
                        "'all': every suite)")
    parser.add_argument("--results-dir", "--results_dir", default=str(loss_cost.RESULTS_DIR),
                        help="where --suite writes NAME.json (default: benchmarks/results/loss_cost, the committed "
                        "files README and docs are rendered from)")
    parser.add_argument("--batch-sizes", "--batch_sizes", type=int, nargs="+",
                        help=f"default: {' '.join(map(str, defaults.batch_sizes))}")
    parser.add_argument("--losses", nargs="+", help="registry names, each optionally with options as "
                        "NAME:KEY=VALUE,KEY=VALUE (default: all)")
    parser.add_argument("--dim", type=int, help=f"student feature width (and number of classes for logit_kd; "
                        f"default {defaults.dim})")
    parser.add_argument("--teacher-dim", "--teacher_dim", type=int,
                        help=f"teacher feature width (default {defaults.teacher_dim})")
    parser.add_argument("--device", help=f"cpu or cuda (cuda:0, ...; default {defaults.device})")
    parser.add_argument("--repeats", type=int,
                        help=f"timed runs after the first (the best is reported; default {defaults.repeats})")
    parser.add_argument("--no-naive", "--no_naive", action="store_true", help="do not run the naive reference")
    parser.add_argument("--timeout", type=float,
                        help=f"seconds allowed per measurement (default {defaults.timeout:.0f})")
    parser.add_argument("--naive-memory-fraction", "--naive_memory_fraction", type=float,
                        help="run the naive reference only where its estimated memory is below this share of what "
                        f"is available (default {defaults.naive_memory_fraction})")
    parser.add_argument("--json", nargs="?", const="-", default=None,
                        help="also write the rows as JSON (to PATH, or stdout)")
    args = parser.parse_args(argv)
    given = [name for name in MEASUREMENT_OPTIONS if getattr(args, name) not in (None, False)]
    if args.suite and given:
        parser.error(f"--suite measures the suite's own settings (benchmarks.loss_cost.SUITES) and writes its result "
                     f"file; drop {', '.join('--' + name.replace('_', '-') for name in given)}")
    if not args.suite and args.results_dir != str(loss_cost.RESULTS_DIR):
        parser.error("--results-dir is where --suite writes its result file; name a --suite, or use --json PATH")
    return args


def suite_names(args: argparse.Namespace) -> list[str]:
    """The suites to measure, in the order given (every one for 'all')."""
    return list(loss_cost.SUITES) if "all" in args.suite else list(dict.fromkeys(args.suite))


def run_suites(args: argparse.Namespace) -> int:
    for name in suite_names(args):
        result = loss_cost.measure_suite(name, args.results_dir,
                                         progress=lambda message: print(message, file=sys.stderr, flush=True))
        print(f"{name}: wrote {loss_cost.result_path(name, args.results_dir)}")
        print(markdown_table(result["rows"], LossCostOptions(**loss_cost.SUITES[name])))
        if loss_cost.is_committed(args.results_dir):  # README and docs show these files: render their blocks
            rendered, pending = loss_cost.render_committed_suites()
            for document, names in rendered.items():
                print(f"rendered {document}: {', '.join(names)}")
            for block, suites in pending.items():
                print(f"{block} waits for: {'; '.join(loss_cost.suite_command(suite) for suite in suites)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.suite:
        return run_suites(args)
    given = {name: getattr(args, name) for name in OPTION_FIELDS if getattr(args, name) is not None}
    try:
        options = LossCostOptions(**given, naive=not args.no_naive)
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
