"""Compare every distillation loss on the real benchmarks: ``python scripts/benchmark.py [--scale tiny|cpu|gpu]``.

Writes ``benchmarks/results/<benchmark>.{json,md}`` and two plots per benchmark. ``--help`` lists the
options; :mod:`benchmarks.quality` holds the logic and documents what each scale trains.
"""

import logging
import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import HfArgumentParser  # noqa: E402

from benchmarks.quality import BenchmarkOptions, run_benchmarks  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (options,) = HfArgumentParser(BenchmarkOptions).parse_args_into_dataclasses()
    reports = run_benchmarks(options, progress=print)
    for name, report in reports.items():
        print(f"{name}: {len(report.runs)} runs -> " + ", ".join(report.files.values()))
