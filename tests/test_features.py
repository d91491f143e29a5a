"""Feature extraction: mask-aware pooling and layer selection on tiny real transformers models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_pcoh.features import FeatureExtractor, last_token_index, pool

from tiny_models import TINY_OPT, TINY_RESNET


def test_last_token_index_handles_left_and_right_padding() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_mean_pooling_ignores_padding_values() -> None:
    tokens = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    changed = tokens.clone()
    changed[0, 2:] = 1e6  # garbage under padding must not move the mean
    expected = tokens[0, :2].mean(0)
    assert torch.allclose(pool(tokens, "mean", mask).values[0], expected)
    assert torch.allclose(pool(changed, "mean", mask).values[0], expected)


def test_opt_last_token_is_the_same_for_left_and_right_padding() -> None:
    """A decoder's last-token feature of a short text must not depend on the padding side."""
    config = AutoConfig.for_model(**TINY_OPT)
    model = AutoModel.from_config(config).eval()
    ids = torch.tensor([[101, 2054, 2003, 102]])
    right = {"input_ids": torch.tensor([[101, 2054, 2003, 102, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}
    left = {"input_ids": torch.tensor([[0, 0, 101, 2054, 2003, 102]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1]])}
    extractor = FeatureExtractor("last", "last_token")
    with torch.no_grad():
        alone = extractor(model(input_ids=ids, output_hidden_states=True), torch.ones_like(ids)).values
        from_right = extractor(model(**right, output_hidden_states=True), right["attention_mask"]).values
        from_left = extractor(model(**left, output_hidden_states=True), left["attention_mask"]).values
    assert torch.allclose(from_right, alone, atol=1e-5)
    assert torch.allclose(from_left, alone, atol=1e-5)


def test_resnet_maps_are_globally_average_pooled() -> None:
    model = AutoModel.from_config(AutoConfig.for_model(**TINY_RESNET)).eval()
    pixels = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        outputs = model(pixel_values=pixels, output_hidden_states=True)
    features = FeatureExtractor(-1, "gap")(outputs)
    assert features.values.shape == (3, 32)
    assert torch.allclose(features.values, outputs.hidden_states[-1].mean(dim=(2, 3)))


def test_layer_out_of_range_names_the_valid_range() -> None:
    model = AutoModel.from_config(AutoConfig.for_model(**TINY_OPT)).eval()
    with torch.no_grad():
        outputs = model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    with pytest.raises(ValueError, match=r"layer 9 does not exist in the student: it has 3 hidden states \(0\.\.2"):
        FeatureExtractor(9, "mean", "student")(outputs)


def test_student_with_a_head_is_initialised_from_a_headless_teacher() -> None:
    from transformers import AutoModelForSequenceClassification

    from hf_pcoh.models import config_from_dict, init_student_from_teacher
    from tiny_models import TINY_BERT

    teacher = AutoModel.from_config(AutoConfig.for_model(**TINY_BERT))
    student = AutoModelForSequenceClassification.from_config(config_from_dict({"num_hidden_layers": 1}, teacher.config))
    copied = init_student_from_teacher(student, teacher)
    assert "embeddings.word_embeddings.weight" in copied and "encoder.layer.0.attention.self.query.weight" in copied
    # one student layer <- the teacher's last layer (evenly spaced, last to last)
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, teacher.encoder.layer[1].output.dense.weight)


def test_training_curve_plot_is_a_png(tmp_path) -> None:
    import json

    from hf_pcoh.plots import plot_training_loss

    history = [{"step": step, "loss": 1.0 / step, "loss/perception_coherence[slast>tlast]": 1.0 / step} for step in (1, 2, 3)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    path = plot_training_loss(tmp_path, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no trainer_state.json"):
        plot_training_loss(tmp_path / "missing", tmp_path / "x.png")
