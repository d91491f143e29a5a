"""The main job end to end on tiny models and real shipped data (WordNet glosses, scikit-learn digits)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel

from hf_pcoh.config import DistillationConfig
from hf_pcoh.evaluation import embed
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.artifacts import DISTILLATION_CONFIG_FILE, HEADS_FILE
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT, TINY_OPT, TINY_RESNET, TINY_VIT


def tiny_run_config(output_dir: str, **fields) -> DistillationConfig:
    """A run that repeats one batch of 32 real examples, so the loss curve reflects learning only."""
    defaults = dict(
        output_dir=output_dir, max_train_samples=32, per_device_train_batch_size=32, max_steps=25,
        learning_rate=3e-3, logging_steps=1, save_strategy="no", evaluate_after_training=False,
        losses=["perception_coherence", "projected_mse"], seed=0, disable_tqdm=True,
    )
    defaults.update(fields)
    return DistillationConfig(**defaults)


def text_fields(teacher: dict, student: dict, pooling: str) -> dict:
    return dict(teacher_config=teacher, teacher_processor_name_or_path=MINILM, student_config=student,
                dataset_name="wordnet_glosses", pooling=pooling, max_length=32)


def vision_fields(teacher: dict, student: dict, processor_dir: str) -> dict:
    return dict(teacher_config=teacher, teacher_processor_name_or_path=processor_dir, student_config=student,
                dataset_name="digits", pooling="mean", teacher_pooling="gap")


def train_losses(trainer: DistillationTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def distil(config: DistillationConfig) -> tuple[DistillationTrainer, object]:
    setup = build_setup(config)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    return trainer, setup


@pytest.mark.parametrize(
    "family",
    ["bert", "opt", "vit", "resnet"],
)
def test_student_of_each_family_learns_from_its_teacher(family, tmp_path, minilm_path, digits_processor_dir) -> None:
    fields = {
        "bert": text_fields(TINY_BERT, {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}, "mean"),
        "opt": dict(text_fields(TINY_OPT, {"num_hidden_layers": 1, "hidden_size": 16, "word_embed_proj_dim": 16,
                                           "ffn_dim": 32}, "last_token"), padding_side="left"),
        "vit": vision_fields(TINY_RESNET, TINY_VIT, digits_processor_dir),
        "resnet": vision_fields(TINY_VIT, TINY_RESNET, digits_processor_dir),
    }[family]
    trainer, _ = distil(tiny_run_config(str(tmp_path), **fields))
    losses = train_losses(trainer)
    assert len(losses) == 25 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    # every term is logged on its own
    logged = trainer.state.log_history[0]
    assert any(key.startswith("loss/perception_coherence[") for key in logged)
    assert any(key.startswith("loss/projected_mse[") for key in logged)


def test_saved_student_reloads_without_hf_pcoh_and_gives_identical_embeddings(tmp_path, minilm_path) -> None:
    config = tiny_run_config(str(tmp_path), max_steps=3, **text_fields(TINY_BERT, {"num_hidden_layers": 1}, "mean"))
    trainer, setup = distil(config)
    trainer.save_model()
    assert {"config.json", "model.safetensors", HEADS_FILE, "tokenizer.json"} <= set(os.listdir(tmp_path))
    reloaded = AutoModel.from_pretrained(tmp_path)  # plain transformers, no hf_pcoh class involved
    assert type(reloaded).__name__ == "BertModel"
    texts = setup.train_dataset["text"][:16]
    extractor = FeatureExtractor("last", "mean")
    live = embed(trainer.model.student, setup.collator.student_processor, texts, extractor, "text").values
    again = embed(reloaded, setup.collator.student_processor, texts, extractor, "text").values
    np.testing.assert_allclose(again, live, atol=1e-6)


def test_resume_from_checkpoint_restores_student_and_heads(tmp_path, minilm_path) -> None:
    fields = text_fields(TINY_BERT, {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}, "mean")
    config = tiny_run_config(str(tmp_path), max_steps=4, save_strategy="steps", save_steps=2, **fields)
    trainer, _ = distil(config)
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / HEADS_FILE).is_file() and (checkpoint / "optimizer.pt").is_file()
    trained_state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # a fresh trainer (new random student and heads) resumed from the checkpoint holds the same weights
    resumed_config = tiny_run_config(str(tmp_path), max_steps=4, save_strategy="no", **fields)
    setup = build_setup(resumed_config)
    resumed = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=resumed_config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    head_key = next(key for key in trained_state if key.startswith("heads.") and "projector" in key)
    assert not torch.equal(resumed.model.state_dict()[head_key], trained_state[head_key])
    resumed.train(resume_from_checkpoint=str(checkpoint))  # nothing left to train: it only loads
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, trained_state[key], msg=key)


@pytest.mark.slow  # a real teacher or a second process: seconds
def test_real_minilm_teacher_run_writes_student_provenance_and_comparison(tmp_path, minilm_path) -> None:
    """The default recipe's path with the real all-MiniLM-L6-v2 teacher, shortened to a few steps."""
    config = DistillationConfig(
        output_dir=str(tmp_path), teacher_model_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1}, student_init_from_teacher=True,
        dataset_name="wordnet_glosses", max_train_samples=64, max_eval_samples=48, max_length=32,
        per_device_train_batch_size=16, max_steps=2, save_strategy="no", disable_tqdm=True, seed=0,
    )
    result = run_distillation(config)
    saved = json.loads((tmp_path / DISTILLATION_CONFIG_FILE).read_text())
    assert saved["teacher"]["name_or_path"] == MINILM and saved["teacher"]["parameters"] > 2e7
    assert saved["terms"] == [{"student_layer": "last", "teacher_layer": "last", "loss": "perception_coherence", "weight": 1.0}]
    evaluation = json.loads((tmp_path / "eval_results.json").read_text())
    assert evaluation == result.evaluation
    student, teacher = evaluation["student"], evaluation["teacher"]
    assert student["parameters"] < teacher["parameters"]
    assert 0.0 <= student["teacher_neighbour_recall@10"] <= 1.0
    # a one-layer student initialised from the teacher already agrees with it far above chance (10/47)
    assert student["teacher_neighbour_recall@10"] > 0.3
    # the real teacher's 10-NN class accuracy (0.333 measured on these 48 glosses) is well above always answering
    # the largest of the 45 classes (12.3% of the test split) or chance (1/45)
    assert teacher["knn_accuracy@10"] > 0.25


@pytest.mark.slow  # a real MiniLM run, then the script in a subprocess
def test_evaluate_script_measures_a_saved_run_again(tmp_path, minilm_path) -> None:
    import subprocess
    import sys

    config = tiny_run_config(str(tmp_path), max_steps=2, evaluate_after_training=True, max_eval_samples=40,
                             **text_fields(TINY_BERT, {"num_hidden_layers": 1}, "mean"))
    first = run_distillation(config).evaluation
    (tmp_path / "eval_results.json").unlink()
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "evaluate_student.py")
    completed = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert completed.returncode == 0, completed.stderr
    again = json.loads((tmp_path / "eval_results.json").read_text())
    # the same student, teacher (rebuilt from its config with the run's seed) and data: the same figures
    for metric in ("knn_accuracy@10", "teacher_neighbour_recall@10", "dissimilarity_spearman"):
        assert again["student"][metric] == pytest.approx(first["student"][metric], abs=1e-6), metric
    assert "| student |" in (tmp_path / "eval_results.md").read_text()
