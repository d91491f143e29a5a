"""The model card of a distilled student, built from the run's own files.

:func:`build_model_card` fills ``model_cards/distilled_student.md`` through :class:`huggingface_hub.ModelCardData`
(license, pipeline tag, tags, base model, data sets and a ``model-index`` the Hub renders as evaluation results)
with the teacher and student, the recipe, the results beside the teacher's, the plots, a usage snippet and the
citations of the losses and metrics used; :func:`write_model_card` writes it as the folder's ``README.md``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..artifacts import write_text
from ..citations import HF_PCOH, citation_key, metric_citation
from ..losses import get_loss_class
from .redaction import redact_recipe, redact_text
from .run_files import CARD_FILE, folder_contents, read_model_config, read_run, uploadable
from .usage import embedding_normalized, embedding_spec, sentence_transformers_snippet, usage_snippet

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "distilled_student.md"
DEFAULT_TAGS = ("distillation", "hf_pcoh", "knowledge-distillation")
# A student saved as a sentence-transformers model (a modules.json beside it) is listed as sentence-transformers lists its own.
SENTENCE_TRANSFORMERS_TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction")
SENTENCE_TRANSFORMERS_MODULES_FILE = "modules.json"

# Metrics in the order a reader wants them, with the names they are shown under.
METRIC_NAMES = {
    "knn_accuracy@1": "1-NN accuracy",
    "knn_accuracy@10": "10-NN accuracy",
    "linear_probe_accuracy": "Linear-probe accuracy",
    "map_at_r": "mAP@R",
    "recall_at_10": "Recall@10",
    "teacher_neighbour_recall@10": "Teacher-neighbour recall@10",
    "dissimilarity_spearman": "Dissimilarity Spearman",
    "perception_coherence": "Perception coherence",
    "parameters": "Parameters",
    "embeddings_per_second": "Embeddings / s",
}
# Size and speed describe the model and the machine, not the quality on the data set: they go in the
# card's body, not in the model-index.
NOT_EVAL_METRICS = ("parameters", "embeddings_per_second", "num_samples")

HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def template_path() -> Path:
    """``distilled_student.md``, from the installed package's data or from the repository checkout."""
    package_dir = Path(__file__).resolve().parent.parent
    candidates = (package_dir / "model_cards" / TEMPLATE_NAME, package_dir.parent / "model_cards" / TEMPLATE_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the model card template {TEMPLATE_NAME} was not found (looked in {', '.join(str(c) for c in candidates)}); "
        "install hf_pcoh from its repository (pip install -e .) or pass template=PATH"
    )


