"""The teacher forward of every step (hf_pcoh.frozen_teacher): cut after the deepest layer read, under
inference mode, with features identical to the full forward's and usable by every loss's backward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from hf_pcoh import LOSSES
from hf_pcoh.features import FeatureExtractor
from hf_pcoh.frozen_teacher import plan_teacher_run, run_teacher
from hf_pcoh.losses import build_loss
from hf_pcoh.models import config_from_dict

from tiny_models import TINY_BERT, TINY_GPT2, TINY_LLAMA, TINY_OPT, TINY_RESNET, TINY_VIT

DEEP_BERT = {**TINY_BERT, "num_hidden_layers": 4}
DEEP_VIT = {**TINY_VIT, "num_hidden_layers": 3}
DEEP_RESNET = {**TINY_RESNET, "hidden_sizes": [8, 16, 32], "depths": [1, 1, 1]}
DEEP_OPT = {**TINY_OPT, "num_hidden_layers": 3}
DEEP_GPT2 = {**TINY_GPT2, "n_layer": 3}
DEEP_LLAMA = {**TINY_LLAMA, "num_hidden_layers": 3}


def build(config: dict, head: bool = False) -> torch.nn.Module:
    model_class = AutoModelForSequenceClassification if head else AutoModel
    return model_class.from_config(config_from_dict(config)).eval().requires_grad_(False)


def text_inputs() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(1000, 2000, (5, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0  # padding: the mask must reach the cut forward as it reaches the full one
    attention_mask[3, 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def image_inputs(channels: int = 1, size: int = 8) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(5, channels, size, size)}


def full_forward_features(model, inputs, extractors):
    """What the trainer computed before: the whole teacher with every hidden state, pooled."""
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
    return [extractor(outputs, inputs.get("attention_mask")).values for extractor in extractors]


def count_block_calls(blocks) -> list[int]:
    calls = [0] * len(blocks)
    for index, block in enumerate(blocks):
        block.register_forward_hook(lambda *args, index=index: calls.__setitem__(index, calls[index] + 1))
    return calls


@pytest.mark.parametrize(
    ("config", "inputs", "blocks", "layers", "pooling", "depth"),
    [
        (DEEP_BERT, text_inputs, "encoder.layer", [1, 2], "mean", 2),
        (DEEP_BERT, text_inputs, "encoder.layer", [-3], "cls", 2),  # 5 hidden states: -3 is index 2
        (DEEP_BERT, text_inputs, "encoder.layer", [0], "none", 1),  # the embeddings: one block records them
        (DEEP_VIT, image_inputs, "layers", [2], "mean", 2),  # ViT's final layernorm must not reach index 2
        (DEEP_RESNET, image_inputs, "encoder.stages", [1, 2], "gap", 2),
        # decoders: their blocks found from _no_split_modules, wherever the model keeps them
        (DEEP_OPT, text_inputs, "decoder.layers", [1], "last_token", 1),
        (DEEP_OPT, text_inputs, "decoder.layers", [2, 1], "none", 2),
        (DEEP_GPT2, text_inputs, "h", [2], "mean", 2),
        (DEEP_LLAMA, text_inputs, "layers", [1, 2], "last_token", 2),
    ],
)
def test_a_teacher_read_below_its_last_layer_runs_only_that_deep_with_identical_features(
    config, inputs, blocks, layers, pooling, depth
) -> None:
    teacher = build(config)
    batch = inputs()
    extractors = [FeatureExtractor(layer, pooling, "teacher") for layer in layers]
    expected = full_forward_features(teacher, batch, extractors)
    block_list = teacher.get_submodule(blocks)
    calls = count_block_calls(block_list)

    features, logits = run_teacher(teacher, batch, extractors)

    assert plan_teacher_run(teacher, extractors).depth == depth
    assert calls == [1] * depth + [0] * (len(block_list) - depth)  # the blocks after the deepest never ran
    for feature, reference in zip(features, expected):
        assert torch.equal(feature.values, reference)  # bit for bit the full forward's
    assert logits is None
    # the teacher itself is untouched: all its blocks, its config, all its hidden states
    assert len(teacher.get_submodule(blocks)) == len(block_list)
    assert not hasattr(teacher.config, "tie_last_hidden_states") or teacher.config.tie_last_hidden_states is not False
    with torch.no_grad():
        assert len(teacher(**batch, output_hidden_states=True).hidden_states) == len(block_list) + 1


@pytest.mark.parametrize("config", [DEEP_BERT, DEEP_OPT, DEEP_LLAMA], ids=["bert", "opt", "llama"])
def test_a_cut_forward_first_leaves_the_full_forward_as_it_was(config) -> None:
    """transformers records hidden states by hooks installed at the first call (by the model, or by OPT's
    decoder): a cut view running first must not leave the teacher with its hidden states recorded twice."""
    teacher = build(config)
    batch = text_inputs()
    run_teacher(teacher, batch, [FeatureExtractor(1, "mean", "teacher")])
    with torch.no_grad():
        hidden_states = teacher(**batch, output_hidden_states=True).hidden_states
    fresh = build(config)
    fresh.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        reference = fresh(**batch, output_hidden_states=True).hidden_states
    layers = config.get("num_hidden_layers")
    assert len(hidden_states) == len(reference) == layers + 1
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(hidden_states, reference))


@pytest.mark.parametrize(
    ("config", "inputs", "layers", "pooling"),
    [
        (DEEP_BERT, text_inputs, ["last"], "mean"),  # last_hidden_state: every block
        (DEEP_BERT, text_inputs, [4, 1], "mean"),  # the last index
        (DEEP_BERT, text_inputs, ["pooler"], "mean"),
        (DEEP_OPT, text_inputs, [3], "last_token"),  # a decoder's last index: every block
        (DEEP_RESNET, image_inputs, ["last"], "gap"),
    ],
)
def test_a_teacher_read_at_its_last_layer_or_of_another_layout_runs_whole_with_identical_features(
    config, inputs, layers, pooling
) -> None:
    teacher = build(config)
    batch = inputs()
    extractors = [FeatureExtractor(layer, pooling, "teacher") for layer in layers]
    expected = full_forward_features(teacher, batch, extractors)
    features, _ = run_teacher(teacher, batch, extractors)
    assert plan_teacher_run(teacher, extractors).depth is None
    for feature, reference in zip(features, expected):
        assert torch.equal(feature.values, reference)


def test_a_teacher_with_a_head_runs_whole_and_gives_its_logits() -> None:
    teacher = build(DEEP_BERT, head=True)
    batch = text_inputs()
    extractors = [FeatureExtractor(1, "mean", "teacher")]
    with torch.no_grad():
        outputs = teacher(**batch, output_hidden_states=True)
    features, logits = run_teacher(teacher, batch, extractors)
    assert plan_teacher_run(teacher, extractors).depth is None
    assert torch.equal(features[0].values, extractors[0](outputs, batch["attention_mask"]).values)
    assert torch.equal(logits, outputs.logits) and not logits.is_inference()


@pytest.mark.parametrize("pooling", ["cls", "mean", "none"])
def test_teacher_features_are_ordinary_tensors_that_every_loss_can_backpropagate_through(pooling) -> None:
    """The forward runs under inference mode; what leaves it must still be usable by autograd."""
    teacher = build(DEEP_BERT)
    batch = text_inputs()
    (teacher_features,), _ = run_teacher(teacher, batch, [FeatureExtractor(2, pooling, "teacher")])
    assert not teacher_features.values.is_inference()
    for name, loss_class in LOSSES.items():
        if loss_class.input_kind == "logits" or (pooling == "none" and not loss_class.accepts_tokens):
            continue
        loss = build_loss(name, student_dim=16, teacher_dim=teacher_features.dim)
        student = torch.randn(*teacher_features.values.shape[:-1], 16, requires_grad=True)
        value = loss(student, teacher_features.values, mask=teacher_features.mask)
        value.backward()
        assert student.grad is not None and torch.isfinite(student.grad).all(), name
