"""--teacher_cache: the same training as with the live teacher, computed once, invalidated by changes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hf_pcoh.config import DistillationConfig
from hf_pcoh.pipeline import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT


def config_for(output_dir, **fields) -> DistillationConfig:
    values = dict(
        output_dir=str(output_dir), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
        dataset_name="wordnet_glosses", max_train_samples=64, per_device_train_batch_size=16, max_steps=8,
        learning_rate=3e-3, logging_steps=1, save_strategy="no", disable_tqdm=True, max_length=32, seed=0,
        losses=["perception_coherence", "projected_mse"], student_layers=["1", "last"], teacher_layers=["1", "last"],
        # the teacher must be deterministic for cached features to equal live ones
        evaluate_after_training=False,
    )
    values.update(fields)
    return DistillationConfig(**values)


def train_losses(config: DistillationConfig) -> list[float]:
    setup = build_setup(config)
    setup.teacher.config.hidden_dropout_prob = 0.0
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_training_from_the_cache_follows_the_live_teacher_loss_curve(tmp_path, minilm_path) -> None:
    live = train_losses(config_for(tmp_path / "live"))
    cache_dir = tmp_path / "cache"
    cached = train_losses(config_for(tmp_path / "cached", teacher_cache=str(cache_dir)))
    np.testing.assert_allclose(cached, live, rtol=1e-4, atol=1e-6)
    assert len(os.listdir(cache_dir)) == 1
    # the same recipe reads the same cache; a different teacher layer gets a new one
    train_losses(config_for(tmp_path / "again", teacher_cache=str(cache_dir)))
    assert len(os.listdir(cache_dir)) == 1
    train_losses(config_for(tmp_path / "other", teacher_cache=str(cache_dir), teacher_layers=["2", "last"]))
    assert len(os.listdir(cache_dir)) == 2


def test_cache_refuses_augmented_data(tmp_path, minilm_path) -> None:
    from hf_pcoh.teacher_cache import refuse_augmented
    from hf_pcoh.data import load_digits_dataset

    augmented = load_digits_dataset()["train"].with_transform(lambda batch: batch)
    with pytest.raises(ValueError, match="on-the-fly transform"):
        refuse_augmented(augmented)


def live_features(setup, rows) -> list[np.ndarray]:
    """The live teacher's features of ``rows`` of the training set, as a training step computes them."""
    from hf_pcoh.frozen_teacher import run_teacher

    inputs = setup.collator.inputs([{"text": row["text"]} for row in rows], "teacher", setup.collator.teacher_processor)
    features, _ = run_teacher(setup.teacher, inputs, setup.readout.teacher_extractors)
    return [feature.values.numpy() for feature in features]


def test_auto_caches_fitting_features_in_the_training_order(tmp_path, minilm_path, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    assert DistillationConfig.__dataclass_fields__["teacher_cache"].default is None  # opt-in: live by default
    setup = build_setup(config_for(tmp_path / "run", teacher_cache="auto"))
    train = setup.train_dataset
    assert {"teacher_features_0", "teacher_features_1"} <= set(train.column_names)
    assert len(os.listdir(tmp_path / "hf_datasets" / "hf_pcoh_teacher_features")) == 1
    # computed in order of length, stored in the training order: each row holds its own text's features
    rows = [train[i] for i in range(24)]
    for index, expected in enumerate(live_features(setup, rows)):
        np.testing.assert_allclose(np.asarray([row[f"teacher_features_{index}"] for row in rows]), expected,
                                   rtol=1e-4, atol=1e-5)


def test_auto_leaves_the_teacher_live_when_caching_would_be_wrong_or_too_big(tmp_path, minilm_path, monkeypatch) -> None:
    import datasets

    from hf_pcoh import teacher_cache

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    tokens = build_setup(config_for(tmp_path / "tokens", teacher_cache="auto", pooling="none", losses=["projected_mse"]))
    assert "teacher_features_0" not in tokens.train_dataset.column_names  # pooling 'none': tokens are not cached
    config = config_for(tmp_path / "run")
    setup = build_setup(config)

    def refusal(dataset):
        return teacher_cache.auto_cache_refusal(
            dataset, setup.teacher, setup.collator.teacher_processor, list(setup.readout.teacher_extractors), "text",
            "text", config.max_length, False, teacher_cache.auto_cache_dir())

    assert refusal(setup.train_dataset) is None
    short = teacher_cache.auto_cache_refusal(
        setup.train_dataset, setup.teacher, setup.collator.teacher_processor, list(setup.readout.teacher_extractors),
        "text", "text", config.max_length, False, teacher_cache.auto_cache_dir(), examples_drawn=48)
    assert "draws 48 examples, fewer than the training set's 64 rows" in short
    short_run = build_setup(config_for(tmp_path / "short", teacher_cache="auto", max_steps=3))  # 3 x 16 < 64 rows
    assert "teacher_features_0" not in short_run.train_dataset.column_names
    assert "on-the-fly transform" in refusal(setup.train_dataset.with_transform(lambda batch: batch))
    monkeypatch.setattr(teacher_cache, "available_memory", lambda: 1000)
    assert "half the free memory" in refusal(setup.train_dataset)
    monkeypatch.setattr(teacher_cache, "available_memory", lambda: None)
    monkeypatch.setattr(teacher_cache, "free_disk", lambda folder: 1000)
    assert "half the free disk" in refusal(setup.train_dataset)
    live = build_setup(config_for(tmp_path / "live", teacher_cache="auto"))
    assert "teacher_features_0" not in live.train_dataset.column_names
    assert not os.path.exists(tmp_path / "hf_datasets" / "hf_pcoh_teacher_features")
