"""Measure the host memory of loading a large teacher under FSDP2 and write benchmarks/results/host_memory.json.

    python scripts/bench_host_memory.py                            # teacher as saved (float32): host_memory.json
    python scripts/bench_host_memory.py --teacher_dtype bfloat16   # converted as it loads: host_memory_bfloat16.json
    python scripts/bench_host_memory.py --max_steps 1              # a shorter run: host_memory_smoke.json

:mod:`benchmarks.host_memory` says what is recorded.
"""

import argparse
import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.host_memory import RESULT_FILE, measure_host_memory, table  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=2, help="training steps of every run (default: 2)")
    parser.add_argument("--teacher_dtype", default="auto", help="the runs' teacher_dtype (default: auto, as saved)")
    arguments = parser.parse_args()
    name = "host_memory" if arguments.teacher_dtype == "auto" else f"host_memory_{arguments.teacher_dtype}"
    target = RESULT_FILE.with_name(f"{name}.json" if arguments.max_steps == 2 else "host_memory_smoke.json")
    result = measure_host_memory(target, max_steps=arguments.max_steps, teacher_dtype=arguments.teacher_dtype)
    print(f"{table(result)}\n-> {target}")
