"""Bad input answered safely and in one line: links planted in a run folder are replaced, never written through;
a folder that cannot be published says why; empty data, a damaged teacher cache, a mistyped recipe and the
words for "no cache" get a clear answer instead of a traceback or a wrong guess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from hf_pcoh import hub
from hf_pcoh.artifacts import (
    DISTILLATION_CONFIG_FILE,
    EVAL_RESULTS_FILE,
    EVAL_RESULTS_TABLE_FILE,
    MODEL_CARD_FILE,
    atomic_file,
    write_json,
    write_text,
)
from hf_pcoh.cli import distill_main, parse_distillation_args
from hf_pcoh.cli import evaluate_main, publish_main
from hf_pcoh.config import DistillationConfig
from hf_pcoh.data import load_splits
from hf_pcoh.evaluation import write_saved_student_results
from hf_pcoh.output_dir import LOCK_FILE, OutputDirError, claim_output_dir
from hf_pcoh.setup import build_setup

from test_hub import FAKE_TOKEN, REPO_ID, STUDENT_METRICS, TEACHER_METRICS, FakeHfApi, write_text_run
from tiny_models import MINILM, TINY_BERT

RESULTS = {"dataset": "wordnet_glosses", "split": "eval", "num_samples": 24,
           "student": {**STUDENT_METRICS, "parameters": 1000}, "teacher": TEACHER_METRICS,
           "ratios": {"parameters": 0.1, "speed_up": 6.0}}


@pytest.fixture(scope="module")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def run_dir(run_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_template, tmp_path / "run"))


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def plant_links(folder: Path, outside: Path, names: list[str]) -> dict[Path, bytes]:
    """A link under each name (and name.tmp) to a file of its own outside ``folder``; the outside files' bytes."""
    outside.mkdir(exist_ok=True)
    planted = {}
    for name in names:
        for link_name in (name, f"{name}.tmp"):
            target = outside / f"victim-{link_name}"
            target.write_bytes(f"precious {link_name}\n".encode())
            (folder / link_name).unlink(missing_ok=True)
            (folder / link_name).symlink_to(target)
            planted[target] = target.read_bytes()
    return planted


def assert_written_as_regular_files(folder: Path, names: list[str], planted: dict[Path, bytes]) -> None:
    assert {path: path.read_bytes() for path in planted} == planted  # nothing outside was written
    for name in names:
        path = folder / name
        assert path.is_file() and not path.is_symlink(), name
        assert path.stat().st_mode & 0o777 == 0o644, f"{name}: {oct(path.stat().st_mode & 0o777)}"  # umask 022
    assert not [path.name for path in folder.iterdir() if path.name.endswith(".tmp") and not path.is_symlink()]


# ---- 1. run-folder artefacts: never written through a link --------------------------------------------


def test_artefact_writers_replace_planted_links_and_leave_their_targets_alone(tmp_path: Path, umask_022) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    names = ["plain.json", "table.md", "plot.png"]
    planted = plant_links(folder, tmp_path / "outside", names)
    write_json(folder / "plain.json", {"a": 1})
    write_text(folder / "table.md", "| a |\n")
    with atomic_file(folder / "plot.png", binary=True) as stream:
        stream.write(b"\x89PNG")
    assert_written_as_regular_files(folder, names, planted)
    assert json.loads((folder / "plain.json").read_text()) == {"a": 1}
    assert (folder / "plot.png").read_bytes() == b"\x89PNG"


def test_a_failed_write_leaves_the_previous_file_and_no_leftover(tmp_path: Path) -> None:
    path = tmp_path / EVAL_RESULTS_FILE
    write_json(path, {"before": True})
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(path) as stream:
            stream.write('{"half": ')
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"before": True}
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [EVAL_RESULTS_FILE]


def test_evaluation_results_replace_planted_links(run_dir: Path, tmp_path: Path, umask_022) -> None:
    names = [EVAL_RESULTS_FILE, EVAL_RESULTS_TABLE_FILE]
    planted = plant_links(run_dir, tmp_path / "outside", names)
    table = write_saved_student_results(str(run_dir), RESULTS)
    assert_written_as_regular_files(run_dir, names, planted)
    assert json.loads((run_dir / EVAL_RESULTS_FILE).read_text()) == RESULTS
    assert (run_dir / EVAL_RESULTS_TABLE_FILE).read_text() == table + "\n"


