"""Recipes, command-line overrides, and the error a user gets for each bad input (before any training)."""

from __future__ import annotations

import json
import os

import pytest

from hf_pcoh.cli import distill_main, parse_distillation_args
from hf_pcoh.recipes import builtin_recipes

from tiny_models import MINILM, TINY_BERT, TINY_RESNET, TINY_VIT


def test_no_arguments_selects_the_embedded_minilm_wordnet_recipe() -> None:
    config = parse_distillation_args([])
    assert config.teacher_model_name_or_path == MINILM
    assert config.dataset_name == "wordnet_glosses"
    assert config.losses == ["perception_coherence"]
    assert set(builtin_recipes()) >= {"minilm-wordnet", "opt-wordnet", "fashion-mnist"}


def test_command_line_values_override_the_recipe_and_keep_the_rest(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "teacher_model_name_or_path: sentence-transformers/all-MiniLM-L6-v2\n"
        "student_config: {num_hidden_layers: 2}\nlosses: [perception_coherence]\nlearning_rate: 0.001\n"
        "per_device_train_batch_size: 16\nloss_kwargs: {perception_coherence: {temperature: 0.2}}\n"
    )
    config = parse_distillation_args([
        str(recipe), "--loss", "projected_mse", "perception_coherence", "--loss_weights", "0.5", "1",
        "--per_device_train_batch_size", "8", "--student_layers", "1", "-1", "--teacher_layers", "3", "last",
        "--output_dir", str(tmp_path / "out"),
    ])
    assert config.losses == ["projected_mse", "perception_coherence"]
    assert config.loss_weights == [0.5, 1.0]
    assert config.per_device_train_batch_size == 8
    assert config.student_layers == [1, -1] and config.teacher_layers == [3, "last"]
    assert config.learning_rate == 0.001 and config.student_config == {"num_hidden_layers": 2}
    assert config.loss_options("perception_coherence") == {"temperature": 0.2}


