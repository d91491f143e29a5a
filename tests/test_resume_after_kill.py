"""A run killed with SIGKILL and resumed from its last checkpoint ends with the same student as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import AutoModel, AutoTokenizer

from hf_pcoh.evaluation import embed
from hf_pcoh.features import FeatureExtractor

from tiny_models import MINILM, TINY_BERT

SCRIPT = str(Path(__file__).resolve().parents[1] / "scripts" / "distill.py")


def write_recipe(folder: Path) -> Path:
    recipe = {
        "teacher_config": TINY_BERT, "teacher_processor_name_or_path": MINILM,
        "student_config": {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},  # dropout 0.1 stays on
        "dataset_name": "wordnet_glosses", "max_train_samples": 400, "max_length": 24,
        "losses": ["perception_coherence", "projected_mse"], "per_device_train_batch_size": 8, "max_steps": 40,
        "save_steps": 4, "logging_steps": 1, "learning_rate": 1.0e-3, "evaluate_after_training": False,
        "disable_tqdm": True, "seed": 0, "dataloader_num_workers": 0,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def complete_checkpoints(output_dir: Path) -> list[Path]:
    checkpoints = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return sorted(checkpoints, key=lambda p: int(p.name.split("-")[1]))


def final_embeddings(student_dir: Path) -> np.ndarray:
    texts = ["a domestic animal kept for companionship", "move fast by using one's feet", "a yellow fruit"] * 4
    model = AutoModel.from_pretrained(student_dir)
    return embed(model, AutoTokenizer.from_pretrained(student_dir), texts, FeatureExtractor("last", "mean"), "text").values


@pytest.mark.slow  # two real processes and a SIGKILL: about a minute
def test_sigkill_then_resume_gives_the_same_student(tmp_path, minilm_path) -> None:
    recipe = write_recipe(tmp_path)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    subprocess.run([sys.executable, SCRIPT, str(recipe), "--output_dir", str(uninterrupted)], env=environment,
                   check=True, capture_output=True, timeout=300)

    victim = subprocess.Popen([sys.executable, SCRIPT, str(recipe), "--output_dir", str(interrupted)], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not complete_checkpoints(interrupted) or int(complete_checkpoints(interrupted)[-1].name.split("-")[1]) < 8:
        assert victim.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    last = complete_checkpoints(interrupted)[-1]
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] < 40

    subprocess.run([sys.executable, SCRIPT, str(recipe), "--output_dir", str(interrupted),
                    "--resume_from_checkpoint", str(last)], env=environment, check=True, capture_output=True, timeout=300)
    np.testing.assert_allclose(final_embeddings(interrupted), final_embeddings(uninterrupted), atol=1e-6, rtol=0)
