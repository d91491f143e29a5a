"""The study's grid and bookkeeping (benchmarks.study): what each variant trains, that a recipe's loss options never
leak into a variant, equal epochs across batch sizes, and resume/sharding of the stored runs."""

from __future__ import annotations

import pytest

from benchmarks.study import (
    StudyOptions, pending_runs, result_path, run_settings, stored_result, study_specs, study_variants, variant_config,
)
from hf_pcoh.artifacts import write_json


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return study_specs(str(tmp_path_factory.mktemp("teachers")))  # no teacher is trained to build the specs


def test_the_grid_covers_the_issue_and_names_each_variant_once() -> None:
    for benchmark in ("text", "vision"):
        names = [variant.name for variant in study_variants(benchmark)]
        assert len(names) == len(set(names))
        for needed in ("pc_euc_t0.03", "pc_cos_t1", "pc_cos_t0.1_median", "pc_cos_t0.1_b256", "pc_cos_t0.1_b1024",
                       "pc_cos_t0.1_b1024_m128", "pc_cos_t0.1_b1024_sorted", "pc_cos_t0.1_local0.05",
                       "pc_cos_t0.1+procrustes0.1", "pc_cos_t0.1+projected_mse1", "gram", "cka", "rkd_distance",
                       "cospress", "cospress_identity", "no_teacher_ce", "narrow_pc_cos_t0.1"):
            assert needed in names, (benchmark, needed)
    assert "sentence_transformers_mse" in [variant.name for variant in study_variants("text")]


def test_variants_get_their_own_loss_options_not_the_recipes(specs, tmp_path) -> None:
    grid = {variant.name: variant for variant in study_variants("text")}
    assert "loss_kwargs" not in specs["text"].recipe  # the minilm-wordnet recipe sets CosPress's map_init
    plain = variant_config(specs["text"], grid["cospress"], 0, str(tmp_path / "a"), str(tmp_path / "cache"))
    assert plain.loss_kwargs.get("cospress", {}).get("map_init", "random") == "random"  # the paper's recipe
    identity = variant_config(specs["text"], grid["cospress_identity"], 0, str(tmp_path / "b"), str(tmp_path / "cache"))
    assert identity.loss_kwargs["cospress"] == {"map_init": "identity", "map_layer_norm": False}
    sorted_rank = variant_config(specs["text"], grid["pc_cos_t0.1_b1024_sorted"], 0, str(tmp_path / "c"), str(tmp_path / "c"))
    assert sorted_rank.loss_kwargs["perception_coherence"]["soft_rank"] == "sorted"


def test_larger_batches_keep_the_epochs_and_scale_the_learning_rate(specs) -> None:
    grid = {variant.name: variant for variant in study_variants("vision")}
    base, large = grid["pc_cos_t0.1"].overrides, grid["pc_cos_t0.1_b1024"].overrides
    assert large["per_device_train_batch_size"] == 1024 and large["max_steps"] == 600 * 128 // 1024
    assert large["learning_rate"] == pytest.approx(1e-3 * (1024 / 128) ** 0.5)
    assert base == {}  # the base row trains as the spec says: 600 steps of 128
    assert specs["vision"].recipe["max_steps"] == 600 and specs["vision"].recipe["per_device_train_batch_size"] == 128


def test_stored_runs_are_resumed_and_shards_split_the_pending_ones(specs, tmp_path) -> None:
    options = StudyOptions(benchmarks=("vision",), seeds=(0,), variants=["gram", "cka", "procrustes"],
                           output_dir=str(tmp_path))
    everything = pending_runs(options, specs)
    assert [variant.name for variant, _ in everything] == ["gram", "cka", "procrustes"]
    gram = everything[0][0]
    (tmp_path / "vision").mkdir()
    write_json(result_path(str(tmp_path), gram, 0), {"settings": run_settings(specs["vision"], gram, 0)})
    assert stored_result(result_path(str(tmp_path), gram, 0), run_settings(specs["vision"], gram, 0)) is not None
    remaining = pending_runs(options, specs)
    assert [variant.name for variant, _ in remaining] == ["cka", "procrustes"]
    halves = [pending_runs(StudyOptions(**{**options.__dict__, "shard": (index, 2)}), specs) for index in (0, 1)]
    assert sorted(variant.name for half in halves for variant, _ in half) == ["cka", "procrustes"]
    assert all(len(half) == 1 for half in halves)
    changed = run_settings(specs["vision"], gram, 1)  # another seed: not the stored run
    assert stored_result(result_path(str(tmp_path), gram, 0), changed) is None
