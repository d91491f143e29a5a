"""The data path of a step: texts tokenised once for the whole training set and padded per batch, exactly as
tokenising each batch would; grouping texts by length is opt-in (train_sampling_strategy)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from hf_pcoh import DistillationConfig
from hf_pcoh.collator import DistillationCollator, tokenize_once
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT, TINY_RESNET, TINY_VIT

TEXTS = [
    "a dog",
    "the quick brown fox jumps over the lazy dog near the river bank at dawn",
    "ok",
    "a gloss long enough to be truncated: " + "very " * 40 + "long",
    "",
    "an organization of people",
]


def collators(tokenizer_path: str, padding_side: str, own_teacher_tokenizer: bool) -> DistillationCollator:
    student = AutoTokenizer.from_pretrained(tokenizer_path)
    teacher = AutoTokenizer.from_pretrained(tokenizer_path) if own_teacher_tokenizer else student
    for tokenizer in (student, teacher):
        tokenizer.padding_side = padding_side
    return DistillationCollator(student, teacher, "text", "text", max_length=16)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("own_teacher_tokenizer", [False, True])
def test_batches_of_texts_tokenised_once_equal_batches_tokenised_now(minilm_path, padding_side, own_teacher_tokenizer) -> None:
    collator = collators(minilm_path, padding_side, own_teacher_tokenizer)
    raw = Dataset.from_dict({"text": TEXTS})
    tokenised = tokenize_once(raw, collator.student_processor, collator.teacher_processor, "text", collator.max_length)
    assert "student_tokens_input_ids" in tokenised.column_names
    assert ("teacher_tokens_input_ids" in tokenised.column_names) == own_teacher_tokenizer
    for batch_rows in ([0, 1, 2], [3, 4, 5], [4], list(range(len(TEXTS)))):
        expected = collator([raw[i] for i in batch_rows])
        batch = collator([tokenised[i] for i in batch_rows])
        assert batch.keys() == expected.keys()
        for role in [key for key in expected if key.endswith("_inputs")]:
            assert batch[role].keys() == expected[role].keys()
            for name, tensor in expected[role].items():
                assert batch[role][name].dtype == tensor.dtype
                assert torch.equal(batch[role][name], tensor), (role, name)
    # padded to the batch's longest text, not to max_length
    assert collator([tokenised[0], tokenised[2]])["student_inputs"]["input_ids"].shape == (2, 4)


def text_config(tmp_path, **fields) -> DistillationConfig:
    values = dict(
        output_dir=str(tmp_path), use_cpu=True, teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
        dataset_name="wordnet_glosses", max_train_samples=96, per_device_train_batch_size=16, max_steps=3,
        max_length=32, losses=["projected_mse"], save_strategy="no", disable_tqdm=True, report_to="none",
        evaluate_after_training=False, seed=0,
    )
    values.update(fields)
    return DistillationConfig(**values)


def test_a_text_setup_tokenises_its_training_set_once_and_samples_at_random_by_default(tmp_path, minilm_path) -> None:
    setup = build_setup(text_config(tmp_path))
    train = setup.train_dataset
    assert setup.config.train_sampling_strategy == "random" and "length" not in train.column_names
    rows = [train[i] for i in range(16)]
    raw_rows = [{name: value for name, value in row.items() if "_tokens_" not in name} for row in rows]
    for name, tensor in setup.collator(raw_rows)["student_inputs"].items():
        assert torch.equal(setup.collator(rows)["student_inputs"][name], tensor)


def test_grouping_by_length_is_opt_in_and_groups_texts_of_similar_length(tmp_path, minilm_path) -> None:
    # 640 rows: the sampler sorts "megabatches" of up to 50 batches, here 10
    config = text_config(tmp_path, train_sampling_strategy="group_by_length", max_train_samples=640)
    setup = build_setup(config)
    train = setup.train_dataset
    assert list(train["length"]) == [len(ids) for ids in train["student_tokens_input_ids"]]
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=train, collator=setup.collator)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    random_widths = [setup.collator([train[i] for i in range(start, start + 16)])["student_inputs"]["input_ids"].shape[1]
                     for start in range(0, 640, 16)]
    grouped_widths = [batch["student_inputs"]["input_ids"].shape[1] for batch in trainer.get_train_dataloader()]
    assert sum(grouped_widths) < sum(random_widths)  # less padding: what the option is for
    trainer.train()
    assert trainer.state.global_step == 3


def test_grouping_images_by_length_is_refused(tmp_path, digits_processor_dir) -> None:
    config = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, teacher_config=TINY_RESNET, teacher_processor_name_or_path=digits_processor_dir,
        student_config=TINY_VIT, dataset_name="digits", pooling="mean", teacher_pooling="gap",
        per_device_train_batch_size=16, max_train_samples=48, report_to="none", train_sampling_strategy="group_by_length",
    )
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'.*images"):
        build_setup(config)
