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
    features, _ = run_teacher(setup.teacher.eval(), inputs, setup.readout.teacher_extractors)  # no dropout
    return [feature.values.numpy() for feature in features]


def test_auto_caches_fitting_features_in_the_training_order_and_says_why_in_one_line(tmp_path, minilm_path,
                                                                                      monkeypatch, caplog) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    assert DistillationConfig.__dataclass_fields__["teacher_cache"].default is None  # opt-in: live by default
    with caplog.at_level("INFO", logger="hf_pcoh.teacher_cache_auto"):
        setup = build_setup(config_for(tmp_path / "run", teacher_cache="auto"))  # 8 steps x 16 = 2 passes over 64 rows
    (line,) = [record.getMessage() for record in caplog.records if "teacher_cache auto" in record.getMessage()]
    assert "computed once" in line and "passes over the training set 2 times" in line
    parameters = sum(parameter.numel() for parameter in setup.teacher.parameters())
    assert f"one pass, 2 x {parameters:.3g} parameters x " in line and "FLOP/s timed on a batch" in line
    assert "per process on 1" in line and "\n" not in line
    train = setup.train_dataset
    assert {"teacher_features_0", "teacher_features_1"} <= set(train.column_names)
    assert len(os.listdir(tmp_path / "hf_datasets" / "hf_pcoh_teacher_features")) == 1
    # computed in order of length, stored in the training order: each row holds its own text's features
    live = build_setup(config_for(tmp_path / "live"))  # the same teacher (built from the same seed), live
    rows = [train[i] for i in range(24)]
    for index, expected in enumerate(live_features(live, rows)):
        np.testing.assert_allclose(np.asarray([row[f"teacher_features_{index}"] for row in rows]), expected,
                                   rtol=1e-4, atol=1e-5)


def test_auto_leaves_the_teacher_live_when_caching_would_be_wrong_too_big_or_would_not_pay(
        tmp_path, minilm_path, monkeypatch, caplog) -> None:
    import datasets

    from hf_pcoh import teacher_cache_auto as auto

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    tokens = build_setup(config_for(tmp_path / "tokens", teacher_cache="auto", pooling="none", losses=["projected_mse"]))
    assert "teacher_features_0" not in tokens.train_dataset.column_names  # pooling 'none': tokens are not cached
    config = config_for(tmp_path / "run")
    setup = build_setup(config)

    def decision(dataset, **options):
        return auto.auto_cache_decision(
            dataset, setup.teacher, setup.collator.teacher_processor, list(setup.readout.teacher_extractors), "text",
            "text", config.max_length, False, auto.auto_cache_dir(), **options)

    assert decision(setup.train_dataset).cache
    short = decision(setup.train_dataset, passes=0.75)
    assert not short.cache and "passes over the training set 0.75 times, less than once" in short.reason
    with caplog.at_level("INFO", logger="hf_pcoh.teacher_cache_auto"):
        short_run = build_setup(config_for(tmp_path / "short", teacher_cache="auto", max_steps=3))  # 3 x 16 < 64 rows
    assert "teacher_features_0" not in short_run.train_dataset.column_names
    (line,) = [record.getMessage() for record in caplog.records if "teacher_cache auto" in record.getMessage()]
    assert line.startswith("teacher_cache auto: the teacher runs live, as the run passes over the training set 0.75")
    augmented = decision(setup.train_dataset.with_transform(lambda batch: batch))
    assert not augmented.cache and "on-the-fly transform" in augmented.reason
    monkeypatch.setattr(auto, "available_memory", lambda: 1000)
    assert "half the free memory" in decision(setup.train_dataset).reason
    monkeypatch.setattr(auto, "available_memory", lambda: None)
    monkeypatch.setattr(auto, "free_disk", lambda folder: 1000)
    assert "half the free disk" in decision(setup.train_dataset).reason
    live = build_setup(config_for(tmp_path / "live", teacher_cache="auto"))
    assert "teacher_features_0" not in live.train_dataset.column_names
    assert not os.path.exists(tmp_path / "hf_datasets" / "hf_pcoh_teacher_features")


