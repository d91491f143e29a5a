"""teacher_embedding_column: train on teacher embeddings computed elsewhere, without loading the teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_pcoh.cli import distill_main, parse_distillation_args
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_wordnet_glosses
from hf_pcoh.evaluation import embed
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.setup import build_setup
from hf_pcoh.trainer import DistillationTrainer

from tiny_models import MINILM, TINY_BERT

# End-to-end runs on tiny models (seconds each): outside the fast inner loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

COLUMN = "teacher_embedding"
TRAIN_ROWS, TEST_ROWS = 48, 24


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, minilm_path) -> str:
    """A tiny student saved with its tokenizer: both runs start from the same weights."""
    folder = tmp_path_factory.mktemp("student")
    torch.manual_seed(1)
    config = AutoConfig.for_model(**{**TINY_BERT, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32})
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def glosses_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("glosses") / "data"
    splits = load_wordnet_glosses()
    DatasetDict({"train": splits["train"].select(range(TRAIN_ROWS)).add_column("row", list(range(TRAIN_ROWS))),
                 "test": splits["test"].select(range(TEST_ROWS)).add_column("row", list(range(TEST_ROWS)))}
                ).save_to_disk(folder)
    return str(folder)


def run_config(output_dir, **fields) -> DistillationConfig:
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=16, max_steps=6, learning_rate=3e-3, logging_steps=1,
        save_strategy="no", disable_tqdm=True, max_length=32, seed=0, losses=["perception_coherence", "projected_mse"],
        evaluate_after_training=False,
    )
    values.update(fields)
    return DistillationConfig(**values)


def teacher_fields() -> dict:
    return dict(teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM)


def train_losses(config: DistillationConfig) -> tuple[list[float], DistillationTrainer, object]:
    setup = build_setup(config)
    torch.manual_seed(0)  # the loss heads (projected_mse's projector) start alike in both runs
    trainer = DistillationTrainer(student=setup.student, teacher=setup.teacher, args=config,
                                  train_dataset=setup.train_dataset, collator=setup.collator)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], trainer, setup


def with_embeddings(source: str, target: str, train_embeddings: dict[int, list[float]], test_embeddings=None) -> str:
    """The data set of ``source`` with the teacher's embeddings as a column, as one made elsewhere would be."""
    splits = DatasetDict.load_from_disk(source)
    columns = {"train": [train_embeddings[row] for row in splits["train"]["row"]]}
    if test_embeddings is not None:
        columns["test"] = [test_embeddings[row] for row in splits["test"]["row"]]
    DatasetDict({name: split.add_column(COLUMN, columns[name]) if name in columns else split
                 for name, split in splits.items()}).save_to_disk(target)
    return target


def test_a_precomputed_column_trains_as_the_teacher_cache_does_without_a_teacher(tmp_path, student_dir,
                                                                                 glosses_dir) -> None:
    cached, _, cached_setup = train_losses(run_config(tmp_path / "cached", student_model_name_or_path=student_dir,
                                                      dataset_name=glosses_dir, teacher_cache=str(tmp_path / "cache"),
                                                      **teacher_fields()))
    rows = cached_setup.train_dataset
    features = dict(zip(rows["row"], rows["teacher_features_0"]))  # what the teacher cache computed
    data = with_embeddings(glosses_dir, str(tmp_path / "with_embeddings"), features)
    config = run_config(tmp_path / "precomputed", student_model_name_or_path=student_dir, dataset_name=data,
                        teacher_embedding_column=COLUMN)
    assert config.teacher_model_name_or_path is None and config.teacher_config is None
    precomputed, trainer, setup = train_losses(config)
    assert setup.teacher is None and trainer.teacher is None  # never loaded
    assert len(precomputed) == 6
    np.testing.assert_allclose(precomputed, cached, rtol=0, atol=1e-5)


