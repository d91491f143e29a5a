"""Check hf_pcoh on one GPU at real scale, in one command; results in benchmarks/results/gpu_*.json.

    python scripts/gpu_check.py                          # all three, about 10 minutes on one H100/H200
    python scripts/gpu_check.py --only loss_cost step_ratio
    python scripts/gpu_check.py --batch_size 256         # the full run and the step ratio at B = 256

1. minilm_wordnet: the minilm-wordnet recipe in bf16 on the full WordNet training split, end to end;
2. loss_cost: perception coherence forward + backward at B = 1024, 4096, 8192 beside the naive formula;
3. step_ratio: distillation step / (teacher forward + plain-MSE student step), per loss, bf16.

benchmarks/gpu_check.py holds the logic and says what each file contains. Without a CUDA GPU the
script says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from transformers.utils import logging as transformers_logging

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_check import (  # noqa: E402
    distillation_step_ratio,
    full_recipe_run,
    missing_cuda_message,
    perception_coherence_cost,
    write_result,
)

CHECKS = ["minilm_wordnet", "loss_cost", "step_ratio"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=CHECKS, help="run only these checks")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=None,
                        help="per-device batch of the full run and of the step ratio (default: the recipe's, 64)")
    parser.add_argument("--losses", nargs="+", default=None, help="losses of the step ratio (default: every feature loss)")
    parser.add_argument("--output_dir", "--output-dir", default=None,
                        help="keep the full run's student here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing_cuda_message()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    transformers_logging.set_verbosity_error()
    if "minilm_wordnet" in args.only:
        run = full_recipe_run("minilm-wordnet", args.batch_size, args.output_dir)
        print(f"minilm-wordnet, full split, bf16: {run['train_metrics']} -> {write_result('minilm_wordnet', run)}")
    if "loss_cost" in args.only:
        rows, table = perception_coherence_cost()
        print(f"{table}\n-> {write_result('loss_cost', {'rows': rows, 'table': table})}")
    if "step_ratio" in args.only:
        rows, table = distillation_step_ratio("minilm-wordnet", args.losses, args.batch_size)
        print(f"{table}\n-> {write_result('step_ratio', {'rows': rows, 'table': table})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