def test_auto_refuses_a_pass_that_would_outlast_the_ddp_timeout_and_splits_it_between_processes(
        tmp_path, minilm_path, monkeypatch) -> None:
    import datasets

    from hf_pcoh import teacher_cache_auto as auto

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    config = config_for(tmp_path / "run")
    setup = build_setup(config)
    rate = 1e9  # FLOP/s: the timed batch replaced by a known rate
    monkeypatch.setattr(auto, "probe_teacher", lambda *args: (
        *auto.run_teacher(setup.teacher, setup.collator.inputs(
            [setup.train_dataset[i] for i in range(2)], "teacher", setup.collator.teacher_processor),
            list(setup.readout.teacher_extractors)), 1.0, rate / 2 / auto.count_parameters(setup.teacher)))

    def decision(processes, timeout_seconds):
        return auto.auto_cache_decision(
            setup.train_dataset, setup.teacher, setup.collator.teacher_processor, list(setup.readout.teacher_extractors),
            "text", "text", config.max_length, False, auto.auto_cache_dir(), passes=3,
            processes=processes, timeout_seconds=timeout_seconds)

    parameters = auto.count_parameters(setup.teacher)
    tokens = auto.count_tokens(setup.train_dataset, setup.collator.teacher_processor, "text", "text",
                                        config.max_length)
    assert 64 * 4 <= tokens <= 64 * config.max_length  # the glosses' tokens, truncated at max_length
    one_pass = 2 * parameters * tokens / rate  # seconds: 2 x P x T FLOPs at the rate
    assert decision(1, None).cache  # one process: nobody waits for it
    refused = decision(1, timeout_seconds=one_pass)  # one process computes, another waits: more than half the timeout
    assert not refused.cache and "ddp_timeout" in refused.reason and "per process on 1" in refused.reason
    shared = decision(4, timeout_seconds=one_pass)  # four processes share the pass: a quarter each
    assert shared.cache and "per process on 4" in shared.reason and "ddp_timeout" in shared.reason


def test_the_fingerprint_changes_with_the_teacher_its_precision_and_nothing_else(tmp_path, minilm_path) -> None:
    import torch

    from hf_pcoh.teacher_cache import teacher_fingerprint

    setup = build_setup(config_for(tmp_path / "run"))

    def fingerprint(teacher=setup.teacher, autocast_dtype=None):
        return teacher_fingerprint(teacher, setup.collator.teacher_processor, list(setup.readout.teacher_extractors),
                                   setup.train_dataset, "text", 32, False, autocast_dtype)

    first = fingerprint()
    assert fingerprint() == first
    assert fingerprint(autocast_dtype=torch.bfloat16) != first  # features under bf16 autocast are other features
    with torch.no_grad():
        next(setup.teacher.parameters())[0, 0] += 1e-3  # one weight of the teacher changed
    assert fingerprint() != first
    assert fingerprint(setup.teacher.to(torch.bfloat16)) != fingerprint(setup.teacher.float())  # teacher_dtype


def test_the_teacher_is_freed_after_caching_unless_an_evaluation_needs_it(tmp_path, minilm_path) -> None:
    import json

    import torch

    from hf_pcoh.models import weights_released
    from hf_pcoh.pipeline import run_distillation

    cache = str(tmp_path / "cache")
    setup = build_setup(config_for(tmp_path / "freed", teacher_cache=cache))
    assert weights_released(setup.teacher) and all(p.is_meta for p in setup.teacher.parameters())
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=setup.config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    assert trainer.teacher is None  # no live teacher: every step reads the cached features
    trainer.train()
    assert all(np.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    with pytest.raises(ValueError, match="freed after caching"):  # rows without the features cannot train
        DistillationTrainer(student=setup.student, teacher=setup.teacher, args=setup.config,
                            train_dataset=build_setup(config_for(tmp_path / "live")).train_dataset)
    kept = build_setup(config_for(tmp_path / "kept", teacher_cache=cache, evaluate_after_training=True))
    assert not weights_released(kept.teacher) and not any(p.is_meta for p in kept.teacher.parameters())
    # the whole job with a freed teacher: trained from the cache, the teacher still described by its size
    run_distillation(config_for(tmp_path / "job", teacher_cache=cache, max_steps=2))
    described = json.loads((tmp_path / "job" / "distillation_config.json").read_text())["teacher"]
    assert described["parameters"] == sum(p.numel() for p in kept.teacher.parameters()) and described["model_type"] == "bert"
    assert torch.isfinite(torch.tensor(json.loads((tmp_path / "job" / "trainer_state.json").read_text())
                                       ["log_history"][-1]["train_loss"]))


def test_under_bf16_the_cache_holds_what_the_live_teacher_gives_under_autocast(tmp_path, minilm_path) -> None:
    import torch

    cache = tmp_path / "cache"
    full = build_setup(config_for(tmp_path / "fp32", teacher_cache=str(cache))).train_dataset
    config = config_for(tmp_path / "bf16", teacher_cache=str(cache), bf16=True, use_cpu=True)
    mixed = build_setup(config).train_dataset
    assert len(os.listdir(cache)) == 2  # another precision, another cache
    live = build_setup(config_for(tmp_path / "live", bf16=True, use_cpu=True))
    rows = [mixed[i] for i in range(16)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = live_features(live, rows)
    for index, values in enumerate(expected):
        assert mixed.features[f"teacher_features_{index}"].feature.dtype == "float32"  # stored in float32
        cached = np.asarray([row[f"teacher_features_{index}"] for row in rows])
        np.testing.assert_allclose(cached, values, rtol=2e-2, atol=2e-2)
    assert not np.allclose(np.asarray(mixed["teacher_features_1"]), np.asarray(full["teacher_features_1"]), atol=1e-6)
