"""Measure the README's default run and write benchmarks/results/default_run.json.

    python scripts/bench_default_run.py                 # the default recipe, as `python scripts/distill.py` runs it
    python scripts/bench_default_run.py --max_steps 5   # extra distill.py arguments (a smoke run; not for the README)

:mod:`benchmarks.default_run` says what is recorded.
"""

import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.default_run import RESULT_FILE, measure_default_run  # noqa: E402

if __name__ == "__main__":
    extra = sys.argv[1:]
    target = RESULT_FILE if not extra else RESULT_FILE.with_name("default_run_smoke.json")
    result = measure_default_run(target, extra)
    print(f"{result['summary_line']}\nwall {result['wall_seconds']} s, train {result['train_runtime_seconds']} s, "
          f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB -> {target}")
