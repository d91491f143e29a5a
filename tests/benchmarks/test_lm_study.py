"""The causal-LM study's bookkeeping (benchmarks.lm_study): what each arm trains at the one budget, the choice of
weight on validation, resume and sharding of the stored runs, and the table's mean ± sample std. No training."""

from __future__ import annotations

import os

import pytest

from benchmarks.lm_study import (
    BATCH, MAX_LENGTH, STEPS, LMStudyOptions, StudyContext, arm_fields, chosen_weight, lm_arms, pending_runs,
    planned_runs, result_path, results_table, run_settings, selection_table, training_fields,
)
from hf_pcoh.artifacts import write_json
from hf_pcoh.recipes import read_recipe

ARMS = {arm.name: arm for arm in lm_arms()}


@pytest.fixture()
def context() -> StudyContext:  # no teacher or corpus is read: the fingerprints are stand-ins
    return StudyContext(texts={"validation": ["a b"], "test": ["c d"], "ood": ["e f"]}, teacher_sha256="0" * 64,
                        versions={"torch": "1", "hf_pcoh": "0.1.0"})


def store(output_dir: str, context: StudyContext, name: str, weight: float, seed: int,
          validation_perplexity: float = 900.0, test_perplexity: float = 950.0, **overrides) -> None:
    arm = ARMS[name]
    settings = {**run_settings(arm, weight, seed, context), **overrides}
    split = {"teacher_perplexity": 600.0, "kl_teacher_student": 0.5, "top1_agreement": 0.7}
    path = result_path(output_dir, arm, weight, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, {
        "arm": name, "weight": weight, "seed": seed, "settings": settings, "train_seconds": 60.0,
        "metrics": {"validation": {**split, "student_perplexity": validation_perplexity},
                    "test": {**split, "student_perplexity": test_perplexity, "greedy_rouge_l": 0.6},
                    "ood": {**split, "student_perplexity": 2000.0}}})


def test_every_arm_trains_at_one_budget_and_differs_only_in_its_objective() -> None:
    assert list(ARMS) == ["ce", "ce_kd", "ce_kd_procrustes", "ce_kd_gram", "ce_kd_cka", "ce_kd_projected_mse",
                          "ce_kd_perception_coherence"]
    recipe = read_recipe("opt-lm")
    budgets = set()
    for arm in ARMS.values():
        for weight in arm.weights:
            fields = training_fields(arm, weight)
            budgets.add((fields["max_steps"], fields["per_device_train_batch_size"], fields["max_length"],
                         fields["max_train_samples"], fields["learning_rate"]))
    assert budgets == {(STEPS, BATCH, MAX_LENGTH, STEPS * BATCH, recipe["learning_rate"])}
    assert arm_fields(ARMS["ce"], 0.0)["logit_kd_weight"] == 0.0
    assert arm_fields(ARMS["ce"], 0.0)["loss_weights"] == [0.0]  # the feature loss the library needs sends no gradient
    assert arm_fields(ARMS["ce_kd"], 0.0)["logit_kd_weight"] == 1.0
    assert arm_fields(ARMS["ce_kd_gram"], 0.1) == {
        "losses": ["gram"], "loss_weights": [0.1], "loss_kwargs": {}, "ce_weight": 1.0, "logit_kd_weight": 1.0,
        "pooling": "none"}
    # Perception coherence compares points of a batch: one vector per gloss, the last token's state.
    assert arm_fields(ARMS["ce_kd_perception_coherence"], 1.0)["pooling"] == "last_token"


def test_the_weight_with_the_lower_validation_perplexity_is_chosen_and_only_its_seeds_run(context, tmp_path) -> None:
    output_dir = str(tmp_path)
    options = LMStudyOptions(seeds=(1, 2), arms=["ce_kd_gram", "ce_kd_cka"], output_dir=output_dir)
    assert planned_runs(options, context) == []  # nothing chosen before seed 0 is in
    store(output_dir, context, "ce_kd_gram", 0.1, 0, validation_perplexity=880.0, test_perplexity=990.0)
    store(output_dir, context, "ce_kd_gram", 1.0, 0, validation_perplexity=890.0, test_perplexity=900.0)
    store(output_dir, context, "ce_kd_cka", 0.1, 0)  # its weight 1 is missing: not chosen yet
    assert chosen_weight(ARMS["ce_kd_gram"], output_dir, context) == 0.1  # validation decides, never test
    assert chosen_weight(ARMS["ce_kd_cka"], output_dir, context) is None
    assert [(arm.name, weight, seed) for arm, weight, seed in planned_runs(options, context)] == [
        ("ce_kd_gram", 0.1, 1), ("ce_kd_gram", 0.1, 2)]


def test_stored_runs_are_reused_only_with_equal_settings_and_shards_split_the_rest(context, tmp_path) -> None:
    output_dir = str(tmp_path)
    options = LMStudyOptions(seeds=(0,), output_dir=output_dir)
    everything = pending_runs(options, context)
    assert len(everything) == 2 + 2 * 5  # ce, ce_kd, and each geometry loss at 0.1 and 1
    store(output_dir, context, "ce", 0.0, 0)
    store(output_dir, context, "ce_kd", 0.0, 0, versions={"torch": "2", "hf_pcoh": "0.1.0"})  # another torch
    remaining = [(arm.name, weight) for arm, weight, _ in pending_runs(options, context)]
    assert ("ce", 0.0) not in remaining and ("ce_kd", 0.0) in remaining and len(remaining) == 11
    shards = [pending_runs(LMStudyOptions(seeds=(0,), output_dir=output_dir, shard=(index, 2)), context)
              for index in range(2)]
    assert sorted(map(repr, shards[0] + shards[1])) == sorted(map(repr, pending_runs(options, context)))
    assert not set(map(repr, shards[0])) & set(map(repr, shards[1]))


def test_the_table_shows_the_chosen_weight_with_mean_and_sample_std_and_the_teacher(context, tmp_path) -> None:
    output_dir = str(tmp_path)
    for weight, validation in ((0.1, 900.0), (1.0, 800.0)):
        store(output_dir, context, "ce_kd_procrustes", weight, 0, validation_perplexity=validation)
    for seed, test in ((1, 960.0), (2, 940.0)):
        store(output_dir, context, "ce_kd_procrustes", 1.0, seed, test_perplexity=test)
    from benchmarks.lm_study import load_lm_results

    results = load_lm_results(output_dir)
    table = results_table(results)
    assert "| teacher (4-layer OPT, 11.0M) | — | — | 600.0 |" in table
    # seeds 0, 1, 2 at the chosen weight 1: test perplexity 950, 960, 940 -> 950.0 ± 10.0 (ddof 1)
    assert "| `ce_kd_procrustes` | 1 | 3 | 950.0 ± 10.0 |" in table
    assert "| `ce` | — | 0 | not run |" in table
    assert "| `ce_kd_procrustes` | 1 | 800.0 | 0.5000 | 0.7000 | yes |" in selection_table(results)
