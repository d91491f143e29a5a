"""Check hf_pcoh on one GPU (an H200: at most 6 minutes), one JSON per part; config-built models, synthetic tokens.

    python scripts/gpu_check.py                                 # every part -> benchmarks/results/gpu_check/
    python scripts/gpu_check.py --only losses teacher_cache     # some parts
    python scripts/gpu_check.py --cpu-smoke --output_dir /tmp/x # every part on CPU at tiny shapes (the test runs it)

Parts (benchmarks/gpu_check.py holds the logic, its budget and what each JSON holds):
  losses         perception coherence (pairwise and sorted soft rank) and CosPress at B = 1024, 4096, 8192
                 (features 384 / 1024 wide), float32 vs bf16 autocast: value, cosine between the two gradients,
                 forward+backward time (CUDA events), peak memory; an out-of-memory row is recorded as such
  large_pair     OPT-6.7B-shaped teacher (bf16) -> OPT-1.3B-shaped student with DistillationTrainer under FSDP2
                 in one process (full shard, FULL_STATE_DICT, bf16), 20 steps of 16 x 256 tokens, layers 16/12 and
                 last, last-token pooling, perception coherence + CosPress: step time, tokens/s, peak memory;
                 checkpoint at step 10, a fresh trainer resumes to step 20, final weights compared
  teacher_cache  the same teacher's cache pass (--teacher_cache) over 4096 sequences of 256 tokens: time,
                 tokens/s, peak memory

Each JSON holds the machine (GPU, torch / transformers / accelerate versions, git SHA), the settings and
the figures, or the error and traceback of a part that failed (the other parts still run; exit status 1).
Without a CUDA GPU the script says so in one line and exits with status 2 (unless --cpu-smoke).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_check import (  # noqa: E402
    CPU_SMOKE,
    DEFAULT_OUTPUT_DIR,
    GPU_SCALE,
    PART_HELP,
    PARTS,
    PartResult,
    missing_cuda_message,
    run_check,
)

NO_GPU_STATUS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="parts:\n" + "\n".join(textwrap.fill(f"{part}: {PART_HELP[part]}", width=100, initial_indent="  ",
                                                      subsequent_indent="    ") for part in PARTS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help=f"run only these parts, in this order (default: all of {', '.join(PARTS)})")
    parser.add_argument("--output_dir", "--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help="folder of the JSON files, one per part: <output_dir>/<part>.json (default: "
                             "benchmarks/results/gpu_check/)")
    parser.add_argument("--scratch_dir", "--scratch-dir", default=None,
                        help="where the large pair's checkpoint (16 GB at the GPU scale) and the teacher cache are "
                             "written, in a temporary folder removed afterwards (default: the system's temp folder)")
    parser.add_argument("--cpu-smoke", "--cpu_smoke", action="store_true",
                        help="run every part on CPU at tiny shapes (B = 64/128, a 2-layer OPT pair of width 32/16, "
                             "4 steps resumed at step 2, FSDP2 on a gloo group of one process, a 64-row cache), "
                             "writing the same JSON files: the GPU path, tested where there is no GPU")
    return parser.parse_args(argv)


def print_part(result: PartResult) -> None:
    print(f"\n## {result.part} ({result.wall_seconds:.1f} s) -> {result.path}\n\n{result.table}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke:
        problem = missing_cuda_message()
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return NO_GPU_STATUS
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    scale = CPU_SMOKE if args.cpu_smoke else GPU_SCALE
    if args.cpu_smoke:
        import torch

        torch.set_num_threads(1)  # tiny shapes gain nothing from a second thread on a busy machine
    results = run_check(args.only, scale, args.output_dir, args.scratch_dir, progress=print_part)
    failed = [result.part for result in results if result.failed]
    print(f"\n{len(results)} part(s) in {sum(result.wall_seconds for result in results):.0f} s; JSON in {args.output_dir}"
          + (f"; FAILED: {', '.join(failed)} (traceback in the JSON)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