def looks_like_hub_id(name: str | None) -> bool:
    """True for ``owner/name`` strings that are valid repo ids and not a local folder."""
    if not name or not HUB_ID_PATTERN.match(name) or os.path.isdir(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ---- numbers as the card shows them ------------------------------------------------------------------


def format_count(value: float | int | None) -> str:
    """``22,713,216``, or a dash when unknown."""
    return f"{int(value):,}" if value is not None else "—"


def format_ratio(ratio: float) -> str:
    """``0.86x``; tiny ratios keep two significant digits (``0.0017x``) instead of reading ``0.00x``."""
    return f"{ratio:.2f}x" if abs(ratio) >= 0.1 else f"{ratio:.2g}x"


def format_metric(name: str, value: Any) -> str:
    """A metric as the results table shows it: counts with separators, rates to 0.1, scores to 4 decimals."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    if name == "parameters":
        return format_count(value)
    if name == "embeddings_per_second":
        return f"{value:,.1f}"
    return f"{value:.4f}"


def metric_display_name(name: str) -> str:
    """``knn_accuracy@10`` -> ``10-NN accuracy``; unknown names are made readable."""
    if name in METRIC_NAMES:
        return METRIC_NAMES[name]
    return name.replace("_", " ").capitalize()


def ordered_metrics(*tables: dict[str, Any]) -> list[str]:
    """The numeric metric names of ``tables``: the known ones in reading order, then the rest sorted."""
    names = {name for table in tables for name, value in table.items() if isinstance(value, (int, float))}
    known = [name for name in METRIC_NAMES if name in names]
    return known + sorted(names - set(known))


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and inf stay out of tables and the model-index."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- the card's sections -----------------------------------------------------------------------------


def results_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """The student-vs-teacher table: one row per metric, with the student's value as a fraction of the teacher's."""
    student, teacher = results.get("student") or {}, results.get("teacher") or {}
    rows = []
    for name in ordered_metrics(student, teacher):
        student_value, teacher_value = student.get(name), teacher.get(name)
        ratio = "—"
        if is_number(student_value) and is_number(teacher_value) and teacher_value != 0:
            ratio = format_ratio(student_value / teacher_value)
        rows.append({
            "name": metric_display_name(name),
            "student": format_metric(name, student_value),
            "teacher": format_metric(name, teacher_value),
            "ratio": ratio,
        })
    return rows


def eval_results_for_card(results: dict[str, Any], task: str, dataset_type: str, dataset_name: str) -> list[EvalResult]:
    """The student's quality metrics as ``EvalResult`` entries (the ``model-index`` the Hub renders)."""
    entries = []
    student = results.get("student") or {}
    for name in ordered_metrics(student):
        value = student[name]
        if name in NOT_EVAL_METRICS or not is_number(value):
            continue
        entries.append(EvalResult(
            task_type=task,
            task_name=task.replace("-", " ").title(),
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=results.get("split"),
            metric_type=name,
            metric_value=value,
            metric_name=metric_display_name(name),
        ))
    return entries


def card_citations(loss_names: list[str], metric_names: list[str]) -> list[str]:
    """The BibTeX entries of the losses used, then of the metrics reported, then hf_pcoh's: each paper once."""
    entries = []
    for name in dict.fromkeys(loss_names):
        try:
            entries.append(get_loss_class(name).citation)
        except ValueError:
            logger.warning("loss %r is not registered in this hf_pcoh; its citation is left out of the card", name)
    entries += [metric_citation(name) for name in metric_names]
    entries.append(HF_PCOH)
    unique: dict[str, str] = {}
    for entry in entries:
        if entry and entry.strip():  # by key, not by text: a paper cited by a loss and by a metric is one entry
            unique.setdefault(citation_key(entry), entry.strip())
    return list(unique.values())


def loss_citations(loss_names: list[str]) -> list[str]:
    """The BibTeX entries of the losses used (each once, in order), then hf_pcoh's."""
    return card_citations(loss_names, [])


def teacher_summary(description: dict[str, Any]) -> dict[str, Any]:
    """The teacher as the card shows it: a Hub link when its name is a Hub id, else its path or config."""
    teacher = description["teacher"]
    name = teacher.get("name_or_path") or "config"
    from_config = not description["recipe"].get("teacher_model_name_or_path") and name == "config"
    if looks_like_hub_id(name):
        markdown = f"[{name}](https://huggingface.co/{name})"
    elif from_config:
        model_type = teacher.get("model_type")
        markdown = f"the {model_type + ' ' if model_type else ''}teacher built from `teacher_config`"
    else:
        markdown = f"`{name}`"
    return {
        "name_or_path": name,
        "markdown": markdown,
        "model_type": teacher.get("model_type", "—"),
        "parameters": teacher.get("parameters"),
        "parameters_text": format_count(teacher.get("parameters")),
        "hub_id": name if looks_like_hub_id(name) else None,
    }


def student_summary(description: dict[str, Any], model_config: dict[str, Any], size_ratio: float | None) -> dict[str, Any]:
    """The student as the card shows it: architecture from its config.json, where it started from, its size."""
    student, recipe = description["student"], description["recipe"]
    model_type = student.get("model_type") or model_config.get("model_type", "")
    shape = []
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden size")):
        if isinstance(model_config.get(key), int):
            shape.append(f"{model_config[key]} {label}" if label == "layers" else f"{label} {model_config[key]}")
    architecture = f"{model_type} ({', '.join(shape)})" if shape else model_type
    if recipe.get("student_model_name_or_path"):
        source = recipe["student_model_name_or_path"]
        link = f"[{source}](https://huggingface.co/{source})" if looks_like_hub_id(source) else f"`{source}`"
        origin = f"initialised from {link}"
    elif recipe.get("student_init_from_teacher"):
        origin = "built from `student_config`, initialised from the teacher's layers"
    else:
        origin = "built from `student_config`, randomly initialised"
    parameters = student.get("parameters")
    parameters_text = format_count(parameters)
    if size_ratio is not None:
        parameters_text += f" ({format_ratio(size_ratio)})"
    return {
        "model_type": model_type,
        "architecture": architecture,
        "origin": origin,
        "parameters": parameters,
        "parameters_text": parameters_text,
        "description": f"{architecture} student" if model_type else "student",
    }


def size_summary(student_parameters: int | None, size_ratio: float | None) -> str:
    """``37,856 parameters, 0.0017x the teacher's (600.0x smaller)``; without the teacher's size, the count only."""
    if size_ratio is None:
        return f"{format_count(student_parameters)} parameters"
    return (f"{format_count(student_parameters)} parameters, {format_ratio(size_ratio)} the teacher's "
            f"({1 / size_ratio:.1f}x smaller)")


def speed_context(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """Student and teacher embeddings per second and the speed-up, when the evaluation measured them."""
    if not results:
        return None
    student_speed = (results.get("student") or {}).get("embeddings_per_second")
    teacher_speed = (results.get("teacher") or {}).get("embeddings_per_second")
    speed_up = (results.get("ratios") or {}).get("speed_up")
    if speed_up is None and is_number(student_speed) and is_number(teacher_speed) and teacher_speed > 0:
        speed_up = student_speed / teacher_speed
    if not is_number(speed_up):
        return None
    return {
        "student": format_metric("embeddings_per_second", student_speed),
        "teacher": format_metric("embeddings_per_second", teacher_speed),
        "speed_up": speed_up,
        "summary": f"{format_ratio(speed_up)} the teacher's embeddings per second (measured after training, "
                   "same machine)",
    }


def results_context(results: dict[str, Any] | None, dataset_id: str) -> dict[str, Any] | None:
    """The results section: where they were measured and the student-vs-teacher rows; None when not evaluated."""
    if not results:
        return None
    return {
        "dataset": results.get("dataset") or dataset_id,
        "split": results.get("split", "eval"),
        "num_samples": format_count(results.get("num_samples")),
        "rows": results_rows(results),
    }


def dataset_context(dataset: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    """The data the student was distilled on: its name, split sizes and the columns used."""
    column_parts = [f"{key.replace('_', ' ')} `{dataset[key]}`" for key in ("text_column", "image_column", "label_column")
                    if dataset.get(key)]
    return {
        "name": dataset_id,
        "train_samples": format_count(dataset.get("train_samples")),
        "eval_samples": format_count(dataset.get("eval_samples")),
        "columns": ", ".join(column_parts) if column_parts else "columns not recorded",
    }


def plots_context(folder: Path) -> list[dict[str, str]]:
    """The PNG plots that are uploaded with the student, as image links relative to the card."""
    files, _ = folder_contents(folder)
    return [
        {"alt": Path(path).stem.replace("_", " ").replace("-", " "), "path": quote(path)}
        for path in uploadable(files)
        if path.lower().endswith(".png")
    ]


def layer_selection_context(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rows of the knowledge-quality table when the teacher layers were chosen automatically."""
    if not selection:
        return None
    rows = [
        {"layer": layer, "selected": int(layer) in selection["selected"],
         **{name: f"{quality[name]:.3f}" for name in ("separation", "information", "efficiency", "quality")}}
        for layer, quality in selection["qualities"].items()
    ]
    return {"selected": selection["selected"], "rows": rows}


def dataset_names(description: dict[str, Any]) -> tuple[str, str]:
    """(id, type) of the data set: its name or path as recorded, and for a local path the folder's name."""
    dataset_id = str(description["dataset"].get("name") or description["recipe"].get("dataset_name") or "unknown")
    dataset_type = Path(dataset_id).name if os.path.isabs(dataset_id) or os.path.isdir(dataset_id) else dataset_id
    return dataset_id, dataset_type


def used_losses(description: dict[str, Any]) -> list[str]:
    """The run's losses, each once, in order: the recipe's, then any that only a term names."""
    return list(dict.fromkeys([*description["losses"], *(term["loss"] for term in description.get("terms", []))]))


# ---- the card ----------------------------------------------------------------------------------------


def build_model_card(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    template: str | os.PathLike | None = None,
    secrets: tuple[str | None, ...] = (),
) -> ModelCard:
    """The model card of the distilled student in ``output_dir``, from the run's own files.

    Args:
        output_dir: a distillation run's output directory (``distillation_config.json`` is required;
            ``eval_results.json``, the student's ``config.json`` and ``*.png`` plots are used when present).
        repo_id: the Hub repo the card is for (its name titles the card and the usage snippet loads it);
            default: the folder's name.
        license: an SPDX-like Hub license id.
        template: a Jinja template to use instead of ``model_cards/distilled_student.md``.
        secrets: values that must not appear in the card besides the credential-like environment
            variables (e.g. the token about to be used); any occurrence is replaced by ``<redacted>``.

    Returns:
        a :class:`huggingface_hub.ModelCard` whose ``data`` holds the metadata (``model-index`` included).
    """
    folder = Path(output_dir)
    description, results = read_run(folder)
    model_name = (repo_id or folder.resolve().name).split("/")[-1]
    context = card_context(folder, description, results, model_name, repo_id)
    card_data = card_metadata(description, results, context, license, model_name)
    card = ModelCard.from_template(
        card_data, template_path=str(template) if template is not None else str(template_path()), **context
    )
    text = str(card)
    redacted = redact_text(text, secrets)
    return card if redacted == text else ModelCard(redacted)


def card_context(folder: Path, description: dict[str, Any], results: dict[str, Any] | None, model_name: str,
                 repo_id: str | None) -> dict[str, Any]:
    """Every variable of the card's template, from the run's description, results and files."""
    recipe = redact_recipe(description["recipe"])
    model_config = read_model_config(folder)
    losses = used_losses(description)
    dataset_id, _ = dataset_names(description)
    teacher = teacher_summary(description)
    student_parameters = description["student"].get("parameters")
    size_ratio = (student_parameters / teacher["parameters"]
                  if student_parameters and teacher["parameters"] else None)
    layer, pooling = embedding_spec(description)
    model_id = repo_id or f"<user>/{model_name}"
    usage = usage_snippet(model_id, description["modality"], layer, pooling,
                          max_length=int(recipe.get("max_length") or 128),
                          num_channels=model_config.get("num_channels"), normalize=embedding_normalized(description))
    sentence_transformers = (folder / SENTENCE_TRANSFORMERS_MODULES_FILE).is_file()
    reported = ordered_metrics((results or {}).get("student") or {})
    return {
        "model_name": model_name,
        "hf_pcoh_version": description.get("hf_pcoh_version", __version__),
        "teacher": teacher,
        "student": student_summary(description, model_config, size_ratio),
        "size_summary": size_summary(student_parameters, size_ratio),
        "speed": speed_context(results),
        "task": description["task"],
        "modality": description["modality"],
        "losses": losses,
        "dataset": dataset_context(description["dataset"], dataset_id),
        "terms": description.get("terms", []),
        "layer_selection": layer_selection_context(description.get("layer_selection")),
        "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, default_flow_style=None).strip(),
        "results": results_context(results, dataset_id),
        "plots": plots_context(folder),
        "embedding": {"layer": layer, "pooling": pooling, "normalize": embedding_normalized(description)},
        "usage": usage,
        "sentence_transformers_usage": sentence_transformers_snippet(model_id) if sentence_transformers else None,
        "citations": card_citations(losses, reported),
    }


def card_metadata(description: dict[str, Any], results: dict[str, Any] | None, context: dict[str, Any],
                  license: str, model_name: str) -> ModelCardData:
    """The card's YAML header: license, task, tags, base model, Hub data sets and the ``model-index``."""
    dataset_id, dataset_type = dataset_names(description)
    eval_results = None
    if results:
        dataset_name = str(results.get("dataset") or dataset_id)
        eval_results = eval_results_for_card(results, description["task"], dataset_type, dataset_name) or None
    sentence_transformers = context["sentence_transformers_usage"] is not None
    return ModelCardData(
        license=license,
        library_name="sentence-transformers" if sentence_transformers else "transformers",
        pipeline_tag="sentence-similarity" if sentence_transformers else description["task"],
        tags=[*(SENTENCE_TRANSFORMERS_TAGS if sentence_transformers else ()), *DEFAULT_TAGS, *context["losses"]],
        datasets=[dataset_id] if looks_like_hub_id(dataset_id) else None,
        base_model=context["teacher"]["hub_id"],
        model_name=model_name,
        eval_results=eval_results,
    )


def write_model_card(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    template: str | os.PathLike | None = None,
    secrets: tuple[str | None, ...] = (),
) -> Path:
    """Build the card (see :func:`build_model_card`) and write it as ``output_dir/README.md`` atomically."""
    card = build_model_card(output_dir, repo_id=repo_id, license=license, template=template, secrets=secrets)
    path = Path(output_dir) / CARD_FILE
    if path.is_file():
        logger.info("replacing %s with the distilled student's model card", path)
    write_text(path, str(card))  # a fresh file moved onto README.md: never written through a link there
    return path
