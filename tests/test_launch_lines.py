"""Every ``accelerate launch`` line of the README that can run on a CPU machine runs, with the world size it promises."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A tiny budget appended to the README's line: 2 steps of 8 rows per process out of 256 rows.
TINY_BUDGET = ["--max_steps", "2", "--max_train_samples", "256", "--per_device_train_batch_size", "8",
               "--max_eval_samples", "32", "--save_strategy", "no", "--evaluate_after_training", "false",
               "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true"]
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}


def readme_cpu_launch_lines() -> list[tuple[str, int]]:
    """(command, promised processes) for each README line ``accelerate launch ... # ... N CPU processes``."""
    lines = []
    for line in (ROOT / "README.md").read_text().splitlines():
        found = re.match(r"^(accelerate launch .+?)\s+#.*?\b(\w+) CPU processes", line)
        if found:
            lines.append((found.group(1), WORDS.get(found.group(2), 0) or int(found.group(2))))
    return lines


def epoch_after_steps(command: str, output_dir: Path, extra: list[str] = ()) -> tuple[float, str]:
    argv = shlex.split(command)
    argv[0:2] = [sys.executable, "-m", "accelerate.commands.launch"]
    argv += [*extra, *TINY_BUDGET, "--output_dir", str(output_dir)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return float(state["epoch"]), result.stdout


def test_the_readme_has_a_cpu_launch_line() -> None:
    assert readme_cpu_launch_lines(), "README: no `accelerate launch ... # ... CPU processes` line found"


@pytest.mark.slow  # two processes, each building a tiny OPT pair
@pytest.mark.parametrize("command, processes", readme_cpu_launch_lines())
def test_readme_cpu_launch_line_runs_the_processes_it_promises(command, processes, tmp_path, minilm_path) -> None:
    """The epoch fraction after 2 steps is ``processes`` times that of one process: the processes share the data."""
    single = command.replace(f"--num_processes {processes}", "--num_processes 1").replace("--multi_gpu ", "")
    alone, _ = epoch_after_steps(single, tmp_path / "one")
    together, printed = epoch_after_steps(command, tmp_path / "many")
    assert alone == pytest.approx(2 * 8 / 256)
    assert together == pytest.approx(processes * alone), (together, alone)
    assert printed.count("student saved to") == 1  # one line per run, not one per process