def test_hf_pcoh_evaluate_never_writes_through_links_in_the_folder(run_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, umask_022) -> None:
    monkeypatch.setattr("hf_pcoh.cli.evaluate_saved_student", lambda *args, **kwargs: RESULTS)
    names = [EVAL_RESULTS_FILE, EVAL_RESULTS_TABLE_FILE]
    planted = plant_links(run_dir, tmp_path / "outside", names)
    assert evaluate_main([str(run_dir)]) == 0
    assert_written_as_regular_files(run_dir, names, planted)


def test_the_model_card_replaces_a_planted_link(run_dir: Path, tmp_path: Path, umask_022) -> None:
    planted = plant_links(run_dir, tmp_path / "outside", [MODEL_CARD_FILE])
    hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=FakeHfApi())
    assert_written_as_regular_files(run_dir, [MODEL_CARD_FILE], planted)
    assert "written by hf_pcoh" in (run_dir / MODEL_CARD_FILE).read_text()


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (folder / LOCK_FILE).symlink_to(victim)
    with pytest.raises(OutputDirError, match=f"{LOCK_FILE} is a symbolic link"):
        with claim_output_dir(str(folder), resuming=False, overwrite=False):
            pass
    assert victim.read_text() == "precious"


# ---- 2. publish ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", DISTILLATION_CONFIG_FILE])
def test_publish_refuses_a_student_file_that_is_a_link(run_dir: Path, tmp_path: Path, name: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    moved = tmp_path / f"elsewhere-{name}"
    shutil.move(run_dir / name, moved)
    (run_dir / name).symlink_to(moved)
    api = FakeHfApi()
    with pytest.raises(ValueError, match=f"{name} is a symbolic link, and links are never uploaded"):
        hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=api, dry_run=True)
    assert api.calls == []
    assert publish_main([str(run_dir), "--repo_id", REPO_ID, "--dry_run"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and name in error and "\n" not in error


def test_publish_of_a_folder_a_run_is_still_writing_says_so_first(run_dir: Path) -> None:
    (run_dir / "config.json").unlink()  # the run has not saved the student yet
    holder = subprocess.Popen(  # holds the lock as claim_output_dir does (flock), without importing the library
        [sys.executable, "-c", "import fcntl, json, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'here', 'started': 'now', 'command': 'distill'}).encode())\n"
         "print('holding', flush=True)\ntime.sleep(600)", str(run_dir / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(ValueError, match=f"is still being written by a run \\(pid {holder.pid} on here"):
            hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=FakeHfApi(), dry_run=True)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):  # once it has ended
        hub.publish(run_dir, REPO_ID, token=FAKE_TOKEN, api=FakeHfApi(), dry_run=True)


def test_a_repo_id_without_its_owner_is_refused(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"repo_id='x' names no owner: use 'user/name' or 'org/name'"):
        hub.publish(run_dir, "x", token=FAKE_TOKEN, api=FakeHfApi(), dry_run=True)
    assert publish_main([str(run_dir), "--repo_id", "x", "--dry_run"]) == 1
    error = capsys.readouterr().err.strip()
    assert "names no owner" in error and "\n" not in error


# ---- 3, 4. data, recipes, teacher cache ------------------------------------------------------------------


def tiny_run_argv(output_dir: Path, *fields: str) -> list[str]:
    return ["opt-wordnet", "--teacher_config", json.dumps(TINY_BERT), "--teacher_processor_name_or_path", MINILM,
            "--student_config", '{"num_hidden_layers": 1}', "--max_steps", "1", "--max_train_samples", "16",
            "--max_eval_samples", "8", "--disable_tqdm", "true",
            "--output_dir", str(output_dir), *fields]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    lines = [line for line in error.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, error
    return lines[0]


def test_a_saved_data_set_with_an_empty_train_split_is_named(tmp_path: Path, minilm_path: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "data"
    DatasetDict({"train": Dataset.from_dict({"text": [], "label": []}),
                 "test": Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1]})}).save_to_disk(str(folder))
    splits = load_splits(str(folder))
    assert {name: len(split) for name, split in splits.items()} == {"train": 0, "test": 2}
    assert distill_main(tiny_run_argv(tmp_path / "out", "--dataset_name", str(folder))) == 2
    assert "split 'train' of" in one_line_error(capsys) and not (tmp_path / "out").exists()


def test_empty_data_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "lines.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"dataset_files: {empty} \\(split 'train'\\) is empty"):
        load_splits("text", data_files=[str(empty)])
    header_only = tmp_path / "rows.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match=r"dataset_files \(train=\S+rows.csv\): the csv file\(s\) hold no rows"):
        load_splits("csv", data_files=[str(header_only)])
    assert distill_main(tiny_run_argv(tmp_path / "out", "--dataset_name", "text", "--dataset_files", str(empty))) == 2
    error = one_line_error(capsys)
    assert "is empty" in error and "unknown built-in dataset" not in error


def test_a_mistyped_recipe_is_not_found_and_the_built_in_ones_are_listed(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    assert distill_main(["minilm-wordnett", "--output_dir", str(tmp_path / "out")]) == 2
    error = one_line_error(capsys)
    assert "recipe 'minilm-wordnett' not found" in error and "Did you mean 'minilm-wordnet'?" in error
    assert "fashion-mnist, minilm-wordnet, minilm-wordnet-pc, opt-lm, opt-wordnet" in error and "not used" not in error
    assert not (tmp_path / "out").exists()


def test_a_truncated_teacher_cache_is_computed_again(tmp_path: Path, minilm_path: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from test_teacher_cache import config_for

    config = config_for(tmp_path / "run", teacher_cache=str(tmp_path / "cache"), max_train_samples=32)
    first = build_setup(config).train_dataset
    expected = np.asarray(first["teacher_features_0"])  # read before the file it maps is cut
    rows = len(first)
    del first
    (cache,) = (tmp_path / "cache").iterdir()
    (arrow,) = cache.glob("*.arrow")
    with open(arrow, "r+b") as stream:
        stream.truncate(arrow.stat().st_size // 2)  # a run killed, or a disk filled, while it was written
    with caplog.at_level("WARNING", logger="hf_pcoh.teacher_cache"):
        again = build_setup(config).train_dataset
    assert f"the teacher-feature cache {cache} is damaged" in caplog.text and "computing it again" in caplog.text
    np.testing.assert_array_equal(np.asarray(again["teacher_features_0"]), expected)
    assert len(again) == rows == 32


# ---- 5. the words for "no teacher cache" ------------------------------------------------------------------


@pytest.mark.parametrize("word", ["none", "None", "OFF", "false", "no", False, ""])
def test_the_usual_words_for_off_mean_no_teacher_cache(tmp_path: Path, word: object) -> None:
    config = DistillationConfig(output_dir=str(tmp_path), teacher_config=TINY_BERT, dataset_name="wordnet_glosses",
                                teacher_cache=word, report_to="none")
    assert config.teacher_cache is None


def test_teacher_cache_none_on_the_command_line_or_off_in_a_recipe_writes_no_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm_path: str) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("teacher_cache: off\n")  # YAML reads off as false
    assert parse_distillation_args([str(recipe), *tiny_run_argv(tmp_path / "b")[1:]]).teacher_cache is None
    config = parse_distillation_args(tiny_run_argv(tmp_path / "a", "--teacher_cache", "none"))
    assert config.teacher_cache is None
    build_setup(config)  # where the cache would be written
    assert not (tmp_path / "none").exists() and not (tmp_path / "off").exists()
    with pytest.raises(ValueError, match="teacher_cache=True is not a folder"):
        DistillationConfig(output_dir=str(tmp_path), teacher_config=TINY_BERT, teacher_cache=True, report_to="none")


def test_an_abbreviated_option_is_refused_not_taken_for_the_long_one(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """`--output_d DIR` into a finished run must not replace it: no prefix matching of options."""
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "kept.txt").write_text("a finished run")
    assert distill_main(["opt-wordnet", "--output_d", str(finished), "--max_steps", "1"]) == 2
    error = one_line_error(capsys)
    assert "--output_d" in error
    assert (finished / "kept.txt").read_text() == "a finished run"
    with pytest.raises(SystemExit):
        evaluate_main([str(finished), "--teach", "x"])


def test_help_starts_with_the_distillation_options_and_help_all_adds_the_trainers(capsys) -> None:
    from hf_pcoh.cli import parse_distillation_args

    with pytest.raises(SystemExit):
        parse_distillation_args(["--help"])
    short = capsys.readouterr().out
    first_options = [line.split()[0] for line in short.splitlines()[:60] if line.startswith("  --")]
    assert "--teacher_model_name_or_path" in first_options and "--losses" in short
    assert "--logging_steps" not in short and "--help-all" in short.splitlines()[-1]
    with pytest.raises(SystemExit):
        parse_distillation_args(["--help-all"])
    assert "--logging_steps" in capsys.readouterr().out


def test_a_logger_whose_package_is_missing_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from transformers.integrations import get_available_reporting_integrations

    if "tensorboard" in get_available_reporting_integrations():
        pytest.skip("tensorboard is installed here")
    assert distill_main(["opt-wordnet", "--report_to", "tensorboard", "--output_dir", str(tmp_path / "out")]) == 2
    assert "pip install tensorboard" in one_line_error(capsys)
