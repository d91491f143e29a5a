"""A run holds its output_dir: one run at a time, a finished run is never replaced silently, and the quick
start can be run twice as written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from hf_pcoh.cli import distill_main
from hf_pcoh.output_dir import LOCK_FILE, claim_output_dir

from tiny_models import MINILM, TINY_BERT

# End-to-end runs on tiny models (seconds each): outside the fast inner loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

TINY = ["--teacher_config", json.dumps(TINY_BERT), "--teacher_processor_name_or_path", MINILM,
        "--student_config", '{"num_hidden_layers": 1}', "--max_train_samples", "16", "--max_eval_samples", "24",
        "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "8",
        "--losses", "perception_coherence", "--disable_tqdm", "true"]

HOLD_THE_LOCK = """
import sys, time
from hf_pcoh.output_dir import claim_output_dir

with claim_output_dir(sys.argv[1], resuming=False, overwrite=False):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_run_into_a_folder_in_use_fails_at_once_naming_the_first(tmp_path, capsys, minilm_path) -> None:
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        code = distill_main(["opt-wordnet", *TINY, "--output_dir", str(folder)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"is in use by another run (pid {holder.pid} on " in err and "started " in err and "Traceback" not in err
        assert os.listdir(folder) == [LOCK_FILE]  # the second run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the killed holder left its lock file behind, but not its lock: a new run goes ahead and removes the file
    assert (folder / LOCK_FILE).exists()
    assert distill_main(["opt-wordnet", *TINY, "--output_dir", str(folder)]) == 0
    assert not (folder / LOCK_FILE).exists() and (folder / "model.safetensors").is_file()


def test_the_lock_is_released_when_a_run_fails(tmp_path) -> None:
    folder = tmp_path / "out"
    with pytest.raises(RuntimeError, match="inside the run"):
        with claim_output_dir(str(folder), resuming=False, overwrite=False):
            assert (folder / LOCK_FILE).is_file()
            raise RuntimeError("inside the run")
    assert not folder.exists()  # created by the run, left empty: removed
    with claim_output_dir(str(folder), resuming=False, overwrite=False):
        pass


def test_overwrite_output_dir_replaces_the_previous_run_and_keeps_other_files(tmp_path, tiny_finished_run, capsys) -> None:
    folder = tmp_path / "run"
    shutil.copytree(tiny_finished_run, folder)
    (folder / "checkpoint-7").mkdir()  # a checkpoint the new run would not overwrite
    (folder / "notes.txt").write_text("mine")
    old_weights = (folder / "model.safetensors").read_bytes()
    code = distill_main(["opt-wordnet", *TINY, "--seed", "1", "--output_dir", str(folder), "--overwrite_output_dir"])
    assert code == 0, capsys.readouterr().err
    assert sorted(name for name in os.listdir(folder) if name.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-2"]
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "model.safetensors").read_bytes() != old_weights


def test_the_quick_start_runs_twice_as_written(tmp_path, monkeypatch, capsys, caplog, minilm_path) -> None:
    """A built-in recipe's own output folder: its finished run is replaced with a warning; an unfinished one
    (checkpoints only, a killed run) is refused, offering to resume."""
    monkeypatch.chdir(tmp_path)
    assert distill_main(["opt-wordnet", *TINY]) == 0
    with caplog.at_level("WARNING", logger="hf_pcoh"):
        assert distill_main(["opt-wordnet", *TINY]) == 0, capsys.readouterr().err
    assert "holds a finished run of the built-in recipe 'opt-wordnet': this run replaces it" in caplog.text
    folder = tmp_path / "outputs" / "opt-wordnet"
    (folder / "distillation_config.json").unlink()  # as if killed before the end
    code = distill_main(["opt-wordnet", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "already holds an unfinished run (checkpoint-1, checkpoint-2)" in err
    assert f"resume it with --resume_from_checkpoint {os.path.join('outputs/opt-wordnet', 'checkpoint-2')}" in err
