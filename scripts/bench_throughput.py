"""Samples/s of a distillation step beside a teacher forward and a plain-MSE student step, per recipe and loss.

    python scripts/bench_throughput.py                                    # minilm-wordnet and fashion-mnist, all losses
    python scripts/bench_throughput.py minilm-wordnet --losses perception_coherence projected_mse --steps 5
    python scripts/bench_throughput.py --device cuda --bf16 --batch_size 256 --json throughput.json

Targets: distillation step <= 1.15 x (teacher forward + student step with plain MSE);
with cached teacher features an epoch <= 1.10 x plain student training. Two tables: per step (collation
excluded, benchmarks.throughput), where the ratio to the plain step is the stricter form of the cache target;
and per epoch through Trainer.train with data loading (benchmarks.cache_epochs), the target as written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from transformers.utils import logging as transformers_logging

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cache_epochs import epoch_markdown_table, measure_cache_epochs  # noqa: E402
from benchmarks.throughput import describe_machine, markdown_table, measure_recipe, render_if_committed  # noqa: E402

DEFAULT_RECIPES = ["minilm-wordnet", "fashion-mnist"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=DEFAULT_RECIPES, help="built-in recipe names or YAML files")
    parser.add_argument("--losses", nargs="+", default=None, help="registry names (default: every feature loss)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="train with bf16 mixed precision (the Trainer's flag)")
    parser.add_argument("--epoch_batches", "--epoch-batches", type=int, default=20,
                        help="batches of the epoch trained from the teacher cache beside plain student training "
                             "(Trainer.train, data loading included); 0 skips that table")
    parser.add_argument("--epoch_rounds", "--epoch-rounds", type=int, default=2, help="epochs per side (the median is reported)")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="also write the rows as JSON (to PATH, or stdout)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    rows, epoch_rows = [], []
    try:
        for recipe in args.recipes:
            with tempfile.TemporaryDirectory() as output_dir:
                rows += measure_recipe(recipe, output_dir, args.losses, args.steps, args.warmup, args.batch_size,
                                       args.device, args.bf16)
            if args.epoch_batches:
                with tempfile.TemporaryDirectory() as output_dir:
                    epoch_rows += measure_cache_epochs(recipe, output_dir, args.losses, args.epoch_batches, args.warmup,
                                                       args.epoch_rounds, args.batch_size, args.device, args.bf16)
            print(f"measured {recipe}", file=sys.stderr, flush=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    machine = (
        f"{describe_machine(args.device)}, {torch.get_num_threads()} thread(s), "
        f"{'bf16 mixed precision' if args.bf16 else 'float32'}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(machine)
    print()
    print(markdown_table(rows))
    if epoch_rows:
        print()
        print(epoch_markdown_table(epoch_rows))
    payload = {"machine": machine, "rows": [row.as_dict() for row in rows], "epoch_rows": [row.as_dict() for row in epoch_rows]}
    if args.json == "-":
        print(json.dumps(payload, indent=2))
    elif args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2)
        rendered = render_if_committed(args.json)  # a committed file: docs/benchmarks.md's table follows it
        if rendered:
            print(f"rendered into docs: {', '.join(rendered)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
