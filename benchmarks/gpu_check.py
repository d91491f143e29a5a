"""The one-GPU check of hf_pcoh at real scale (``python scripts/gpu_check.py``).

Three measurements, each written to ``benchmarks/results/gpu_<name>.json``:

* ``gpu_minilm_wordnet.json``: the ``minilm-wordnet`` recipe trained in bf16 on the **full** WordNet
  training split (the recipe itself keeps 16,000 rows for CPUs), through :func:`hf_pcoh.run_distillation`:
  training time and samples/s, the evaluation of the student beside its teacher, the peak GPU memory;
* ``gpu_loss_cost.json``: perception coherence forward + backward at B = 1024, 4096, 8192, time and peak
  memory, beside the naive ``[B, B, B]`` formula where it fits (:mod:`benchmarks.loss_cost`);
* ``gpu_step_ratio.json``: a distillation step beside a teacher forward plus a plain-MSE student step,
  per loss, in bf16 (:mod:`benchmarks.throughput`), against the 1.15 target.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from hf_pcoh.config import DistillationConfig
from hf_pcoh.pipeline import run_distillation
from hf_pcoh.recipes import read_recipe

from .loss_cost import LossCostOptions, measure_losses
from .loss_cost import markdown_table as loss_cost_table
from .throughput import describe_machine, measure_recipe
from .throughput import markdown_table as step_ratio_table

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LOSS_COST_BATCH_SIZES = [1024, 4096, 8192]


def missing_cuda_message() -> str | None:
    """Why this machine cannot run the check (no CUDA device), or None when it can."""
    if torch.cuda.is_available():
        return None
    return (
        f"no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False): scripts/gpu_check.py "
        "measures hf_pcoh on one GPU; run it on a machine with one (and a CUDA build of torch)"
    )


def write_result(name: str, payload: dict[str, Any], results_dir: str = RESULTS_DIR) -> str:
    """``payload`` with the machine it was measured on, as ``results_dir/gpu_<name>.json``; returns the path."""
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"gpu_{name}.json")
    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"machine": describe_machine("cuda"), **payload}, stream, indent=2, default=str)
    return path


def full_recipe_run(
    recipe: str = "minilm-wordnet", batch_size: int | None = None, output_dir: str | None = None
) -> dict[str, Any]:
    """The recipe in bf16 on its whole training split, end to end (train, save, evaluate); its figures."""
    with tempfile.TemporaryDirectory() as scratch:
        values = {
            **read_recipe(recipe), "output_dir": output_dir or scratch, "overwrite_output_dir": True, "bf16": True,
            "max_train_samples": None, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "push_to_hub": False,
        }
        if batch_size is not None:
            values["per_device_train_batch_size"] = batch_size
        config = DistillationConfig(**values)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = run_distillation(config)
        return {
            "recipe": recipe,
            "bf16": True,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "wall_seconds": time.perf_counter() - start,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(),
            "train_metrics": result.train_metrics,
            "evaluation": result.evaluation,
        }


def perception_coherence_cost(batch_sizes: Sequence[int] = LOSS_COST_BATCH_SIZES) -> tuple[list[dict[str, Any]], str]:
    """Rows and table of perception coherence's forward + backward (and the naive formula where it fits)."""
    options = LossCostOptions(batch_sizes=list(batch_sizes), losses=["perception_coherence"], device="cuda")
    rows = measure_losses(options)
    return rows, loss_cost_table(rows, options)


def distillation_step_ratio(
    recipe: str = "minilm-wordnet", losses: Sequence[str] | None = None, batch_size: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows and table of the distillation step against teacher forward + plain student step, bf16."""
    with tempfile.TemporaryDirectory() as output_dir:
        rows = measure_recipe(recipe, output_dir, losses, batch_size=batch_size, device="cuda", bf16=True)
    return [row.as_dict() for row in rows], step_ratio_table(rows)
