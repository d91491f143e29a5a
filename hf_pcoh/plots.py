"""Plots of a run for people: the training curve of every logged loss term."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_training_loss(output_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Save a PNG of the training loss and each logged term against the step, from ``trainer_state.json``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    state_path = Path(output_dir) / "trainer_state.json"
    if not state_path.is_file():
        raise ValueError(f"{output_dir} has no trainer_state.json: give the output_dir of a finished run")
    history = [entry for entry in json.loads(state_path.read_text())["log_history"] if "loss" in entry]
    keys = ["loss"] + sorted({key for entry in history for key in entry if key.startswith("loss/")})
    figure = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key in keys:
        if len(keys) > 2 or key == "loss":  # one term: the total is the term
            axes.plot([entry["step"] for entry in history], [entry.get(key) for entry in history],
                      label="total" if key == "loss" else key.removeprefix("loss/"))
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return Path(path)
