"""DistillationTrainer called as TRL's trainers are: models as objects or folders, the collator built for the
caller, a config without model options; and trainer.push_to_hub() publishing hf_pcoh's model card."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import HfApi
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_pcoh import hub
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import TINY_BERT


def config(output_dir, **fields) -> DistillationConfig:
    """No teacher or student options: the trainer is given the models."""
    defaults = dict(output_dir=str(output_dir), losses=["perception_coherence", "projected_mse"], max_length=32,
                    per_device_train_batch_size=16, max_steps=3, learning_rate=3e-3, logging_steps=1,
                    save_strategy="no", disable_tqdm=True, report_to="none", seed=0)
    defaults.update(fields)
    return DistillationConfig(**defaults)


@pytest.fixture
def glosses():
    splits = load_splits("wordnet_glosses")
    return splits["train"].shuffle(seed=0).select(range(64)), splits["test"].shuffle(seed=0).select(range(24))


@pytest.fixture
def model_dirs(tmp_path, minilm_path):
    """A tiny teacher and a tiny student, each saved with MiniLM's tokenizer, as a user's folders are."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    folders = {}
    for role, fields in (("teacher", TINY_BERT), ("student", {**TINY_BERT, "num_hidden_layers": 1, "hidden_size": 16,
                                                               "intermediate_size": 32})):
        folders[role] = str(tmp_path / role)
        AutoModel.from_config(AutoConfig.for_model(**fields)).save_pretrained(folders[role])
        tokenizer.save_pretrained(folders[role])
    return folders


def train_losses(trainer: DistillationTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trl_shaped_call_with_a_folder_and_an_object_builds_the_collator(tmp_path, model_dirs, glosses) -> None:
    train, evaluation = glosses
    teacher = AutoModel.from_pretrained(model_dirs["teacher"])
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=teacher, args=config(tmp_path / "out"),
                                  train_dataset=train, eval_dataset=evaluation)
    assert trainer.teacher is not None and type(trainer.model.student).__name__ == "BertModel"
    collator = trainer.distillation_collator
    assert (collator.input_column, collator.label_column, collator.modality) == ("text", "label", "text")
    trainer.train()
    losses = train_losses(trainer)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert "eval_teacher_neighbour_recall@10" in trainer.evaluate()


def test_model_objects_with_a_processing_class_and_the_earlier_keywords(tmp_path, model_dirs, glosses) -> None:
    train, _ = glosses
    student = AutoModel.from_pretrained(model_dirs["student"])
    teacher = AutoModel.from_pretrained(model_dirs["teacher"])
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["student"])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path / "a"),
                                  train_dataset=train, processing_class=tokenizer)
    assert trainer.distillation_collator.student_processor is tokenizer
    # student= / teacher= / collator= (the earlier names) still work
    again = DistillationTrainer(student=student, teacher=teacher, args=config(tmp_path / "b"), train_dataset=train,
                                collator=trainer.distillation_collator)
    assert again.distillation_collator is trainer.distillation_collator
    with pytest.raises(ValueError, match="pass model= or student="):
        DistillationTrainer(model=student, student=student, teacher_model=teacher, args=config(tmp_path / "c"),
                            train_dataset=train)


def test_a_config_without_models_is_fine_until_models_are_built_from_it(tmp_path) -> None:
    bare = config(tmp_path)
    with pytest.raises(ValueError, match="no teacher: set teacher_model_name_or_path"):
        build_setup(bare)


def test_push_to_hub_publishes_hf_pcoh_card(tmp_path, model_dirs, glosses, monkeypatch) -> None:
    """trainer.push_to_hub() writes the card hf-pcoh publish writes, then uploads the folder (Hub calls faked)."""
    uploads = []
    # The public HfApi methods every Hub client goes through (however transformers builds its HfApi instance).
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder",
                        lambda self, **kwargs: uploads.append(kwargs) or "https://huggingface.co/me/tiny-student")
    train, _ = glosses
    output_dir = tmp_path / "tiny-student"
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"],
                                  args=config(output_dir, hub_model_id="me/tiny-student"), train_dataset=train)
    trainer.train()
    trainer.push_to_hub()
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "me/tiny-student"
    card = (output_dir / "README.md").read_text()
    assert "hf_pcoh.hub.build_model_card" in card and "perception_coherence" in card
    assert 'model_id = "me/tiny-student"' in card
    assert card == str(hub.build_model_card(output_dir, repo_id="me/tiny-student"))
