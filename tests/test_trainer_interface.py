"""DistillationTrainer called as TRL's trainers are: models as objects or folders, the collator built for the
caller, a config without model options; and trainer.push_to_hub() publishing hf_pcoh's model card."""

from __future__ import annotations

import importlib.util
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from huggingface_hub import HfApi
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_pcoh import hub
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits
from hf_pcoh.setup import build_setup
from hf_pcoh.setup_data import encode_string_labels
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
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenForTheFakedHubCalls0123")
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


# ---- issue 23: the Python API as good as the command line ------------------------------------------------------


def as_class_names(dataset):
    """The glosses with their lexicographer file names as strings ("noun.animal"), as a user's own data has them."""
    names = dataset.features["label"].names
    return Dataset.from_dict({"text": dataset["text"], "label": [names[label] for label in dataset["label"]]})


def test_string_labels_of_python_data_sets_become_the_class_ids_the_command_line_gives(tmp_path, model_dirs,
                                                                                       glosses) -> None:
    """Dataset.from_dict with class names in "label" trains (CE on a head sized by model_init_kwargs), with one
    sorted ClassLabel shared by train and eval, as encode_string_labels maps a data set's splits."""
    train, evaluation = (as_class_names(split) for split in glosses)
    evaluation = Dataset.from_dict({"text": [*evaluation["text"], "a class only the eval split has"],
                                    "label": [*evaluation["label"], "zzz.unseen"]})
    expected = encode_string_labels(DistillationConfig(output_dir=str(tmp_path), report_to="none"),
                                    DatasetDict({"train": train, "test": evaluation}))
    classes = expected["train"].features["label"].num_classes
    args = config(tmp_path / "out", max_steps=2, ce_weight=1.0, model_init_kwargs={"num_labels": classes})
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"], args=args,
                                  train_dataset=train, eval_dataset=evaluation)
    for split, name in ((trainer.train_dataset, "train"), (trainer.eval_dataset, "test")):
        assert split.features["label"] == expected[name].features["label"]
        assert split["label"] == expected[name]["label"]
    names = trainer.train_dataset.features["label"].names
    assert names == sorted(names) and "zzz.unseen" in names and trainer.model.student.config.num_labels == classes
    trainer.train()
    losses = train_losses(trainer)
    assert trainer.state.global_step == 2 and all(np.isfinite(losses))
    assert all(np.isfinite(entry["loss/cross_entropy"]) for entry in trainer.state.log_history if "loss" in entry)
    assert "eval_knn_accuracy@10" in trainer.evaluate()


def test_a_class_objective_with_a_head_too_small_for_the_classes_is_refused(tmp_path, model_dirs, glosses) -> None:
    train = as_class_names(glosses[0])
    with pytest.raises(ValueError, match=r"label_column='label' has \d+ classes but the student's classification head "
                                         r"has 2 \(num_labels\): load it with num_labels="):
        DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"],
                            args=config(tmp_path, ce_weight=1.0), train_dataset=train)


def test_the_data_sets_columns_are_checked_in_one_line(tmp_path, model_dirs, glosses) -> None:
    train, evaluation = (as_class_names(split) for split in glosses)
    models = dict(model=model_dirs["student"], teacher_model=model_dirs["teacher"])
    cases = [
        (dict(args=config(tmp_path, text_column="body"), train_dataset=train),
         "text_column='body' is not a column of train_dataset (columns: ['text', 'label'])"),
        (dict(args=config(tmp_path), train_dataset=train.rename_column("text", "gloss")),
         "train_dataset has no obvious text or image column (columns: ['gloss', 'label']): name it with "
         "DistillationConfig(text_column=...)"),
        (dict(args=config(tmp_path), train_dataset=train, eval_dataset=evaluation.remove_columns("text")),
         "eval_dataset has no column 'text' (the student's input, read from train_dataset): its columns are ['label']"),
        (dict(args=config(tmp_path), train_dataset=train,
              eval_dataset=Dataset.from_dict({"text": ["a", None, "b"], "label": ["x", "y", "z"]})),
         "eval_dataset, column 'text': 1 row(s) have no text (None), e.g. rows [1]"),
        (dict(args=config(tmp_path), train_dataset=Dataset.from_dict({"text": train["text"],
                                                                      "label": [None, *train["label"][1:]]})),
         "train_dataset: 1 row(s) have no label (None) in label_column='label'"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError) as error:
            DistillationTrainer(**models, **arguments)
        assert message in str(error.value) and "\n" not in str(error.value), (message, str(error.value))


def test_the_constructor_has_trls_shape(tmp_path, model_dirs, glosses, monkeypatch) -> None:
    """args=None gives the config's defaults, written to "<student>-Distill"; everything after args is keyword-only,
    under TRL's names; model_init_kwargs reach the student's from_pretrained."""
    train, _ = glosses
    parameters = inspect.signature(DistillationTrainer).parameters
    assert list(parameters)[:3] == ["model", "teacher_model", "args"]
    trl_names = ["data_collator", "train_dataset", "eval_dataset", "processing_class", "callbacks", "optimizers",
                 "peft_config"]
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in trl_names)
    with pytest.raises(TypeError):
        DistillationTrainer(model_dirs["student"], model_dirs["teacher"], config(tmp_path), train)
    monkeypatch.chdir(tmp_path)
    # (models that read the default max_length of 128 tokens)
    student, teacher = (AutoModel.from_pretrained(model_dirs[role], max_position_embeddings=128,
                                                  ignore_mismatched_sizes=True) for role in ("student", "teacher"))
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["student"])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, processing_class=tokenizer,
                                  train_dataset=train)
    assert trainer.args.output_dir == "student-Distill" and trainer.args.max_length == 128
    assert trainer.args.losses == DistillationConfig(output_dir="x", report_to="none").losses
    with pytest.raises(ValueError, match="args=None: the default DistillationConfig names no model, so pass model="):
        DistillationTrainer(teacher_model=teacher, train_dataset=train)
    eager = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"], train_dataset=train,
                                args=config(tmp_path, model_init_kwargs={"attn_implementation": "eager"}))
    assert eager.model.student.config._attn_implementation == "eager"
    assert trainer.model.student.config._attn_implementation != "eager"


