"""Recipes, command-line overrides, and the error a user gets for each bad input (before any training)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from hf_pcoh.cli import distill_main, parse_distillation_args
from hf_pcoh.recipes import builtin_recipes

from tiny_models import MINILM, TINY_BERT, TINY_RESNET, TINY_VIT


def test_no_arguments_selects_the_embedded_default_recipe_minilm_wordnet_pc() -> None:
    config = parse_distillation_args([])
    assert config.teacher_model_name_or_path == MINILM
    assert config.dataset_name == "wordnet_glosses"
    # the registered experiment's winner (docs/study.md): CosPress (identity map) + cosine PC at weight 0.3
    assert config.losses == ["cospress", "perception_coherence"] and config.loss_weights == [1.0, 0.3]
    assert config.loss_kwargs["cospress"] == {"map_init": "identity"}
    assert set(builtin_recipes()) >= {"minilm-wordnet", "minilm-wordnet-pc", "opt-wordnet", "fashion-mnist"}


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

def test_options_without_a_recipe_keep_the_configs_defaults_not_a_hidden_recipe(tmp_path) -> None:
    """Only an empty command line is the quick start (the default recipe, minilm-wordnet-pc); options alone start from
    DistillationConfig's defaults, so the recipe's teacher_cache, student_init_from_teacher... never slip in."""
    from hf_pcoh.config import DistillationConfig

    config = parse_distillation_args([*TEXT_RUN, "--output_dir", str(tmp_path)])
    defaults = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    for field in ("teacher_model_name_or_path", "teacher_cache", "student_init_from_teacher", "learning_rate",
                  "max_length", "pooling", "loss_kwargs", "num_train_epochs"):
        assert getattr(config, field) == getattr(defaults, field), field
    with pytest.raises(ValueError, match=r"^no teacher: .*; or start from a recipe: hf-pcoh distill minilm-wordnet-pc "):
        parse_distillation_args(["--max_steps", "1"])


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
    "unknown pooling": (["--pooling", "median"], "pooling='median' is not a pooling"),
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
    # fail safe (issue 18): rows built by a function of (tmp_path, request) give (recipe, extra arguments)
    "malformed YAML recipe": (lambda tmp, request: (written(tmp / "bad.yaml", "losses: [perception_coherence\nseed: 1\n"), []),
                              "bad.yaml is not valid YAML at line 2, column 5"),
    "loss_kwargs options that are not a mapping": (["--loss_kwargs", '{"perception_coherence": 5}'],
                                                   "the options of loss 'perception_coherence' must be a mapping"),
    "loss_kwargs that is not an object": (["--loss_kwargs", "[1]"], "loss_kwargs must be a JSON object (dict), got [1]"),
    "an empty train split": (lambda tmp, request: ("opt-wordnet", ["--dataset_name", empty_train_split(tmp)]),
                             "split 'train' of "),
    "None in the text column": (lambda tmp, request: ("opt-wordnet", ["--dataset_name", saved_texts(tmp, ["a cat", None, "a dog", "a fish"])]),
                                "text_column='text': 4 row(s) have no text (None), e.g. rows [1, 5, 9, 13]"),
    "texts that are all empty or whitespace": (lambda tmp, request: ("opt-wordnet", ["--dataset_name", saved_texts(tmp, ["", "  ", "\n", "\t "])]),
                                               "every one of its 16 texts is empty or whitespace"),
    "a missing label": (lambda tmp, request: ("opt-wordnet", ["--dataset_name", saved_texts(tmp, ["a cat", "a dog", "a fish", "a bird"], [0, None, 1, 0])]),
                        "4 row(s) have no label (None) in label_column='label'"),
    "output_dir that is a file": (lambda tmp, request: ("opt-wordnet", ["--output_dir", written(tmp / "a_file", "keep me")]),
                                  "is a file, not a folder"),
    "output_dir that cannot be written": (lambda tmp, request: ("opt-wordnet", ["--output_dir", unwritable_folder(tmp)]),
                                          "is not writable"),
    "fewer rows than one batch": (["--max_train_samples", "4"],
                                  "the training set has 4 rows, fewer than one batch of 8 (per_device_train_batch_size=8 x 1 process(es))"),
    "max_steps 0": (["--max_steps", "0"], "max_steps=0 with num_train_epochs=1 would train 0 steps"),
    "max_consecutive_skips 0": (["--max_consecutive_skips", "0"], "max_consecutive_skips=0 must be >= 1"),
    "max_abs_weight 0": (["--max_abs_weight", "0"], "max_abs_weight=0.0 must be > 0"),
    "a new run into a finished run": (lambda tmp, request: ("opt-wordnet", ["--output_dir", copied_run(tmp, request)]),
                                      "already holds a finished run, which is never replaced silently: resume it with "
                                      "--resume_from_checkpoint"),
    "a truncated distillation_heads.safetensors on resume": (
        lambda tmp, request: ("opt-wordnet", resume_damaged(tmp, request, "distillation_heads.safetensors")),
        "is damaged or incomplete: distillation_heads.safetensors: its header claims"),
    "a truncated model.safetensors on resume": (
        lambda tmp, request: ("opt-wordnet", resume_damaged(tmp, request, "model.safetensors")),
        "is damaged or incomplete: model.safetensors: "),
    "a truncated optimizer.pt on resume": (
        lambda tmp, request: ("opt-wordnet", resume_damaged(tmp, request, "optimizer.pt")),
        "is damaged or incomplete: optimizer.pt: not a whole archive"),
    "resuming with another student shape": (
        lambda tmp, request: ("opt-wordnet", [*resume_damaged(tmp, request, None), "--student_config",
                                              '{"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}']),
        "holds a student of another shape than this run builds (hidden_size 32 in the checkpoint, 16 here"),
}


def written(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def saved_texts(tmp_path, texts: list, labels: list | None = None) -> str:
    """A data set folder (save_to_disk) whose train split repeats ``texts`` 4 times."""
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "data"
    train = {"text": texts * 4, "label": (labels or [0, 1] * (len(texts) // 2)) * 4}
    test = {"text": ["a cat", "a dog", "an oak", "a fish"] * 6, "label": [0, 1, 0, 1] * 6}
    DatasetDict({"train": Dataset.from_dict(train), "test": Dataset.from_dict(test)}).save_to_disk(str(folder))
    return str(folder)


def empty_train_split(tmp_path) -> str:
    """datasets cannot save an empty split: save one row, then empty its Arrow file."""
    import glob

    import pyarrow as pa
    from datasets import load_from_disk

    folder = saved_texts(tmp_path, ["a cat", "a dog"])
    arrow = glob.glob(os.path.join(folder, "train", "*.arrow"))[0]
    empty = load_from_disk(folder)["train"].data.table.slice(0, 0)
    with pa.OSFile(arrow, "wb") as sink, pa.ipc.new_stream(sink, empty.schema) as writer:
        writer.write_table(empty)
    return folder


def unwritable_folder(tmp_path) -> str:
    if os.geteuid() == 0:  # root writes through permissions: a sysfs path refuses even root
        return "/sys/hf_pcoh_test_output"
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    return str(folder / "out")


def copied_run(tmp_path, request) -> str:
    copy = tmp_path / "finished_run"
    shutil.copytree(request.getfixturevalue("tiny_finished_run"), copy)
    return str(copy)


def resume_damaged(tmp_path, request, name: str | None) -> list[str]:
    """Resume the copy of a finished tiny run from its checkpoint-2, with ``name`` there cut to half its length."""
    run = copied_run(tmp_path, request)
    checkpoint = os.path.join(run, "checkpoint-2")
    if name is not None:
        path = os.path.join(checkpoint, name)
        with open(path, "r+b") as stream:
            stream.truncate(os.path.getsize(path) // 2)
    return ["--output_dir", run, "--resume_from_checkpoint", checkpoint, "--max_steps", "3"]


def files_under(folder) -> dict[str, str]:
    return {str(path): hashlib.md5(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_error_before_training(case, tmp_path, capsys, minilm_path, request) -> None:
    extra, message = BAD_INPUTS[case]
    recipe, extra = extra(tmp_path, request) if callable(extra) else ("opt-wordnet", extra)
    output_dir = tmp_path / "out"
    before = files_under(tmp_path)
    code = distill_main([recipe, *TEXT_RUN, "--output_dir", str(output_dir), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert not output_dir.exists() or not os.listdir(output_dir)
    assert files_under(tmp_path) == before  # nothing written, nothing lost (a prepared run folder included)


def test_push_to_hub_without_a_token_leaves_a_complete_folder_and_says_so(tmp_path, capsys, monkeypatch, minilm_path) -> None:
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    monkeypatch.setattr("hf_pcoh.hub.get_token", lambda: None, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # online (offline: tests/test_run_card.py)
    output_dir = tmp_path / "out"
    code = distill_main(["opt-wordnet", *TEXT_RUN, "--max_eval_samples", "24", "--push_to_hub",
                         "--hub_model_id", "someone/tiny-student", "--output_dir", str(output_dir)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "ready to upload" in captured.err and "Traceback" not in captured.err
    assert "No Hugging Face token found" in captured.err
    written = set(os.listdir(output_dir))
    assert {"README.md", "config.json", "model.safetensors", "distillation_config.json", "eval_results.json"} <= written


def test_an_empty_dataset_is_refused(minilm_path) -> None:
    from datasets import Dataset, DatasetDict

    from hf_pcoh.setup_data import prepare_splits

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


def test_losses_on_the_command_line_drop_the_recipes_options_for_other_losses(tmp_path) -> None:
    """``recipe --losses cka``: the recipe's perception-coherence options do not make the run refuse."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("teacher_model_name_or_path: sentence-transformers/all-MiniLM-L6-v2\n"
                      "student_config: {num_hidden_layers: 2}\ndataset_name: wordnet_glosses\n"
                      "losses: [perception_coherence]\n"
                      "loss_kwargs: {perception_coherence: {temperature: 0.1}}\n")
    config = parse_distillation_args([str(recipe), "--losses", "cka", "--output_dir", "unused"])
    assert config.losses == ["cka"] and config.loss_kwargs == {}
    kept = parse_distillation_args([str(recipe), "--loss", "perception_coherence", "cka", "--output_dir", "unused"])
    assert kept.loss_kwargs == {"perception_coherence": {"temperature": 0.1}}
    with pytest.raises(ValueError, match="does not use"):  # options the user typed are checked, not dropped
        parse_distillation_args([str(recipe), "--losses", "cka", "--loss_kwargs", '{"gram": {}}',
                                 "--output_dir", "unused"])


