"""Nothing read from a model, student or recipe file turns on remote code: only the caller or the command line.

The student folder here is built to run code: its config.json maps AutoConfig/AutoModel to a module file in
the folder that writes a marker file when imported, and its distillation_config.json says
trust_remote_code: true.
"""

from __future__ import annotations

import json
import shutil

import pytest

from hf_pcoh.cli import parse_distillation_args
from hf_pcoh.evaluation import evaluate_saved_student

from tiny_models import MINILM, TINY_BERT

MODULE = '''
import pathlib
pathlib.Path({marker!r}).write_text("the folder's code ran")
from transformers import BertConfig, BertModel


class EvilConfig(BertConfig):
    model_type = "evil_bert"


class EvilModel(BertModel):
    config_class = EvilConfig
'''


@pytest.fixture()
def student_that_runs_code(tiny_finished_run, tmp_path):
    folder = tmp_path / "downloaded_student"
    shutil.copytree(tiny_finished_run, folder)
    marker = tmp_path / "marker.txt"
    (folder / "evil.py").write_text(MODULE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil_bert", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    description = json.loads((folder / "distillation_config.json").read_text())
    description["recipe"]["trust_remote_code"] = True
    (folder / "distillation_config.json").write_text(json.dumps(description))
    return folder, marker


def test_a_saved_student_asking_for_remote_code_does_not_get_it(student_that_runs_code, caplog) -> None:
    folder, marker = student_that_runs_code
    with caplog.at_level("WARNING", logger="hf_pcoh"), pytest.raises(ValueError, match="needs to run its own code; pass --trust_remote_code only if you trust it"):
        evaluate_saved_student(str(folder), max_eval_samples=24)
    assert not marker.exists()
    assert "asks for trust_remote_code: true, which is ignored" in caplog.text


def test_the_caller_can_still_allow_it_so_the_folder_really_runs_code(student_that_runs_code) -> None:
    folder, marker = student_that_runs_code
    try:
        evaluate_saved_student(str(folder), max_eval_samples=24, trust_remote_code=True)
    except Exception:  # noqa: BLE001 - only whether the folder's module was imported matters here
        pass
    assert marker.exists()


def test_a_recipe_file_cannot_turn_remote_code_on(tmp_path, caplog) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"teacher_config: {json.dumps(TINY_BERT)}\nteacher_processor_name_or_path: {MINILM}\n"
                      "student_config: {num_hidden_layers: 1}\ntrust_remote_code: true\n")
    with caplog.at_level("WARNING", logger="hf_pcoh"):
        assert parse_distillation_args([str(recipe)]).trust_remote_code is False
    assert "sets trust_remote_code: true, which is ignored" in caplog.text
    assert parse_distillation_args([str(recipe), "--trust_remote_code"]).trust_remote_code is True
