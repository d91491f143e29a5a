"""The causal-LM teacher trained here (``hf-pcoh train-teacher --task causal_lm``), on a tiny OPT for a few steps.

Its loss decreases, the folder it saves is a plain transformers model (``AutoModelForCausalLM`` and
``pipeline("text-generation")`` load it and generate), the perplexity it records is the one a user measures again
on the saved model, and the vision teacher stays the command's default.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, OPTForCausalLM, pipeline

from hf_pcoh.cli import train_teacher_main
from hf_pcoh.data import load_splits
from hf_pcoh.evaluation.language_model import perplexity, tokenise_texts
from hf_pcoh.teacher_training import (
    TEACHER_RESULTS_FILE,
    TEACHER_TASKS,
    CausalLMTeacherArguments,
    TeacherTrainingArguments,
    requested_teacher_task,
    seeded_sample,
    teacher_task,
)

TINY_TEACHER = ["--task", "causal_lm", "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
                "--ffn_dim", "64", "--max_position_embeddings", "64", "--max_length", "32",
                "--max_train_samples", "192", "--per_device_train_batch_size", "16", "--learning_rate", "1e-2",
                "--warmup_steps", "0", "--validation_size", "24", "--max_test_samples", "40",
                "--unigram_train_samples", "500", "--logging_steps", "2", "--disable_tqdm", "true", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory, minilm_path) -> str:
    torch.set_num_threads(1)  # the module fixture runs before the per-test one (conftest)
    folder = str(tmp_path_factory.mktemp("lm_teacher") / "teacher")
    assert train_teacher_main([*TINY_TEACHER, "--output_dir", folder]) == 0
    return folder


def test_the_training_loss_decreases(tiny_teacher_dir) -> None:
    with open(f"{tiny_teacher_dir}/trainer_state.json", encoding="utf-8") as stream:
        losses = [entry["loss"] for entry in json.load(stream)["log_history"] if "loss" in entry]
    assert len(losses) == 6  # 192 texts / 16 = 12 steps, logged every 2
    assert losses[-1] < losses[0] - 0.5, losses


def test_the_saved_teacher_loads_and_generates(tiny_teacher_dir) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    assert isinstance(model, OPTForCausalLM)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (101, 102, 0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("[CLS]", "[SEP]", "[PAD]")
    assert "token_type_ids" not in tokenizer("a dog")  # a causal LM takes none
    generator = pipeline("text-generation", model=tiny_teacher_dir)
    (output,) = generator("[CLS] a domestic", max_new_tokens=5, do_sample=False)
    assert output["generated_text"].startswith("[CLS] a domestic")
    prompt_ids = tokenizer("[CLS] a domestic", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=5, do_sample=False)
    assert 1 <= generated.shape[1] - len(prompt_ids) <= 5


def test_the_recorded_perplexity_is_measured_again_on_the_saved_teacher(tiny_teacher_dir) -> None:
    with open(f"{tiny_teacher_dir}/{TEACHER_RESULTS_FILE}", encoding="utf-8") as stream:
        results = json.load(stream)
    assert (results["train_texts"], results["validation_texts"], results["test_texts"]) == (192, 24, 40)
    assert 1.0 < results["test_perplexity"] < results["uniform_perplexity"] == 30522  # learnt something
    assert results["unigram_test_perplexity"] < results["uniform_perplexity"]
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    test_texts = seeded_sample(load_splits("wordnet_glosses")["test"]["text"], 40, seed=0)
    again = perplexity(model, tokenise_texts(tokenizer, test_texts, max_length=32), batch_size=7)
    assert again == pytest.approx(results["test_perplexity"], rel=1e-5)


def test_the_task_picks_the_arguments_and_vision_stays_the_default() -> None:
    assert requested_teacher_task([]) == "image_classification"
    assert requested_teacher_task(["--output_dir", "x", "--task", "causal_lm"]) == "causal_lm"
    assert requested_teacher_task(["--task=causal_lm"]) == "causal_lm"
    assert requested_teacher_task(["--task", "causal-lm"]) == "image_classification"  # the parser's choices refuse it
    assert set(TEACHER_TASKS) == {"image_classification", "causal_lm"}
    with pytest.raises(ValueError, match="unknown teacher task 'causal-lm'. Did you mean 'causal_lm'?"):
        teacher_task("causal-lm")
    (vision,) = HfArgumentParser(TeacherTrainingArguments).parse_args_into_dataclasses(args=["--output_dir", "x"])
    assert (vision.task, vision.dataset_name) == ("image_classification", "fashion_mnist")
    (language,) = HfArgumentParser(CausalLMTeacherArguments).parse_args_into_dataclasses(args=["--task", "causal_lm"])
    assert (language.dataset_name, language.hidden_size, language.num_hidden_layers) == ("wordnet_glosses", 256, 4)
    with pytest.raises(ValueError, match="task='causal_lm' with the vision teacher's arguments"):
        TeacherTrainingArguments(output_dir="x", task="causal_lm")
    with pytest.raises(ValueError, match="max_length=200 must be in 2..max_position_embeddings=128"):
        CausalLMTeacherArguments(output_dir="x", max_length=200)


def test_an_unknown_task_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        train_teacher_main(["--task", "causal-lm"])
    assert exit_.value.code == 2
    assert "invalid choice: 'causal-lm'" in capsys.readouterr().err


def test_the_vision_teacher_still_trains_by_default(tmp_path) -> None:
    folder = tmp_path / "vision"
    assert train_teacher_main(["--dataset_name", "digits", "--hidden_sizes", "8", "16", "--depths", "1", "1",
                               "--max_steps", "2", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
                               "--output_dir", str(folder)]) == 0
    assert (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file()