def evaluate_script():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "evaluate_student.py")
    spec = importlib.util.spec_from_file_location("evaluate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edited_recipe(tmp_path, request, change) -> str:
    run = copied_run(tmp_path, request)
    path = os.path.join(run, "distillation_config.json")
    with open(path) as stream:
        description = json.load(stream)
    change(description["recipe"])
    with open(path, "w") as stream:
        json.dump(description, stream)
    return run


EVALUATE_BAD_INPUTS = {
    "a field of the wrong type": (lambda recipe: recipe.update(per_device_train_batch_size="eight"),
                                  "distillation_config.json: recipe field per_device_train_batch_size='eight' is a str, expected int"),
    "an unknown field": (lambda recipe: recipe.update(teacher_model_name_or_pth="x"),
                         "distillation_config.json: recipe unknown field 'teacher_model_name_or_pth'. Did you mean 'teacher_model_name_or_path'"),
    "a value the config refuses": (lambda recipe: recipe.update(pooling="median"),
                                   "distillation_config.json: pooling='median' is not a pooling"),
}


@pytest.mark.parametrize("case", list(EVALUATE_BAD_INPUTS))
def test_evaluate_script_refuses_a_bad_distillation_config_in_one_line(case, tmp_path, capsys, request) -> None:
    change, message = EVALUATE_BAD_INPUTS[case]
    run = edited_recipe(tmp_path, request, change)
    before = files_under(tmp_path)
    code = evaluate_script().main([run, "--max_eval_samples", "24"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert files_under(tmp_path) == before


def test_string_labels_become_class_ids_shared_by_every_split(tmp_path, capsys, minilm_path) -> None:
    from datasets import Dataset, DatasetDict

    from hf_pcoh.setup_data import encode_string_labels

    data = tmp_path / "data"
    train = {"text": ["a cat", "an oak", "a dog", "a rose"] * 4, "label": ["animal", "plant", "animal", "plant"] * 4}
    test = {"text": ["a fish", "a fern"] * 12, "label": ["animal", "plant"] * 12}
    DatasetDict({"train": Dataset.from_dict(train), "test": Dataset.from_dict(test)}).save_to_disk(str(data))
    config = parse_distillation_args(["opt-wordnet", *TEXT_RUN, "--dataset_name", str(data)])
    splits = encode_string_labels(config, DatasetDict({"train": Dataset.from_dict(train), "test": Dataset.from_dict(test)}))
    assert splits["train"].features["label"].names == ["animal", "plant"]
    assert splits["test"]["label"][:2] == [0, 1] and splits["train"]["label"][:2] == [0, 1]
    output_dir = tmp_path / "out"
    code = distill_main(["opt-wordnet", *TEXT_RUN, "--dataset_name", str(data), "--max_eval_samples", "24",
                         "--output_dir", str(output_dir)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((output_dir / "eval_results.json").read_text())["student"]["knn_accuracy@10"] >= 0


def test_a_recipe_whose_teacher_is_trained_here_names_the_command_that_trains_it(tmp_path, monkeypatch, capsys) -> None:
    """opt-lm on a fresh checkout (no outputs/opt-wordnet-teacher yet): one line naming `hf-pcoh train-teacher`."""
    monkeypatch.chdir(tmp_path)  # a folder without outputs/
    assert distill_main(["opt-lm", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == ("error: teacher_model_name_or_path='outputs/opt-wordnet-teacher' does not exist yet: this "
                     "recipe's teacher is trained here, offline, in a few minutes: run "
                     "`hf-pcoh train-teacher --task causal_lm` first")
