"""How a run reads features is resolved once, into one frozen FeatureReadout, and the config is never changed:
``teacher_layers: auto`` stays ``auto`` in the config and the chosen layers live in the readout."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hf_pcoh import readout as readout_module
from hf_pcoh.artifacts import DISTILLATION_CONFIG_FILE, LAYER_QUALITY_PLOT_FILE
from hf_pcoh.cli import select_layers_main
from hf_pcoh.config import DistillationConfig
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.readout import FeatureReadout, resolve_readout
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT, TINY_RESNET, TINY_VIT


def text_config(output_dir, **fields) -> DistillationConfig:
    defaults = dict(output_dir=str(output_dir), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
                    student_config={"num_hidden_layers": 1}, dataset_name="wordnet_glosses", max_length=32,
                    student_layers=[1, "last"], teacher_layers=[1, "last"], pooling="mean",
                    losses=["perception_coherence", "projected_mse"], max_train_samples=32, max_eval_samples=24,
                    per_device_train_batch_size=16, max_steps=2, logging_steps=1, save_strategy="no",
                    evaluate_after_training=True, disable_tqdm=True, report_to="none", seed=0)
    defaults.update(fields)
    return DistillationConfig(**defaults)


def auto_config(output_dir, processor_dir, **fields) -> DistillationConfig:
    defaults = dict(output_dir=str(output_dir), teacher_config=TINY_RESNET, teacher_processor_name_or_path=processor_dir,
                    student_config=TINY_VIT, dataset_name="digits", teacher_layers=["auto"], student_layers=["last"],
                    pooling="mean", teacher_pooling="gap", losses=["projected_mse"], layer_selection_samples=200,
                    max_train_samples=64, max_eval_samples=40, per_device_train_batch_size=32, max_steps=1,
                    save_strategy="no", disable_tqdm=True, report_to="none", seed=0)
    defaults.update(fields)
    return DistillationConfig(**defaults)


def as_json(config: DistillationConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def test_building_and_training_leave_the_config_as_it_was(tmp_path, minilm_path) -> None:
    config = text_config(tmp_path / "run", teacher_cache=str(tmp_path / "cache"))
    before = as_json(config)
    setup = build_setup(config)
    assert as_json(config) == before
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator, readout=setup.readout)
    trainer.train()
    assert as_json(config) == before
    assert trainer.readout is setup.readout
    run_distillation(text_config(tmp_path / "whole"))  # every step of a run, on a config of its own
    assert as_json(config) == before


def test_teacher_layers_auto_resolves_into_the_readout_not_the_config(tmp_path, digits_processor_dir) -> None:
    config = auto_config(tmp_path, digits_processor_dir)
    before = as_json(config)
    run_distillation(config)
    assert as_json(config) == before and config.teacher_layers == ["auto"] and config.teacher_layers_auto
    saved = json.loads((tmp_path / DISTILLATION_CONFIG_FILE).read_text())
    chosen = saved["layer_selection"]["selected"]
    # what ran is recorded: the recipe names the chosen layers, so re-measuring the student reads the same ones
    assert saved["recipe"]["teacher_layers"] == chosen == [term["teacher_layer"] for term in saved["terms"]]
    setup = build_setup(config)
    assert as_json(config) == before
    assert list(setup.readout.teacher_layers) == chosen and setup.readout.layer_choice.selected == chosen
    assert setup.readout.teacher_embedding.layer == chosen[-1]


def test_a_run_resolves_how_it_reads_features_once(tmp_path, minilm_path, monkeypatch) -> None:
    """Build, cache, train, save, evaluate, provenance: one resolution, shared by every step."""
    calls = []
    resolve_teacher_source = readout_module.teacher_source
    monkeypatch.setattr(readout_module, "teacher_source", lambda *args: calls.append(args) or resolve_teacher_source(*args))
    run_distillation(text_config(tmp_path / "run", teacher_cache=str(tmp_path / "cache")))
    assert len(calls) == 1


def test_the_trainer_without_a_setup_resolves_the_readout_itself(tmp_path, minilm_path) -> None:
    config = text_config(tmp_path / "run")
    setup = build_setup(config)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    assert trainer.readout == setup.readout == resolve_readout(config, setup.teacher)
    assert trainer.readout.teacher_extractors == (FeatureExtractor(1, "mean", "teacher"),
                                                  FeatureExtractor("last", "mean", "teacher"))


def test_the_trainer_asks_for_the_readout_of_an_auto_setup(tmp_path, digits_processor_dir) -> None:
    config = auto_config(tmp_path, digits_processor_dir)
    setup = build_setup(config)
    arguments = dict(student=setup.student, teacher=setup.teacher, args=config, train_dataset=setup.train_dataset,
                     collator=setup.collator)
    with pytest.raises(ValueError, match="teacher_layers=auto.*pass readout=setup.readout"):
        DistillationTrainer(**arguments)
    trainer = DistillationTrainer(**arguments, readout=setup.readout)
    assert [term.label for term in trainer.model.terms] == [f"projected_mse[slast>t{setup.readout.teacher_layers[0]}]"]


def test_the_readout_is_frozen_and_pairs_its_layers() -> None:
    readout = FeatureReadout(student_layers=("last",), teacher_layers=(2,), student_pooling="none",
                             teacher_pooling="cls", normalize=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        readout.teacher_layers = (3,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        readout.student_embedding.pooling = "cls"
    assert readout.student_extractors == (FeatureExtractor("last", "none", "student"),)
    assert readout.student_embedding == FeatureExtractor("last", "mean", "student")  # tokens measured pooled
    assert readout.teacher_embedding == FeatureExtractor(2, "cls", "teacher")
    with pytest.raises(ValueError, match="must pair one-to-one"):
        FeatureReadout(("last",), (1, 2), "mean", "mean", False)


@pytest.mark.parametrize("teacher_layers, top_k", [("auto", "1"), ("last", "2")])
def test_select_layers_scores_the_recipe_without_rewriting_its_layers(
    teacher_layers, top_k, tmp_path, capsys, digits_processor_dir
) -> None:
    recipe = tmp_path / "recipe.json"
    fields = auto_config(tmp_path / "out", digits_processor_dir).distillation_fields()
    recipe.write_text(json.dumps({**{key: value for key, value in fields.items() if value is not None},
                                  "teacher_config": TINY_RESNET, "student_config": TINY_VIT,
                                  "teacher_layers": [teacher_layers]}, default=str))
    code = select_layers_main([str(recipe), "--layer_selection_top_k", top_k, "--output_dir", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| layer | S | I | E | Q |" in printed
    chosen = json.loads(printed.split(f"top {top_k} teacher layers by knowledge quality: ")[1].split(";")[0])
    assert len(chosen) == int(top_k)  # a recipe with fixed layers is scored too, for any number of layers
    assert (tmp_path / "out" / LAYER_QUALITY_PLOT_FILE).is_file()
