"""Run the perception-coherence study (or a shard of it) and render its tables: see benchmarks/study.py; the
causal-LM study (``--benchmarks lm``): benchmarks/lm_study.py.

    python scripts/study.py run --benchmarks text vision --seeds 0            # the screening grid
    python scripts/study.py run --variants pc_cos_t0.1 projected_mse --seeds 0 1 2
    python scripts/study.py run --shard 1/2 ...                               # every 2nd pending run
    python scripts/study.py run --reuse_any_version ...                       # keep runs of other library versions
    python scripts/study.py report
    python scripts/study.py run --benchmarks lm --seeds 0                     # LM: every arm at both weights
    python scripts/study.py run --benchmarks lm --seeds 1 2                   # LM: the chosen weights' other seeds
    python scripts/study.py report --benchmarks lm                            # LM: tables into README and docs
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `benchmarks` is not installed

from benchmarks.lm_study import LMStudyOptions, run_lm_study, write_lm_report  # noqa: E402
from benchmarks.study import StudyOptions, run_study, write_study_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--benchmarks", nargs="+", default=["text", "vision"], choices=["text", "vision", "lm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=None,
                        help="variant names; with lm, arm names such as ce_kd_gram (default: the whole grid)")
    parser.add_argument("--output_dir", default="benchmarks/results/study")
    parser.add_argument("--work_dir", default="outputs/study")
    parser.add_argument("--shard", default="0/1", help="INDEX/COUNT: run every COUNT-th pending run")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--reuse_any_version", action="store_true",
                        help="text/vision: reuse a stored run whose settings match whatever its library versions and "
                             "corpus (default: run it again when they differ; a run stored without them differs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    embedding_benchmarks = [benchmark for benchmark in args.benchmarks if benchmark != "lm"]
    if args.command == "report":
        for benchmark, path in write_study_report(args.output_dir, embedding_benchmarks).items():
            print(f"{benchmark}: {path}")
        if "lm" in args.benchmarks:
            print(f"lm: {write_lm_report(args.output_dir)}")
        return 0
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.num_threads)
    index, count = (int(part) for part in args.shard.split("/"))
    with threadpool_limits(limits=1, user_api="blas"):
        if embedding_benchmarks:
            options = StudyOptions(embedding_benchmarks, args.seeds, args.variants, args.output_dir, args.work_dir,
                                   shard=(index, count), reuse_any_version=args.reuse_any_version)
            for path in run_study(options):
                print(path)
        if "lm" in args.benchmarks:
            lm_options = LMStudyOptions(args.seeds, args.variants, args.output_dir, args.work_dir, shard=(index, count))
            for path in run_lm_study(lm_options):
                print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
