"""Plots and tables of a run for people: the training curve of every logged loss term, and the knowledge
quality ``Q`` of each teacher layer (computed by :mod:`hf_pcoh.layers.quality`) as a markdown table and a plot.

matplotlib is an optional extra (``pip install 'hf_pcoh[plots]'``), imported only to draw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import atomic_file

if TYPE_CHECKING:  # only a type here: hf_pcoh.layers imports this module
    from .layers.quality import KnowledgeQuality, Layer


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
    with atomic_file(path, binary=True) as stream:
        figure.savefig(stream, format="png", dpi=110)
    return Path(path)


def check_selected_layers(qualities: Mapping[Layer, KnowledgeQuality], selected: Sequence[Layer] | None) -> set:
    """The ``selected`` layers as a set; each must be a layer of ``qualities``."""
    chosen = set(selected or [])
    unknown = [layer for layer in chosen if layer not in qualities]
    if unknown:
        raise ValueError(f"selected names layers {unknown} that are not in qualities ({list(qualities)})")
    return chosen


def format_quality_table(qualities: Mapping[Layer, KnowledgeQuality], selected: Sequence[Layer] | None = None) -> str:
    """A markdown table, one row per layer: S, I, E, Q and the mean class intrinsic dimension; ``*`` marks ``selected``."""
    chosen = check_selected_layers(qualities, selected)
    lines = ["| layer | S | I | E | Q | intrinsic dim |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for layer, quality in qualities.items():
        name = f"{layer} *" if layer in chosen else f"{layer}"
        lines.append(
            f"| {name} | {quality.separation:.4f} | {quality.information:.4f} | {quality.efficiency:.4f} "
            f"| {quality.quality:.4f} | {quality.intrinsic_dimension:.1f} |"
        )
    if chosen:
        lines.append("")
        lines.append("`*` selected: the top layers by Q (Cooper et al. 2025).")
    return "\n".join(lines)


def plot_qualities(
    qualities: Mapping[Layer, KnowledgeQuality], path: str | os.PathLike, selected: Sequence[Layer] | None = None
) -> Path:
    """Save a PNG of Q and its components S, I, E against depth, ``selected`` layers circled on Q."""
    chosen = check_selected_layers(qualities, selected)
    if not qualities:
        raise ValueError("qualities is empty; nothing to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is an optional extra
        raise ImportError("plot_qualities needs matplotlib: pip install 'hf_pcoh[plots]'") from error

    layers = list(qualities)
    depth = list(range(len(layers)))
    figure = Figure(figsize=(max(6.0, 0.5 * len(layers) + 3.0), 4.0))
    FigureCanvasAgg(figure)  # Agg canvas without touching pyplot's global backend
    axes = figure.add_subplot()
    for field, label, colour in (
        ("separation", "separation S", "midnightblue"),
        ("information", "information I", "tab:cyan"),
        ("efficiency", "efficiency E", "tab:red"),
        ("quality", "knowledge quality Q", "dimgrey"),
    ):
        axes.plot(depth, [getattr(qualities[layer], field) for layer in layers], label=label, color=colour,
                  linewidth=3 if field == "quality" else 1.5, marker="o", markersize=3)  # fmt: skip
    picked = [position for position, layer in enumerate(layers) if layer in chosen]
    if picked:
        axes.scatter(picked, [qualities[layers[p]].quality for p in picked], s=120, facecolors="none",
                     edgecolors="tab:orange", linewidths=2, label="selected", zorder=3)  # fmt: skip
    axes.set_xticks(depth, [str(layer) for layer in layers])
    axes.set_xlabel("layer (depth order)")
    axes.set_ylabel("value")
    axes.set_title("Knowledge quality Q = S + sqrt(I E) per layer")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, binary=True) as stream:
        figure.savefig(stream, format="png", dpi=120)
    return path
