"""The student's forward on length-sorted chunks (``student_forward_chunk_size``, hf_pcoh.length_chunks): the same
pooled features and gradients as one forward of the whole batch, far fewer padded tokens, the batch's order kept;
the cases it cannot reassemble refused with a fix; and a training run on real glosses that follows the unchunked
run step for step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_wordnet_glosses
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.length_chunks import chunked_features, length_order
from hf_pcoh.losses import PerceptionCoherenceLoss

from test_distillation import distil, text_fields, tiny_run_config, train_losses
from tiny_models import TINY_BERT

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def batch(minilm_path) -> dict[str, torch.Tensor]:
    """48 real glosses, as a right-padded batch would hold them (lengths 3 to 64 tokens)."""
    glosses = load_wordnet_glosses()["train"]["text"][:48]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return dict(tokenizer(glosses, padding=True, truncation=True, max_length=64, return_tensors="pt"))


@pytest.fixture(scope="module")
def student() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(**{key: value for key, value in TINY_BERT.items() if key != "model_type"}, **NO_DROPOUT)
    return BertModel(config)


EXTRACTORS = (FeatureExtractor("last", "mean"), FeatureExtractor(1, "cls", normalize=True),
              FeatureExtractor("last", "max"))


def whole(student: BertModel, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    outputs = student(**inputs, output_hidden_states=True)
    return [extractor(outputs, inputs["attention_mask"]).values for extractor in EXTRACTORS]


def chunked(student: BertModel, inputs: dict[str, torch.Tensor], size: int, calls: list | None = None) -> list[torch.Tensor]:
    def forward(**chunk: torch.Tensor):
        if calls is not None:
            calls.append(tuple(chunk["input_ids"].shape))
        return student(**chunk, output_hidden_states=True)
    return [features.values for features in chunked_features(forward, EXTRACTORS, inputs, size)]


@pytest.mark.parametrize("size", [1, 7, 16, 48, 100])
def test_chunks_give_the_whole_batchs_pooled_features_in_its_order(batch, student, size) -> None:
    with torch.no_grad():
        expected, got = whole(student, batch), chunked(student, batch, size)
    for reference, features in zip(expected, got):
        assert features.shape == reference.shape
        torch.testing.assert_close(features, reference, rtol=1e-5, atol=1e-5)


def test_gradients_through_the_chunks_are_the_whole_batchs(batch, student) -> None:
    """A batch-level loss (perception coherence) on the reassembled rows: every parameter's gradient as with one
    forward, since the graph spans the chunks."""
    teacher = torch.randn(batch["input_ids"].shape[0], 24, generator=torch.Generator().manual_seed(1))
    loss = PerceptionCoherenceLoss(student_dim=32, teacher_dim=24, dissimilarity="cosine", soft_rank="sorted")

    def gradients(features: list[torch.Tensor]) -> list[torch.Tensor]:
        student.zero_grad()
        loss(features[0], teacher).backward()
        return [parameter.grad.clone() for parameter in student.parameters() if parameter.grad is not None]

    expected, got = gradients(whole(student, batch)), gradients(chunked(student, batch, 8))
    assert len(got) == len(expected) > 10
    for reference, gradient in zip(expected, got):
        torch.testing.assert_close(gradient, reference, rtol=1e-4, atol=1e-6)


def test_each_chunk_is_trimmed_to_its_own_longest(batch, student) -> None:
    calls: list[tuple[int, int]] = []
    with torch.no_grad():
        chunked(student, batch, 8, calls)
    lengths = batch["attention_mask"].sum(dim=1)
    sorted_lengths = lengths[length_order(batch["attention_mask"])]
    assert [rows for rows, _ in calls] == [8] * 6
    assert [width for _, width in calls] == [int(sorted_lengths[end - 1]) for end in range(8, 49, 8)]
    padded_whole = batch["input_ids"].numel()
    padded_chunks = sum(rows * width for rows, width in calls)
    assert padded_chunks < 0.6 * padded_whole  # real glosses vary in length: most of the whole batch is padding


def test_what_chunks_cannot_reassemble_is_refused_with_a_fix(batch, student) -> None:
    tokens = (FeatureExtractor("last", "none"),)
    forward = lambda **chunk: student(**chunk, output_hidden_states=True)  # noqa: E731
    with pytest.raises(ValueError, match="pooled features only"):
        chunked_features(forward, tokens, batch, 8)
    left = {name: torch.flip(value, dims=[1]) for name, value in batch.items()}
    with pytest.raises(ValueError, match="padding_side: right"):
        chunked_features(forward, EXTRACTORS, left, 8)
    with pytest.raises(ValueError, match=">= 1"):
        chunked_features(forward, EXTRACTORS, batch, 0)
    # images have no attention mask: nothing to trim, the batch runs whole
    calls = []
    pixels = {"inputs_embeds": torch.randn(4, 5, 32)}
    chunked_features(lambda **chunk: calls.append(chunk) or student(**chunk, output_hidden_states=True),
                     EXTRACTORS[:1], pixels, 2)
    assert len(calls) == 1 and calls[0]["inputs_embeds"].shape[0] == 4


@pytest.mark.parametrize("fields, message", [
    ({"ce_weight": 1.0, "label_column": "label"}, "ce_weight=1.0"),
    ({"task": "causal_lm"}, "task=causal_lm"),
    ({"padding_side": "left"}, "padding_side 'left'"),
    ({"student_forward_chunk_size": 0}, ">= 1"),
])
def test_the_config_refuses_what_chunks_cannot_serve(tmp_path, fields, message) -> None:
    options = dict(output_dir=str(tmp_path), teacher_model_name_or_path="teacher", student_config={"num_hidden_layers": 1},
                   student_forward_chunk_size=16)
    with pytest.raises(ValueError, match=message):
        DistillationConfig(**{**options, **fields})


def test_a_chunked_run_on_real_glosses_follows_the_whole_batch_run(tmp_path) -> None:
    """Without dropout, chunks change nothing but float rounding: the loss curve of a run with chunks of 8 follows
    the run with one forward per batch of 32, step by step."""
    fields = text_fields({**TINY_BERT, **NO_DROPOUT}, {"num_hidden_layers": 1, **NO_DROPOUT}, "mean")
    curves = []
    for size in (None, 8):
        config = tiny_run_config(str(tmp_path / f"chunks{size}"), max_train_samples=64, max_steps=6,
                                 student_forward_chunk_size=size, **fields)
        trainer, _ = distil(config)
        assert trainer.model.student_forward_chunk_size == size
        curves.append(train_losses(trainer))
    assert len(curves[1]) == 6
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-3)
    assert curves[1][-1] < curves[1][0]  # and it learns


def test_the_option_is_a_dataclass_field_with_its_help() -> None:
    field = {item.name: item for item in dataclasses.fields(DistillationConfig)}["student_forward_chunk_size"]
    assert field.default is None and "length-sorted chunks" in field.metadata["help"]
