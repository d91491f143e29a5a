"""The README's default run, measured: ``python scripts/distill.py`` on a fresh datasets cache, timed, its figures
written to ``benchmarks/results/default_run.json`` so the README's numbers come from a file a script wrote.

The run is a subprocess exactly as a user starts it (the built-in recipe, no arguments but the output folder), with
``HF_DATASETS_CACHE`` in a new temporary folder (the teacher cache and the tokenised glosses computed from nothing).
Recorded: wall time, the Trainer's train runtime, the peak resident memory of the run, the summary line it printed,
every figure of its ``eval_results.json``, and where they come from (machine, versions, commit).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPOSITORY_ROOT, describe_machine
from hf_pcoh.recipes import DEFAULT_RECIPE

RESULT_FILE = REPOSITORY_ROOT / "benchmarks" / "results" / "default_run.json"


def run_default_job(output_dir: Path, extra_arguments: list[str] | None = None) -> dict[str, Any]:
    """Run ``scripts/distill.py`` (the default recipe) into ``output_dir``; its figures and costs."""
    # (named: a command line with options but no recipe gets DistillationConfig's defaults instead)
    arguments = [sys.executable, str(REPOSITORY_ROOT / "scripts" / "distill.py"), DEFAULT_RECIPE, "--output_dir",
                 str(output_dir), *(extra_arguments or [])]
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        start = time.perf_counter()
        completed = subprocess.run(arguments, env=environment, capture_output=True, text=True, cwd=REPOSITORY_ROOT)
        wall_seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"the default run failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
    state = json.loads((output_dir / "trainer_state.json").read_text())
    train_runtime = next((entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry), None)
    summary = [line for line in completed.stdout.splitlines() if line.startswith("student vs teacher")]
    return {
        "command": "python scripts/distill.py",
        "extra_arguments": extra_arguments or [],
        "wall_seconds": round(wall_seconds, 1),
        "train_runtime_seconds": train_runtime,
        "peak_rss_bytes": peak_kib * 1024,
        "summary_line": summary[-1] if summary else None,
        "eval_results": json.loads((output_dir / "eval_results.json").read_text()),
        "recipe": json.loads((output_dir / "distillation_config.json").read_text()).get("recipe"),
    }


def measure_default_run(result_file: Path = RESULT_FILE, extra_arguments: list[str] | None = None) -> dict[str, Any]:
    """Run the default job once and write its result file (with the machine, versions and commit)."""
    with tempfile.TemporaryDirectory() as folder:
        figures = run_default_job(Path(folder) / "student", extra_arguments)
    result = {"machine": describe_machine("cpu"), **figures}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    from hf_pcoh.artifacts import write_json

    write_json(result_file, result)
    return result
