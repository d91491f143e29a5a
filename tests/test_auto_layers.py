"""teacher_layers=auto and feature-only training with a probe-fitted head, on real digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from transformers import ViTImageProcessor
from transformers.modeling_outputs import BaseModelOutput

from hf_pcoh.artifacts import DISTILLATION_CONFIG_FILE, LAYER_QUALITY_PLOT_FILE, LAYER_QUALITY_TABLE_FILE
from hf_pcoh.layers import choose_teacher_layers
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_digits_dataset
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.probe_head import head_inputs_and_logits

from tiny_models import TINY_RESNET, TINY_VIT


class ConstructedTeacher(nn.Module):
    """hidden_states: 0 pixels, 1 collapsed onto one direction, 2 an LDA projection (classes apart), 3 pixels."""

    def __init__(self, lda_weights: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("lda", torch.as_tensor(lda_weights, dtype=torch.float32))
        self.register_buffer("direction", torch.randn(64))

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = True) -> BaseModelOutput:
        pixels = pixel_values.flatten(1)
        collapsed = pixels.sum(dim=1, keepdim=True) * self.direction
        separated = (pixels - pixels.mean(0)) @ self.lda
        states = tuple(state[:, None, :] for state in (pixels, collapsed, separated, pixels))
        return BaseModelOutput(last_hidden_state=states[-1], hidden_states=states)


def test_auto_picks_the_layer_whose_classes_are_separated(digits_processor_dir) -> None:
    digits = load_digits_dataset()["train"]
    processor = ViTImageProcessor.from_pretrained(digits_processor_dir)
    images = np.asarray(digits["image"], dtype=np.float32).reshape(len(digits), -1)
    lda = LinearDiscriminantAnalysis(n_components=9).fit(images, digits["label"])
    teacher = ConstructedTeacher(lda.scalings_[:, :9])
    arguments = dict(dataset=digits, input_column="image", label_column="label", modality="vision",
                     pooling="mean", num_samples=600)
    top_one = choose_teacher_layers(teacher, processor, top_k=1, **arguments)
    assert top_one.selected == [2], top_one.table()
    assert set(top_one.qualities) == {1, 2, 3}  # the embeddings (hidden_states[0]) are not a candidate
    assert top_one.qualities[1].quality < top_one.qualities[3].quality < top_one.qualities[2].quality
    top_two = choose_teacher_layers(teacher, processor, top_k=2, **arguments)
    assert top_two.selected == [2, 3]  # by depth, not by Q
    with pytest.raises(ValueError, match="needs class labels"):
        choose_teacher_layers(teacher, processor, top_k=1, **{**arguments, "label_column": None})


def test_auto_layers_and_probe_head_end_to_end(tmp_path, digits_processor_dir) -> None:
    """Feature-only distillation (no CE) with auto-chosen teacher layers, then a probe-fitted head."""
    config = DistillationConfig(
        output_dir=str(tmp_path), teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", teacher_layers=["auto"], student_layers=["last"],
        pooling="mean", teacher_pooling="gap", losses=["projected_mse"], layer_selection_samples=400,
        fit_head_by_probe=True, max_train_samples=256, max_eval_samples=120, per_device_train_batch_size=32,
        max_steps=10, learning_rate=3e-3, save_strategy="no", disable_tqdm=True, seed=0,
    )
    result = run_distillation(config)
    saved = json.loads((tmp_path / DISTILLATION_CONFIG_FILE).read_text())
    selected = saved["layer_selection"]["selected"]
    assert len(selected) == 1 and selected[0] in (1, 2, 3)  # ResNet: embedder + 2 stages
    assert [term["teacher_layer"] for term in saved["terms"]] == selected
    assert (tmp_path / LAYER_QUALITY_TABLE_FILE).read_text().count("*") >= 1
    assert (tmp_path / LAYER_QUALITY_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = result.evaluation["student"]["probe_head_accuracy"]
    assert accuracy > 0.3  # 10 classes: chance is 0.1


def test_probe_head_predicts_exactly_as_the_fitted_probe(digits_processor_dir) -> None:
    """Folding the scaler into the head gives the very predictions of scaler + logistic regression."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from hf_pcoh.probe_head import fit_head_by_probe

    digits = load_digits_dataset()
    processor = ViTImageProcessor.from_pretrained(digits_processor_dir)
    model = AutoModelForImageClassification.from_config(AutoConfig.for_model(**TINY_VIT, num_labels=10))
    train, test = digits["train"].select(range(400)), digits["test"]
    fit_head_by_probe(model, processor, train["image"], np.asarray(train["label"]), "vision")
    train_features, _ = head_inputs_and_logits(model, processor, train["image"], "vision")
    test_features, logits = head_inputs_and_logits(model, processor, test["image"], "vision")
    scaler = StandardScaler().fit(train_features)
    probe = LogisticRegression(max_iter=1000, random_state=0).fit(scaler.transform(train_features), train["label"])
    np.testing.assert_array_equal(logits.argmax(1), probe.predict(scaler.transform(test_features)))
    assert (logits.argmax(1) == np.asarray(test["label"])).mean() > 0.5  # random ViT features + probe on digits


def test_model_card_records_the_automatic_layer_choice(tmp_path, digits_processor_dir) -> None:
    from hf_pcoh.hub import build_model_card

    config = DistillationConfig(
        output_dir=str(tmp_path), teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", teacher_layers=["auto"], pooling="mean",
        teacher_pooling="gap", layer_selection_samples=200, max_train_samples=64, max_eval_samples=40,
        per_device_train_batch_size=32, max_steps=1, save_strategy="no", disable_tqdm=True,
    )
    run_distillation(config)
    card = str(build_model_card(tmp_path))
    chosen = json.loads((tmp_path / DISTILLATION_CONFIG_FILE).read_text())["layer_selection"]["selected"]
    assert f"The teacher layers {chosen[0]} were chosen automatically" in card
    assert "| Teacher layer | S | I | E | Q | chosen |" in card