def test_a_run_without_a_teacher_is_measured_against_the_column(tmp_path, student_dir, glosses_dir) -> None:
    """The whole job (training, evaluation against the column's embeddings of the test split, provenance, card);
    the embeddings here come from a teacher run beforehand, as SentenceTransformer.encode would give them."""
    teacher_setup = build_setup(run_config(tmp_path / "teacher", student_model_name_or_path=student_dir,
                                           dataset_name=glosses_dir, **teacher_fields()))
    extractor = teacher_setup.readout.teacher_embedding
    splits = DatasetDict.load_from_disk(glosses_dir)
    embeddings = {name: dict(zip(split["row"], embed(teacher_setup.teacher, teacher_setup.collator.teacher_processor,
                                                    split["text"], extractor, "text", max_length=32).values.tolist()))
                  for name, split in splits.items()}
    data = with_embeddings(glosses_dir, str(tmp_path / "with_embeddings"), embeddings["train"], embeddings["test"])
    result = run_distillation(run_config(tmp_path / "run", student_model_name_or_path=student_dir, dataset_name=data,
                                         teacher_embedding_column=COLUMN, max_steps=2, evaluate_after_training=True))
    student, teacher = result.evaluation["student"], result.evaluation["teacher"]
    assert 0.0 <= student["teacher_neighbour_recall@10"] <= 1.0 and student["parameters"] > 0
    assert "parameters" not in teacher
    # measured on the column: the same figures as the teacher model that wrote it, measured live
    live = run_distillation(run_config(tmp_path / "live", student_model_name_or_path=student_dir,
                                       dataset_name=glosses_dir, max_steps=2, evaluate_after_training=True,
                                       **teacher_fields()))
    assert live.evaluation["teacher"]["knn_accuracy@10"] > 0  # a real measurement to compare with
    compared = [name for name, value in live.evaluation["teacher"].items()
                if isinstance(value, float) and "per_second" not in name and name != "parameters"]
    assert "knn_accuracy@10" in compared and len(compared) >= 3
    for name in compared:
        assert teacher[name] == pytest.approx(live.evaluation["teacher"][name], abs=1e-4), name
    saved = json.loads((tmp_path / "run" / "distillation_config.json").read_text())
    assert saved["teacher"] == {"name_or_path": f"embeddings precomputed in column {COLUMN!r}", "source": "precomputed",
                                "embedding_column": COLUMN}
    assert "embeddings precomputed in column" in (tmp_path / "run" / "README.md").read_text()


def test_the_trainer_api_needs_no_teacher_either(tmp_path, student_dir) -> None:
    rows = load_wordnet_glosses()["train"].select(range(16))
    dataset = rows.add_column(COLUMN, np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32).tolist())
    config = run_config(tmp_path, teacher_embedding_column=COLUMN, max_steps=2)
    trainer = DistillationTrainer(model=student_dir, args=config, train_dataset=dataset)
    assert trainer.teacher is None and trainer.distillation_collator.teacher_embedding_column == COLUMN
    trainer.train()
    assert trainer.state.global_step == 2


def saved_with(tmp_path, train_embeddings: list, test_embeddings: list | None = None, test_rows: int = 0) -> str:
    """A data set whose train split holds ``train_embeddings``; its test split ``test_embeddings``, or
    ``test_rows`` rows without the column."""
    folder = str(tmp_path / "bad")
    texts = load_wordnet_glosses()["train"].select(range(len(train_embeddings)))["text"]
    splits = {"train": Dataset.from_dict({"text": texts, COLUMN: train_embeddings})}
    if test_embeddings is not None:
        splits["test"] = Dataset.from_dict({"text": texts[:len(test_embeddings)], COLUMN: test_embeddings})
    elif test_rows:
        splits["test"] = Dataset.from_dict({"text": texts[:test_rows]})
    DatasetDict(splits).save_to_disk(folder)
    return folder


