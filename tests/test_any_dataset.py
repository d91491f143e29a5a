"""Any data set ``datasets`` reads: data files (csv, json lines, parquet, text), an imagefolder, a stream, and
a teacher and a student reading different columns of the same rows. Every file is written by the test."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, IterableDataset
from PIL import Image

from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits, load_wordnet_glosses
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.setup import build_setup
from hf_pcoh.setup_data import encode_string_labels, load_config_splits
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT, TINY_RESNET, TINY_VIT

# End-to-end runs on tiny models (seconds each): outside the fast inner loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

TINY_STUDENT = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}


def text_run(tmp_path, **fields) -> DistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config=TINY_STUDENT, per_device_train_batch_size=8, max_steps=3, learning_rate=3e-3, logging_steps=1,
        save_strategy="no", disable_tqdm=True, max_length=32, seed=0, losses=["perception_coherence"],
        evaluate_after_training=False,
    )
    values.update(fields)
    return DistillationConfig(**values)


def glosses(split: str, rows: int) -> tuple[list[str], list[str]]:
    """Real texts and their class names (strings) from the shipped WordNet glosses."""
    data = load_wordnet_glosses()[split].select(range(rows))
    names = data.features["label"]
    return list(data["text"]), [names.int2str(label) for label in data["label"]]


def train(config: DistillationConfig) -> tuple[DistillationTrainer, object]:
    setup = build_setup(config)
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    return trainer, setup


def losses_of(trainer: DistillationTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ---- data files -----------------------------------------------------------------------------------------


def test_csv_with_string_labels_trains_and_evaluates_with_class_ids(tmp_path, minilm_path) -> None:
    for split, rows in (("train", 48), ("test", 24)):
        texts, names = glosses(split, rows)
        Dataset.from_dict({"text": texts, "label": names}).to_csv(tmp_path / f"{split}.csv", index=False)
    config = text_run(tmp_path, dataset_name="csv", dataset_files=[f"train={tmp_path / 'train.csv'}",
                                                                    f"test={tmp_path / 'test.csv'}"],
                      evaluate_after_training=True, max_eval_samples=24)
    splits = encode_string_labels(config, load_config_splits(config))
    label = splits["train"].features["label"]
    every_name = set(glosses("train", 48)[1]) | set(glosses("test", 24)[1])
    assert isinstance(label, ClassLabel) and label.names == sorted(every_name)
    assert splits["test"].features["label"] == label  # one mapping for every split
    result = run_distillation(config)
    student = result.evaluation["student"]
    assert 0.0 <= student["knn_accuracy@10"] <= 1.0 and np.isfinite(student["teacher_neighbour_recall@10"])
    saved = json.loads((tmp_path / "run" / "distillation_config.json").read_text())
    assert saved["recipe"]["dataset_files"] == config.dataset_files


def test_json_lines_file_is_the_training_split(tmp_path, minilm_path) -> None:
    texts, names = glosses("train", 32)
    path = tmp_path / "glosses.jsonl"
    path.write_text("".join(json.dumps({"sentence": text, "topic": name}) + "\n" for text, name in zip(texts, names)))
    config = text_run(tmp_path, dataset_name="json", dataset_files=[str(path)], label_column="topic")
    trainer, setup = train(config)
    assert setup.collator.input_column == "sentence"  # found among the obvious text columns
    assert setup.collator.label_column == "topic" and isinstance(setup.train_dataset.features["topic"], ClassLabel)
    losses = losses_of(trainer)
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_folder_of_parquet_files_is_read_by_its_format_and_split_names(tmp_path, minilm_path) -> None:
    folder = tmp_path / "parquet"
    folder.mkdir()
    for split, rows in (("train", 32), ("test", 16)):
        texts, names = glosses(split, rows)
        Dataset.from_dict({"text": texts, "label": names}).to_parquet(folder / f"{split}.parquet")
    splits = load_splits(str(folder))
    assert {name: len(split) for name, split in splits.items()} == {"train": 32, "test": 16}
    trainer, _ = train(text_run(tmp_path, dataset_name=str(folder)))
    assert len(losses_of(trainer)) == 3


def test_plain_text_lines(tmp_path, minilm_path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(glosses("train", 32)[0]) + "\n")
    config = text_run(tmp_path, dataset_name="text", dataset_files=[str(path)])
    trainer, setup = train(config)
    assert setup.collator.input_column == "text" and setup.collator.label_column is None
    assert len(losses_of(trainer)) == 3


def test_imagefolder_class_folders_become_labels(tmp_path, digits_processor_dir) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("test", 6)):
        for name in ("circle", "square"):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{index}.png")
    config = DistillationConfig(
        output_dir=str(tmp_path / "run"), teacher_config=TINY_RESNET, student_config=TINY_VIT,
        teacher_processor_name_or_path=digits_processor_dir, dataset_name="imagefolder",
        dataset_files=[f"train={tmp_path / 'images' / 'train'}", f"test={tmp_path / 'images' / 'test'}"],
        pooling="mean", teacher_pooling="gap", per_device_train_batch_size=8, max_steps=3, logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=0, losses=["perception_coherence"], evaluate_after_training=True,
    )
    result = run_distillation(config)
    saved = json.loads((tmp_path / "run" / "distillation_config.json").read_text())
    assert saved["dataset"]["image_column"] == "image" and saved["dataset"]["label_column"] == "label"
    assert saved["dataset"]["train_samples"] == 16 and result.evaluation["num_samples"] == 12
    assert 0.0 <= result.evaluation["student"]["knn_accuracy@10"] <= 1.0


# ---- streaming ------------------------------------------------------------------------------------------


def write_jsonl(path, texts: list[str], labels: list) -> str:
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in zip(texts, labels)))
    return str(path)


def test_a_stream_trains_max_steps_and_evaluates_a_sample_of_its_eval_split(tmp_path, minilm_path) -> None:
    files = [f"{split}=" + write_jsonl(tmp_path / f"{split}.jsonl", texts, list(range(len(texts)))) for split, texts in
             (("train", glosses("train", 40)[0]), ("test", glosses("test", 30)[0]))]
    # 40 rows, batches of 8: max_steps 7 reads the stream more than once (the Trainer starts a new epoch)
    config = text_run(tmp_path, dataset_name="json", dataset_files=files, streaming=True, max_steps=7,
                      evaluate_after_training=True, max_eval_samples=20, label_column="label")
    setup = build_setup(config)
    assert isinstance(setup.train_dataset, IterableDataset) and len(setup.eval_dataset) == 20
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    assert trainer.state.global_step == 7 and len(losses_of(trainer)) == 7 and all(np.isfinite(losses_of(trainer)))
    result = run_distillation(text_run(tmp_path, output_dir=str(tmp_path / "pipeline"), dataset_name="json",
                                       dataset_files=files, streaming=True, max_steps=2, evaluate_after_training=True,
                                       max_eval_samples=20))
    assert result.evaluation["num_samples"] == 20 and result.evaluation["num_reference_samples"] == 40
    saved = json.loads((tmp_path / "pipeline" / "distillation_config.json").read_text())
    assert saved["dataset"]["train_samples"] is None and saved["recipe"]["streaming"] is True


def test_streaming_needs_max_steps_and_class_ids(tmp_path) -> None:
    with pytest.raises(ValueError, match="streaming: a streamed data set has no length, so the run needs --max_steps"):
        text_run(tmp_path, streaming=True, max_steps=-1)
    path = tmp_path / "named.csv"
    Dataset.from_dict({"text": ["a cat", "a dog"], "label": ["cat", "dog"]}).to_csv(path, index=False)
    config = text_run(tmp_path, dataset_name="csv", dataset_files=[str(path)], streaming=True)
    with pytest.raises(ValueError, match="holds class names, which a streamed data set cannot map to class ids"):
        encode_string_labels(config, load_config_splits(config))


# ---- where the data come from ---------------------------------------------------------------------------


def test_sources_that_cannot_load_say_what_would(tmp_path) -> None:
    with pytest.raises(ValueError, match="dataset_name='csv' reads data files: give them with --dataset_files"):
        load_splits("csv")
    with pytest.raises(ValueError, match=r"unknown built-in dataset 'wordnet'\. Did you mean 'wordnet_glosses'\?"):
        load_splits("wordnet")  # a Hub id without an owner, offline: the built-in sets are named too
    with pytest.raises(ValueError, match="dataset_name='nobody/nothing': could not load it"):
        load_splits("nobody/nothing")
    with pytest.raises(ValueError, match="dataset_files applies to data files or a Hub data set"):
        load_splits("wordnet_glosses", data_files=["x.csv"])


# ---- a teacher and a student reading different columns --------------------------------------------------


def translation_pairs(rows: int) -> dict[str, list[str]]:
    """An English sentence per row and its 'translation' (its words in reverse order: other tokens, same row)."""
    english = [text.lower() for text in glosses("train", rows)[0]]
    return {"en": english, "xx": [" ".join(reversed(text.split())) for text in english]}


def test_teacher_reads_its_column_and_the_student_the_other(tmp_path, minilm_path) -> None:
    folder = str(tmp_path / "pairs")
    Dataset.from_dict(translation_pairs(32)).save_to_disk(folder)
    config = text_run(tmp_path, dataset_name=folder, teacher_text_column="en", student_text_column="xx")
    setup = build_setup(config)
    collator, tokenizer = setup.collator, setup.collator.student_processor
    assert (collator.input_column, collator.teacher_column) == ("xx", "en")
    assert collator.teacher_processor is collator.student_processor  # one tokenizer, two columns
    rows = [setup.train_dataset[index] for index in range(8)]
    raw_rows = [{"en": row["en"], "xx": row["xx"]} for row in rows]  # the same rows, not tokenised beforehand
    for batch in (collator(rows), collator(raw_rows)):
        for role, column in (("teacher_inputs", "en"), ("student_inputs", "xx")):
            expected = tokenizer([row[column] for row in rows], padding=True, truncation=True, max_length=32,
                                 return_tensors="pt")
            torch.testing.assert_close(batch[role]["input_ids"], expected["input_ids"], msg=role)
    assert not torch.equal(collator(rows)["teacher_inputs"]["input_ids"], collator(rows)["student_inputs"]["input_ids"])
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    assert len(losses_of(trainer)) == 3 and all(np.isfinite(losses_of(trainer)))


def test_translation_run_is_measured_teacher_column_against_student_column(tmp_path, minilm_path) -> None:
    from datasets import DatasetDict

    folder = str(tmp_path / "pairs")
    pairs = translation_pairs(56)
    DatasetDict({"train": Dataset.from_dict({name: values[:32] for name, values in pairs.items()}),
                 "test": Dataset.from_dict({name: values[32:] for name, values in pairs.items()})}).save_to_disk(folder)
    result = run_distillation(text_run(tmp_path, dataset_name=folder, teacher_text_column="en",
                                       student_text_column="xx", max_steps=2, evaluate_after_training=True))
    saved = json.loads((tmp_path / "run" / "distillation_config.json").read_text())
    assert saved["dataset"]["text_column"] == "xx" and saved["dataset"]["teacher_text_column"] == "en"
    assert 0.0 <= result.evaluation["student"]["teacher_neighbour_recall@10"] <= 1.0
    assert os.path.isfile(tmp_path / "run" / "README.md")
