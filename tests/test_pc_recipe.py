"""The built-in recipe ``minilm-wordnet-pc``: the registered experiment's winner (docs/study.md), trained on the same
data and budget as ``minilm-wordnet``, and runnable offline from the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.registered_study import committed_blocks, recipe_loss_fields, registered_runs, selection
from benchmarks.study import COMMITTED_RESULTS
from hf_pcoh.recipes import DEFAULT_RECIPE, read_recipe

LOSS_FIELDS = ("losses", "loss_weights", "loss_kwargs")


def test_the_pc_recipe_is_the_registered_winner_on_the_default_recipes_data_and_budget() -> None:
    chosen = selection(registered_runs(str(COMMITTED_RESULTS)))
    assert chosen.winner is not None, "the registered finalists lack seeds: the recipe has no winner to follow"
    pc_recipe, default = read_recipe("minilm-wordnet-pc"), read_recipe("minilm-wordnet")
    assert {name: pc_recipe.get(name) for name in LOSS_FIELDS} == {
        name: recipe_loss_fields(chosen.winner).get(name) for name in LOSS_FIELDS}
    # perception coherence carries real weight in it
    weights = pc_recipe.get("loss_weights") or [1.0] * len(pc_recipe["losses"])
    assert weights[pc_recipe["losses"].index("perception_coherence")] >= 0.3
    same = set(default) - set(LOSS_FIELDS) - {"output_dir"}
    assert {name: pc_recipe.get(name) for name in same} == {name: default[name] for name in same}
    assert set(pc_recipe) - set(default) <= set(LOSS_FIELDS)
    # the default follows the registered decision
    assert DEFAULT_RECIPE == ("minilm-wordnet-pc" if chosen.beats_default else "minilm-wordnet")
    assert f"`{chosen.winner}`" in committed_blocks()["registered_outcome"]


@pytest.mark.slow  # the real MiniLM teacher, a few steps, evaluation
def test_the_pc_recipe_runs_offline_and_prints_its_summary(tmp_path) -> None:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "distill.py")
    completed = subprocess.run(
        [sys.executable, script, "minilm-wordnet-pc", "--max_steps", "2", "--max_train_samples", "128",
         "--max_eval_samples", "64", "--teacher_cache", "none", "--save_strategy", "no", "--disable_tqdm", "true",
         "--output_dir", str(tmp_path / "student")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = completed.stdout.strip().splitlines()[-1]
    assert "teacher-neighbour recall@10" in summary and "10-NN accuracy" in summary, completed.stdout[-1000:]
    assert (tmp_path / "student" / "eval_results.json").is_file()
