"""The model card of a distilled student, built from the run's own files.

:func:`build_model_card` fills ``model_cards/distilled_student.md`` through :class:`huggingface_hub.ModelCardData`
(license, pipeline tag, tags, base model, data sets and a ``model-index`` the Hub renders as evaluation results)
with the teacher and student, the recipe, the results beside the teacher's, the plots, a usage snippet and the
citations of the losses and metrics used; :func:`write_model_card` writes it as the folder's ``README.md``. A
language-model student (``task: causal_lm``) is published for text generation (:mod:`.language_model`). How the
card names the run's models and data, and which commands it offers to run or measure it again: :mod:`.run_origin`;
how it writes names and numbers: :mod:`.card_text`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import __version__
from ..artifacts import write_text
from ..citations import HF_PCOH, citation_key, metric_citation
from ..losses import get_loss_class
from . import language_model as lm
from .card_text import (
    format_count,
    format_metric,
    format_ratio,
    is_number,
    looks_like_hub_id,
    metric_display_name,
    ordered_metrics,
)
from .redaction import redact_recipe, redact_text
from .run_origin import (
    dataset_context,
    dataset_names,
    measure_context,
    rerun_context,
    student_summary,
    teacher_summary,
    training_results_context,
)
from .run_files import CARD_FILE, folder_contents, read_model_config, read_run, uploadable
from .usage import embedding_normalized, embedding_spec, sentence_transformers_snippet, usage_snippet

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "distilled_student.md"
DEFAULT_TAGS = ("distillation", "hf_pcoh", "knowledge-distillation")
# A student saved as a sentence-transformers model (a modules.json beside it) is listed as sentence-transformers lists its own.
SENTENCE_TRANSFORMERS_TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction")
SENTENCE_TRANSFORMERS_MODULES_FILE = "modules.json"

# Size and speed describe the model and the machine, not the quality on the data set: they go in the
# card's body, not in the model-index.
NOT_EVAL_METRICS = ("parameters", "embeddings_per_second", "num_samples")


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
    language_model = lm.is_language_model(description, model_config, results)
    if language_model:
        reported += ordered_metrics((results or {}).get(lm.RESULTS_SECTION) or {})
    cited_losses = [*losses, *lm.logit_kd_losses(recipe, language_model)]
    return {
        "model_name": model_name,
        "hf_pcoh_version": description.get("hf_pcoh_version", __version__),
        "teacher": teacher,
        "student": student_summary(description, model_config, size_ratio),
        "size_summary": size_summary(student_parameters, size_ratio),
        "speed": speed_context(results),
        "task": lm.TEXT_GENERATION if language_model else description["task"],
        "modality": description["modality"],
        "losses": losses,
        "dataset": dataset_context(description["dataset"], dataset_id),
        "terms": [*description.get("terms", []), *(lm.token_objectives(recipe) if language_model else [])],
        "layer_selection": layer_selection_context(description.get("layer_selection")),
        "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, default_flow_style=None).strip(),
        "results": results_context(results, dataset_id),
        "training_results": None if results else training_results_context(description),
        "rerun": rerun_context(description),
        "measure": measure_context(description, folder),
        "plots": plots_context(folder),
        "embedding": {"layer": layer, "pooling": pooling, "normalize": embedding_normalized(description)},
        "usage": usage,
        "sentence_transformers_usage": sentence_transformers_snippet(model_id) if sentence_transformers else None,
        "language_model": lm.card_context(folder, recipe, results, model_id) if language_model else None,
        "citations": card_citations(cited_losses, reported),
    }


def card_metadata(description: dict[str, Any], results: dict[str, Any] | None, context: dict[str, Any],
                  license: str, model_name: str) -> ModelCardData:
    """The card's YAML header: license, task, tags, base model, Hub data sets and the ``model-index``."""
    dataset_id, dataset_type = dataset_names(description)
    eval_results = None
    if results:
        dataset_name = str(results.get("dataset") or dataset_id)
        eval_results = eval_results_for_card(results, description["task"], dataset_type, dataset_name)
        if context["language_model"] is not None:  # the language-model metrics, as a text-generation task
            eval_results += lm.eval_results(results, dataset_type, dataset_name)
        eval_results = eval_results or None
    sentence_transformers = context["sentence_transformers_usage"] is not None
    pipeline_tag = "sentence-similarity" if sentence_transformers else description["task"]
    return ModelCardData(
        license=license,
        library_name="sentence-transformers" if sentence_transformers else "transformers",
        pipeline_tag=lm.TEXT_GENERATION if context["language_model"] is not None else pipeline_tag,
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
