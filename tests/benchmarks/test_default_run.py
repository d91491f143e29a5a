"""The default-run benchmark records the run a user starts, with where its figures come from."""

from __future__ import annotations

import json

import pytest

from benchmarks.default_run import measure_default_run
from hf_pcoh.recipes import DEFAULT_RECIPE, read_recipe


@pytest.mark.slow  # a real (tiny) default run in a subprocess
def test_the_default_run_benchmark_writes_its_figures_and_their_provenance(tmp_path, minilm_path) -> None:
    result_file = tmp_path / "default_run.json"
    measure_default_run(result_file, ["--max_steps", "2", "--max_train_samples", "128", "--max_eval_samples", "64",
                                      "--teacher_cache", "none", "--save_strategy", "no"])
    result = json.loads(result_file.read_text())
    assert result["summary_line"].startswith("student vs teacher")
    assert result["wall_seconds"] > 0 and result["peak_rss_bytes"] > 100 * 2**20
    # the built-in default recipe ran
    assert result["recipe"]["losses"] == read_recipe(DEFAULT_RECIPE)["losses"] == ["cospress", "perception_coherence"]
    student = result["eval_results"]["student"]
    assert 0.0 <= student["teacher_neighbour_recall@10"] <= 1.0
    machine = result["machine"]
    assert {"torch", "transformers", "accelerate", "datasets", "hf_pcoh", "python", "git_sha"} <= set(machine)