BAD_COLUMNS = {
    "rows of another width": (lambda tmp: saved_with(tmp, [[0.5] * 8] * 14 + [[0.5] * 6] * 2),
                              "the embeddings must all have one width (one model's), found 2 row(s) of width 6, 14 row(s) "
                              "of width 8; e.g. rows [14, 15] differ"),
    "a row without an embedding": (lambda tmp: saved_with(tmp, [[0.5] * 8] * 3 + [None] + [[0.5] * 8] * 12),
                                   "1 row(s) have no embedding (None), e.g. rows [3]"),
    "a NaN": (lambda tmp: saved_with(tmp, [[0.5] * 8] * 5 + [[float("nan")] * 8] + [[0.5] * 8] * 10),
              "1 row(s) hold NaN or inf, e.g. rows [5]"),
    "text instead of vectors": (lambda tmp: saved_with(tmp, ["0.5, 0.5"] * 16), "holds string, not one vector of numbers"),
    "evaluation split of another width": (lambda tmp: saved_with(tmp, [[0.5] * 8] * 16, [[0.5] * 4] * 12),
                                          "the embeddings are 8 wide in split 'train' but 4 wide in split 'test'"),
    "evaluation split without the column": (lambda tmp: saved_with(tmp, [[0.5] * 8] * 16, test_rows=12),
                                            "is not a column of split 'test', which the run evaluates on"),
}


@pytest.mark.parametrize("case", list(BAD_COLUMNS))
def test_a_wrong_column_is_refused_before_training(case, tmp_path, student_dir) -> None:
    make, message = BAD_COLUMNS[case]
    config = run_config(tmp_path / "run", student_model_name_or_path=student_dir, dataset_name=make(tmp_path),
                        teacher_embedding_column=COLUMN, evaluate_after_training="evaluation" in case)
    with pytest.raises(ValueError) as error:
        build_setup(config)
    assert message in str(error.value) and f"teacher_embedding_column={COLUMN!r}" in str(error.value)


def test_options_that_need_a_teacher_are_refused_with_a_column(tmp_path) -> None:
    with pytest.raises(ValueError, match="holds one embedding per row: give one student layer"):
        run_config(tmp_path, teacher_embedding_column=COLUMN, student_layers=["1", "last"], teacher_layers=["1", "last"])
    with pytest.raises(ValueError, match="so teacher_cache cannot apply"):
        run_config(tmp_path, teacher_embedding_column=COLUMN, teacher_cache=str(tmp_path))
    config = run_config(tmp_path, teacher_embedding_column=COLUMN, student_config={"num_hidden_layers": 1})
    with pytest.raises(ValueError, match="overrides the teacher's config, but no teacher is loaded"):
        build_setup(config)


def test_a_run_that_names_no_recipe_is_refused_only_for_what_it_set(tmp_path, student_dir, glosses_dir) -> None:
    """No hidden recipe: from Python and from a command line that names none, a column run gets DistillationConfig's
    defaults and trains (the built-in recipe's teacher_cache and student_init_from_teacher used to refuse it); a
    recipe that is named still brings its options, and the refusal says how to turn them off."""
    rng = np.random.default_rng(0)
    embeddings = {name: {row: rng.normal(size=12).tolist() for row in range(rows)}
                  for name, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS))}
    data = with_embeddings(glosses_dir, str(tmp_path / "data"), embeddings["train"], embeddings["test"])
    fields = dict(student_model_name_or_path=student_dir, dataset_name=data, teacher_embedding_column=COLUMN,
                  max_steps=2, per_device_train_batch_size=16, max_length=32, losses=["perception_coherence"],
                  save_strategy="no", evaluate_after_training=False, disable_tqdm=True)
    result = run_distillation(DistillationConfig(output_dir=str(tmp_path / "python"), **fields))
    assert result.evaluation is None and (tmp_path / "python" / "model.safetensors").is_file()
    argv = [item for name, value in fields.items()
            for item in (f"--{name}", *(value if isinstance(value, list) else [str(value)]))]
    config = parse_distillation_args([*argv, "--output_dir", str(tmp_path / "cli")])
    assert config.teacher_cache is None and not config.student_init_from_teacher and config.teacher_model_name_or_path is None
    assert distill_main([*argv, "--output_dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match=r"so teacher_cache cannot apply: drop it \(--teacher_cache none\)"):
        parse_distillation_args(["minilm-wordnet", *argv, "--output_dir", str(tmp_path / "recipe")])
