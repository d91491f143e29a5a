"""The throughput benchmark (hf_pcoh.throughput) on tiny models and real digits: rows, samples/s and ratios."""

from __future__ import annotations

import pytest
import torch
import yaml

from hf_pcoh.config import DistillationConfig
from hf_pcoh.losses import LOSSES
from hf_pcoh.pipeline import build_setup
from hf_pcoh.teacher_training import TeacherTrainingArguments
from hf_pcoh.throughput import (
    BASELINE_SUM,
    CACHE_TARGET,
    CACHED_STEP,
    DISTILLATION_STEP,
    DISTILLATION_TARGET,
    PLAIN_STUDENT_STEP,
    TEACHER_FORWARD,
    benchmark_setup,
    benchmarked_losses,
    markdown_table,
    measure_recipe,
    recipe_setup,
)

from tiny_models import TINY_RESNET, TINY_VIT

FEATURE_LOSSES = [name for name in LOSSES if name != "logit_kd"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny steps gain nothing from a second thread, and on a busy 2-core machine they lose a lot (10x measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rows_give_samples_per_second_and_the_ratios_to_their_baselines(tmp_path, digits_processor_dir) -> None:
    config = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", pooling="mean", teacher_pooling="gap",
        per_device_train_batch_size=16, max_train_samples=48, seed=0, disable_tqdm=True, report_to="none",
    )
    rows = benchmark_setup(build_setup(config), steps=2, warmup=1, recipe="tiny")

    expected = [(TEACHER_FORWARD, None), (PLAIN_STUDENT_STEP, None), (BASELINE_SUM, None)]
    expected += [(step, loss) for loss in FEATURE_LOSSES for step in (DISTILLATION_STEP, CACHED_STEP)]
    assert [(row.step, row.loss) for row in rows] == expected  # every feature loss, no logit_kd
    for row in rows:
        assert row.recipe == "tiny" and row.batch_size == 16
        assert row.seconds > 0 and row.samples_per_second == pytest.approx(16 / row.seconds)
    teacher, plain, both = rows[0].seconds, rows[1].seconds, rows[2].seconds
    assert both == pytest.approx(teacher + plain)
    assert rows[0].ratio is rows[1].ratio is rows[2].ratio is None
    for row in rows[3:]:
        if row.step == DISTILLATION_STEP:
            assert row.ratio == pytest.approx(row.seconds / (teacher + plain))
            assert row.target == DISTILLATION_TARGET == 1.15
        else:
            assert row.ratio == pytest.approx(row.seconds / plain)
            assert row.target == CACHE_TARGET == 1.10
        assert row.meets_target == (row.ratio <= row.target)
        # in samples/s: the same ratio is the baseline's throughput over the step's
        assert row.as_dict()["samples_per_second"] == pytest.approx(16 / row.seconds)

    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| recipe | step | loss |") and len([line for line in table if line.startswith("| tiny")]) == 17
    distillation_line = next(line for line in table if "| distillation step | perception_coherence |" in line)
    perception = next(row for row in rows if row.step == DISTILLATION_STEP and row.loss == "perception_coherence")
    assert f"| {perception.ratio:.2f} | <= 1.15 |" in distillation_line


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
    assert rows[0].note == note  # the table says which teacher was timed
    assert "untrained ResNet" in markdown_table(rows)


def test_loss_selection_names_only_feature_losses() -> None:
    assert benchmarked_losses() == FEATURE_LOSSES
    with pytest.raises(ValueError, match="logit_kd"):
        benchmarked_losses(["logit_kd"])
    with pytest.raises(ValueError, match="unknown loss 'perception'.*perception_coherence"):
        benchmarked_losses(["perception"])
