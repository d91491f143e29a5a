"""The installed command: ``hf-pcoh <command>`` and ``python -m hf_pcoh <command>`` need nothing from scripts/."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

from hf_pcoh.cli import SUBCOMMANDS, main

# End-to-end runs on tiny models (seconds each): outside the fast inner loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

COMMANDS = ("distill", "select-layers", "evaluate", "publish", "train-teacher", "cache")


def run_module(*arguments: str, executable: list[str] | None = None) -> subprocess.CompletedProcess:
    command = executable or [sys.executable, "-m", "hf_pcoh"]
    return subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300, cwd=os.path.dirname(__file__),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_python_dash_m_lists_every_command() -> None:
    completed = run_module("--help")  # run from tests/: the installed package, not the checkout's scripts/
    assert completed.returncode == 0, completed.stderr
    for name in COMMANDS:
        assert f"  {name} " in completed.stdout, completed.stdout
    assert set(SUBCOMMANDS) == set(COMMANDS)


@pytest.mark.parametrize("command, options", [("evaluate", ["--teacher", "--max_eval_samples"]),
                                              ("publish", ["--repo_id", "--dry_run", "--max_abs_weight"]),
                                              ("cache", ["list", "clear", "--cache_dir"]),
                                              ("distill", ["--teacher_model_name_or_path", "--dataset_files",
                                                           "--teacher_embedding_column"])])
def test_each_command_has_its_own_help(command, options, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option in out, (command, option)


def test_an_unknown_command_is_named_with_the_known_ones(capsys) -> None:
    assert main(["evaluat"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'evaluat'. Did you mean 'evaluate'?" in err


def test_the_wheel_installs_the_hf_pcoh_executable() -> None:
    (entry,) = [point for point in importlib.metadata.entry_points(group="console_scripts") if point.name == "hf-pcoh"]
    assert entry.value == "hf_pcoh.cli:main"
    executable = os.path.join(os.path.dirname(sys.executable), "hf-pcoh")
    assert os.access(executable, os.X_OK), f"{executable}: run pip install -e . to install the console scripts"
    completed = run_module("publish", "--help", executable=[executable])
    assert completed.returncode == 0, completed.stderr
    assert "usage: hf-pcoh publish" in completed.stdout
