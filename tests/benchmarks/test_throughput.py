"""The throughput benchmarks (benchmarks.throughput, benchmarks.cache_epochs) on tiny models and real digits:
rows, samples/s and ratios."""

from __future__ import annotations

import pytest
import yaml

from hf_pcoh import LOSSES, DistillationConfig
from hf_pcoh.setup import build_setup
from hf_pcoh.teacher_training import TeacherTrainingArguments

from benchmarks.cache_epochs import benchmark_cache_epochs, epoch_markdown_table
from benchmarks.throughput import (
    CACHE_TARGET,
    DISTILLATION_TARGET,
    benchmark_setup,
    benchmarked_losses,
    markdown_table,
    measure_recipe,
    recipe_setup,
)

from tiny_models import TINY_RESNET, TINY_VIT

pytestmark = pytest.mark.slow

FEATURE_LOSSES = [name for name in LOSSES if name != "logit_kd"]


def test_rows_give_samples_per_second_and_the_ratios_to_their_baselines(tmp_path, digits_processor_dir) -> None:
    config = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", pooling="mean", teacher_pooling="gap",
        per_device_train_batch_size=16, max_train_samples=48, seed=0, disable_tqdm=True, report_to="none",
    )
    rows = benchmark_setup(build_setup(config), steps=2, warmup=1, recipe="tiny")

    assert [row.loss for row in rows] == FEATURE_LOSSES  # one row per feature loss, no logit_kd
    for row in rows:
        assert row.recipe == "tiny" and row.batch_size == 16
        timings = row.as_dict()
        for variant, seconds in [("teacher", row.teacher_seconds), ("plain", row.plain_seconds),
                                 ("distillation", row.distillation_seconds), ("cached", row.cached_seconds)]:
            assert seconds > 0 and timings[f"{variant}_samples_per_second"] == pytest.approx(16 / seconds)
        assert timings["baseline_samples_per_second"] == pytest.approx(16 / (row.teacher_seconds + row.plain_seconds))
        # the ratios are of times per step: the baseline's samples/s over the step's
        assert row.distillation_ratio == pytest.approx(row.distillation_seconds / (row.teacher_seconds + row.plain_seconds))
        assert row.distillation_ratio == pytest.approx(
            timings["baseline_samples_per_second"] / timings["distillation_samples_per_second"]
        )
        assert row.cache_ratio == pytest.approx(row.cached_seconds / row.plain_seconds)
        assert row.cache_ratio == pytest.approx(timings["plain_samples_per_second"] / timings["cached_samples_per_second"])
        assert (timings["distillation_target"], timings["cache_target"]) == (DISTILLATION_TARGET, CACHE_TARGET) == (1.15, 1.10)
        assert timings["distillation_meets_target"] == (row.distillation_ratio <= 1.15)
        assert timings["cache_meets_target"] == (row.cache_ratio <= 1.10)

    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| recipe | loss | B | teacher forward |")
    assert len([line for line in table if line.startswith("| tiny |")]) == len(FEATURE_LOSSES)
    perception = next(row for row in rows if row.loss == "perception_coherence")
    line = next(line for line in table if line.startswith("| tiny | perception_coherence |"))
    assert f"{perception.samples_per_second(perception.distillation_seconds):.1f} " in line
    assert f"| {perception.distillation_ratio:.2f} " in line and f"| {perception.cache_ratio:.2f} " in line


def test_missing_vision_teacher_is_replaced_by_an_untrained_resnet_of_the_recipe_size(tmp_path) -> None:
    recipe = tmp_path / "vision.yaml"
    recipe.write_text(yaml.safe_dump({
        "teacher_model_name_or_path": str(tmp_path / "no-teacher-here"), "student_config": TINY_VIT,
        "dataset_name": "digits", "pooling": "mean", "teacher_pooling": "gap", "losses": ["perception_coherence"],
    }))
    setup, note = recipe_setup(str(recipe), str(tmp_path / "run"), batch_size=8, num_batches=2)
    default_sizes = TeacherTrainingArguments.__dataclass_fields__["hidden_sizes"].default_factory()
    assert setup.teacher.config.model_type == "resnet" and setup.teacher.config.hidden_sizes == default_sizes
    assert "untrained ResNet" in note and "no-teacher-here" in note
    assert len(setup.train_dataset) == 16  # just the batches the benchmark needs
    rows = measure_recipe(str(recipe), str(tmp_path / "run2"), ["projected_mse"], steps=1, warmup=0, batch_size=8)
    assert [row.loss for row in rows] == ["projected_mse"] and rows[0].note == note  # says which teacher was timed
    assert "untrained ResNet" in markdown_table(rows)