def test_recipe_with_a_misspelt_field_is_refused(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("teacher_model_name_or_pth: x\n")
    with pytest.raises(ValueError, match="unknown field 'teacher_model_name_or_pth'. Did you mean 'teacher_model_name_or_path'"):
        parse_distillation_args([str(recipe)])


TINY_STUDENT = '{"num_hidden_layers": 1}'
TEXT_RUN = ["--teacher_config", str(TINY_BERT).replace("'", '"'), "--teacher_processor_name_or_path", MINILM,
            "--student_config", TINY_STUDENT, "--max_train_samples", "16", "--max_steps", "1",
            "--per_device_train_batch_size", "8", "--student_layers", "last", "--teacher_layers", "last",
            "--losses", "perception_coherence"]

BAD_INPUTS = {
    "unknown loss": (["--loss", "perception_coherense"], "unknown loss 'perception_coherense'. Did you mean 'perception_coherence'"),
    "layer out of range": (["--student_layers", "9"], "layer 9 does not exist in the student: it has 2 hidden states"),
    "missing teacher": (["--teacher_config", "null", "--teacher_model_name_or_path", ""], "no teacher: set teacher_model_name_or_path"),
    "teacher folder that does not exist": (["--teacher_config", "null", "--teacher_model_name_or_path", "/nonexistent/teacher"],
                                           "teacher_model_name_or_path='/nonexistent/teacher': no such local folder"),
    "missing dataset column": (["--text_column", "sentence"], "text_column='sentence' is not a column of wordnet_glosses"),
    "tokenizers differ with no second processor": (["--student_config", '{"num_hidden_layers": 1, "vocab_size": 1000}'],
                                                    "the student's tokenizer has 30522 tokens but the student model's vocab_size is 1000"),
    "batch-level loss with a batch of 1": (["--per_device_train_batch_size", "1"], "per_device_train_batch_size=1 is too small"),
    "mismatched layer lists": (["--student_layers", "1", "2", "--teacher_layers", "1"], "must have the same length"),
    "unknown pooling": (["--pooling", "max"], "pooling='max' is not a pooling"),
    "negative weight": (["--loss_weights", "-1"], "weights must be >= 0"),
    "bad loss option": (["--loss_kwargs", '{"perception_coherence": {"temperature": 0}}'], "temperature=0 must be > 0"),
    "wrong type": (["--per_device_train_batch_size", "eight"], "--per-device-train-batch-size: invalid int value: 'eight'"),
    "empty layer list": (["--student_layers"], "argument --student_layers/--student-layers: expected at least one argument"),
    "split that does not exist": (["--train_split", "validation"], "train_split='validation' is not a split of wordnet_glosses (splits: ['train', 'test'])"),
    "no rows asked for": (["--max_train_samples", "0"], "max_train_samples=0 must be a positive number of rows"),
    "text longer than the model reads": (["--max_length", "4096"], "max_length=4096 is longer than the student can read (max_position_embeddings=64)"),
    "unknown dataset": (["--dataset_name", "wordnet"], "unknown built-in dataset 'wordnet'"),
    "bad non-finite policy": (["--non_finite_loss", "ignore"], "non_finite_loss='ignore' must be 'stop' or 'skip'"),
    "push without a repo id": (["--push_to_hub"], "push_to_hub needs --hub_model_id USER/NAME"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_error_before_training(case, tmp_path, capsys, minilm_path) -> None:
    extra, message = BAD_INPUTS[case]
    output_dir = tmp_path / "out"
    code = distill_main(["opt-wordnet", *TEXT_RUN, *extra, "--output_dir", str(output_dir)])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert not output_dir.exists() or not os.listdir(output_dir)


def test_push_to_hub_without_a_token_leaves_a_complete_folder_and_says_so(tmp_path, capsys, monkeypatch, minilm_path) -> None:
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    monkeypatch.setattr("hf_pcoh.hub.get_token", lambda: None, raising=False)
    output_dir = tmp_path / "out"
    code = distill_main(["opt-wordnet", *TEXT_RUN, "--max_eval_samples", "24", "--push_to_hub",
                         "--hub_model_id", "someone/tiny-student", "--output_dir", str(output_dir)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "ready to upload" in captured.err and "Traceback" not in captured.err
    written = set(os.listdir(output_dir))
    assert {"README.md", "config.json", "model.safetensors", "distillation_config.json", "eval_results.json"} <= written


def test_an_empty_dataset_is_refused(minilm_path) -> None:
    from datasets import Dataset, DatasetDict

    from hf_pcoh.pipeline import prepare_splits

    # (datasets cannot save_to_disk an empty split, so the loaded-data check is exercised directly)
    empty = DatasetDict({"train": Dataset.from_dict({"text": [], "label": []}),
                         "test": Dataset.from_dict({"text": ["x"], "label": [0]})})
    config = parse_distillation_args(["opt-wordnet", *TEXT_RUN])
    with pytest.raises(ValueError, match="split 'train' of wordnet_glosses is empty"):
        prepare_splits(config, empty, vision=False)


VISION_RUN = ["--teacher_model_name_or_path", "", "--teacher_config", json.dumps(TINY_RESNET), "--dataset_name", "digits",
              "--student_config", json.dumps(TINY_VIT), "--max_train_samples", "16", "--max_steps", "1",
              "--per_device_train_batch_size", "8", "--pooling", "mean", "--teacher_pooling", "gap"]


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_images_of_the_wrong_channel_count_are_refused(role, tmp_path, capsys, digits_processor_dir) -> None:
    config = TINY_VIT if role == "student" else TINY_RESNET
    wrong = json.dumps({**config, "num_channels": 3})
    output_dir = tmp_path / "out"
    code = distill_main(["fashion-mnist", *VISION_RUN, "--teacher_processor_name_or_path", digits_processor_dir,
                         f"--{role}_config", wrong, "--output_dir", str(output_dir)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"the {role} expects 3-channel images but its image processor gives 1-channel ones" in err
    assert not output_dir.exists() or not os.listdir(output_dir)


def test_losses_on_the_command_line_drop_the_recipes_options_for_other_losses() -> None:
    """``minilm-wordnet --losses cka``: the recipe's perception-coherence options do not make the run refuse."""
    config = parse_distillation_args(["minilm-wordnet", "--losses", "cka", "--output_dir", "unused"])
    assert config.losses == ["cka"] and config.loss_kwargs == {}
    kept = parse_distillation_args(["minilm-wordnet", "--loss", "perception_coherence", "cka", "--output_dir", "unused"])
    assert kept.loss_kwargs == {"perception_coherence": {"temperature": 0.1}}
    with pytest.raises(ValueError, match="does not use"):  # options the user typed are checked, not dropped
        parse_distillation_args(["minilm-wordnet", "--losses", "cka", "--loss_kwargs", '{"gram": {}}',
                                 "--output_dir", "unused"])