def test_a_lora_student_trains_its_adapters_and_saves_them(tmp_path, model_dirs, glosses) -> None:
    peft = pytest.importorskip("peft")
    train, _ = glosses
    before = AutoModel.from_pretrained(model_dirs["student"]).state_dict()
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"],
                                  args=config(tmp_path / "out", max_steps=2), train_dataset=train,
                                  peft_config=peft.LoraConfig(r=4, target_modules=["query", "value"]))
    student = trainer.model.student
    assert isinstance(student, peft.PeftModel)
    trained = {name for name, parameter in student.named_parameters() if parameter.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    trainer.train()
    assert trainer.state.global_step == 2 and all(np.isfinite(train_losses(trainer)))
    base = {name.replace(".base_layer", ""): value for name, value in student.get_base_model().state_dict().items()
            if "lora_" not in name}
    assert base.keys() == before.keys() and all(torch.equal(before[name], base[name]) for name in before)
    assert any(not torch.equal(value, torch.zeros_like(value)) for name, value in student.state_dict().items()
               if "lora_B" in name)
    trainer.save_model()
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    reloaded = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(model_dirs["student"]), tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["student"])
    inputs = tokenizer(train["text"][:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = student.eval()(**inputs).last_hidden_state
        torch.testing.assert_close(reloaded(**inputs).last_hidden_state, expected)
    again = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"],
                                args=config(tmp_path / "again", max_steps=2), train_dataset=train,
                                peft_config=peft.LoraConfig(r=4, target_modules=["query", "value"]))
    with pytest.raises(ValueError, match=r"holds a peft student's adapters: resuming a peft_config run is not supported"):
        again._load_from_checkpoint(str(tmp_path / "out"))


def test_peft_config_without_peft_installed_is_one_line(tmp_path, model_dirs, glosses, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "peft" else find_spec(name, *rest))
    with pytest.raises(ValueError, match=r"^peft_config needs the peft package: pip install 'hf_pcoh\[peft\]'$"):
        DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"], args=config(tmp_path),
                            train_dataset=glosses[0], peft_config=object())


def test_the_eval_loss_is_computed_at_the_training_batch_size(tmp_path, model_dirs, glosses) -> None:
    train, evaluation = glosses  # 24 evaluation rows
    assert config(tmp_path, per_device_train_batch_size=12).per_device_eval_batch_size == 12
    assert config(tmp_path, per_device_train_batch_size=12, per_device_eval_batch_size=4).per_device_eval_batch_size == 4
    trainer = DistillationTrainer(model=model_dirs["student"], teacher_model=model_dirs["teacher"],
                                  args=config(tmp_path, per_device_train_batch_size=12), train_dataset=train,
                                  eval_dataset=evaluation)
    batches = list(trainer.get_eval_dataloader())
    assert [len(batch["student_inputs"]["input_ids"]) for batch in batches] == [12, 12]
    # the eval loss of a batch of the training batch's size is the training loss of that batch
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batches[0])).item()
    first_batch = evaluation.select(range(12))
    assert trainer.evaluate(first_batch)["eval_loss"] == pytest.approx(expected, rel=1e-5)
