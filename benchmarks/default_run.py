"""The README's default run, measured: ``python scripts/distill.py`` on a fresh datasets cache, timed, its figures
written to ``benchmarks/results/default_run.json`` so the README's numbers come from a file a script wrote.

The run is a subprocess exactly as a user starts it (the built-in recipe, no arguments but the output folder), with
``HF_DATASETS_CACHE`` in a new temporary folder (the teacher cache and the tokenised glosses computed from nothing).
Recorded: wall time, the Trainer's train runtime, the peak resident memory of the run, the summary line it printed,
every figure of its ``eval_results.json``, and where they come from (machine, versions, commit).

README's quick-start output and its default-run table are rendered from that file (:func:`committed_blocks`, between
``<!-- rendered:default_run_summary -->`` / ``<!-- rendered:default_run -->`` markers); measuring writes them again,
and ``tests/test_rendered_tables_all.py`` fails when README differs from the file.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPOSITORY_ROOT, describe_machine
from benchmarks.rendered_tables import render_into_documents
from hf_pcoh.recipes import DEFAULT_RECIPE

RESULT_FILE = REPOSITORY_ROOT / "benchmarks" / "results" / "default_run.json"
# How README names the losses of the default recipe.
LOSS_NAMES = {"cospress": "CosPress", "perception_coherence": "perception coherence", "procrustes": "Procrustes",
              "gram": "Gram", "cka": "CKA", "projected_mse": "projected MSE", "rkd_distance": "RKD"}


def run_default_job(output_dir: Path, extra_arguments: list[str] | None = None) -> dict[str, Any]:
    """Run ``scripts/distill.py`` (the default recipe) into ``output_dir``; its figures and costs."""
    # (named: a command line with options but no recipe gets DistillationConfig's defaults instead)
    arguments = [sys.executable, str(REPOSITORY_ROOT / "scripts" / "distill.py"), DEFAULT_RECIPE, "--output_dir",
                 str(output_dir), *(extra_arguments or [])]
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        start = time.perf_counter()
        completed = subprocess.run(arguments, env=environment, capture_output=True, text=True, cwd=REPOSITORY_ROOT)
        wall_seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"the default run failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
    state = json.loads((output_dir / "trainer_state.json").read_text())
    train_runtime = next((entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry), None)
    summary = [line for line in completed.stdout.splitlines() if line.startswith("student vs teacher")]
    return {
        "command": "python scripts/distill.py",
        "extra_arguments": extra_arguments or [],
        "wall_seconds": round(wall_seconds, 1),
        "train_runtime_seconds": train_runtime,
        "peak_rss_bytes": peak_kib * 1024,
        "summary_line": summary[-1] if summary else None,
        "eval_results": json.loads((output_dir / "eval_results.json").read_text()),
        "recipe": json.loads((output_dir / "distillation_config.json").read_text()).get("recipe"),
    }


def measure_default_run(result_file: Path = RESULT_FILE, extra_arguments: list[str] | None = None) -> dict[str, Any]:
    """Run the default job once and write its result file (with the machine, versions and commit)."""
    with tempfile.TemporaryDirectory() as folder:
        figures = run_default_job(Path(folder) / "student", extra_arguments)
    result = {"machine": describe_machine("cpu"), **figures}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    from hf_pcoh.artifacts import write_json

    write_json(result_file, result)
    if Path(result_file).resolve() == RESULT_FILE.resolve():  # the committed figures: README quotes them
        render_into_documents(default_run_blocks(result))
    return result


# --------------------------------------------------------------------------- README's blocks


def student_description(recipe: dict[str, Any]) -> str:
    """``student, 3 layers, CosPress, identity map``: the student and its losses, from the run's recipe."""
    layers = (recipe.get("student_config") or {}).get("num_hidden_layers")
    parts = ["student", *([f"{layers} layers"] if layers else [])]
    options = recipe.get("loss_kwargs") or {}
    for loss in recipe.get("losses", []):
        name = LOSS_NAMES.get(loss, loss)
        if (options.get(loss) or {}).get("map_init") == "identity":
            name += ", identity map"
        parts.append(name)
    return ", ".join(parts)


def default_run_table(result: dict[str, Any]) -> str:
    """README's table of the default run: teacher and student, size, speed, labelled and label-free figures."""
    evaluation, recipe = result["eval_results"], result["recipe"]
    teacher, student = evaluation["teacher"], evaluation["student"]
    metrics = ("knn_accuracy@10", "knn_accuracy@1", "linear_probe_accuracy", "map_at_r")
    agreement = ("teacher_neighbour_recall@10", "dissimilarity_spearman", "perception_coherence")

    def row(name: str, figures: dict[str, float]) -> str:
        cells = [name, f"{figures['parameters'] / 1e6:.1f} M", f"{figures['embeddings_per_second']:.0f}",
                 *(f"{figures[key]:.3f}" for key in metrics),
                 *(f"{figures[key]:.3f}" if key in figures else "—" for key in agreement)]
        return "| " + " | ".join(cells) + " |"

    teacher_name = str(recipe["teacher_model_name_or_path"]).rstrip("/").split("/")[-1]
    return "\n".join([
        "| | parameters | embeddings/s | 10-NN acc. (45 lexicographer classes) | 1-NN acc. | linear probe | mAP@R | "
        "teacher-neighbour recall@10 | dissimilarity Spearman | perception coherence |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        row(f"teacher {teacher_name}", teacher),
        row(student_description(recipe), student),
    ])


def default_run_summary(result: dict[str, Any]) -> str:
    """The quick start's last lines, as the run printed them."""
    return "\n".join(["```", f"student saved to /…/outputs/{DEFAULT_RECIPE}", result["summary_line"], "```"])


def default_run_blocks(result: dict[str, Any]) -> dict[str, str]:
    return {"default_run_summary": default_run_summary(result), "default_run": default_run_table(result)}


def committed_blocks(result_file: Path = RESULT_FILE) -> dict[str, str]:
    """README's blocks rendered from the committed result file."""
    return default_run_blocks(json.loads(Path(result_file).read_text(encoding="utf-8")))


def quoted_figures(result: dict[str, Any]) -> list[str]:
    """Figures of the file that README's prose quotes (each must appear in README as written here)."""
    minutes, seconds = divmod(round(result["wall_seconds"]), 60)
    recipe, evaluation = result["recipe"], result["eval_results"]
    return [
        f"{minutes} min {seconds} s measured",
        f"Wall time {result['wall_seconds']:.1f} s",
        f"of which {result['train_runtime_seconds']:.1f} s training",
        f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB",
        f"{recipe['max_train_samples']:,} glosses, one epoch, batch {recipe['per_device_train_batch_size']}",
        f"{evaluation['num_samples']:,} held-out glosses with {evaluation['num_reference_samples']:,} labelled",
    ]