def test_a_recipe_that_caches_the_teacher_is_timed_with_the_teacher_in_the_loop(tmp_path, monkeypatch) -> None:
    """The distillation-step column times the teacher's forward: a recipe's teacher_cache must not replace it."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    recipe = tmp_path / "cached.yaml"
    recipe.write_text(yaml.safe_dump({
        "teacher_model_name_or_path": str(tmp_path / "no-teacher-here"), "student_config": TINY_VIT,
        "dataset_name": "digits", "pooling": "mean", "teacher_pooling": "gap", "losses": ["projected_mse"],
        "teacher_cache": "auto", "num_train_epochs": 1,
    }))
    setup, _ = recipe_setup(str(recipe), str(tmp_path / "run"), batch_size=8, num_batches=2)
    assert not any(column.startswith("teacher_features") for column in setup.train_dataset.column_names)
    assert not (tmp_path / "hf_datasets" / "hf_pcoh_teacher_features").exists()
    from benchmarks.cache_epochs import cached_recipe_setup

    cached, _ = cached_recipe_setup(str(recipe), str(tmp_path / "cached"), batch_size=8, num_batches=2)
    assert "teacher_features_0" in cached.train_dataset.column_names  # the epoch table's own cache is kept


def test_loss_selection_names_only_feature_losses() -> None:
    assert benchmarked_losses() == FEATURE_LOSSES
    with pytest.raises(ValueError, match="logit_kd"):
        benchmarked_losses(["logit_kd"])
    with pytest.raises(ValueError, match="unknown loss 'perception'.*perception_coherence"):
        benchmarked_losses(["perception"])


def test_cache_epochs_time_plain_student_training_and_each_loss_from_the_cache(tmp_path, digits_processor_dir) -> None:
    config = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", pooling="mean", teacher_pooling="gap",
        per_device_train_batch_size=16, max_train_samples=80, seed=0, disable_tqdm=True, report_to="none",
        save_strategy="no", evaluate_after_training=False, teacher_cache=str(tmp_path / "cache"),
    )
    setup = build_setup(config)
    teacher_calls = []
    setup.teacher.register_forward_hook(lambda *args: teacher_calls.append(1))
    rows = benchmark_cache_epochs(setup, ["perception_coherence", "projected_mse"], warmup=1, rounds=1, recipe="tiny")

    assert not teacher_calls  # from the cache: the teacher never runs in either epoch
    assert [row.loss for row in rows] == ["perception_coherence", "projected_mse"]
    for row in rows:
        assert row.timed_steps == 4 and row.batch_size == 16  # 5 steps of 16, the first not timed
        assert row.plain_seconds == rows[0].plain_seconds > 0 and row.cached_seconds > 0
        timings = row.as_dict()
        assert row.ratio == pytest.approx(row.cached_seconds / row.plain_seconds)
        assert timings["meets_target"] == (row.ratio <= CACHE_TARGET)
        assert timings["plain_samples_per_second"] == pytest.approx(16 / row.plain_seconds)
    table = epoch_markdown_table(rows)
    assert table.splitlines()[0].startswith("| recipe | loss | B | timed steps | plain student training |")
    assert f"| {rows[0].ratio:.2f} " in table


def test_cache_epochs_refuse_rows_without_cached_features(tmp_path, digits_processor_dir) -> None:
    config = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", pooling="mean", teacher_pooling="gap",
        per_device_train_batch_size=16, max_train_samples=64, seed=0, disable_tqdm=True, report_to="none",
    )
    with pytest.raises(ValueError, match="no cached teacher features"):
        benchmark_cache_epochs(build_setup(config), ["projected_mse"])
