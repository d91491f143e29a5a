"""Publish a distilled student: a model card with the run's provenance and results, then one upload.

The output directory of a distillation run holds the student as a plain ``transformers`` model, the
projectors (``distillation_heads.safetensors``), ``distillation_config.json`` (the recipe and what it was
run on), optionally ``eval_results.json`` and PNG plots. From these, :func:`build_model_card` fills
``model_cards/distilled_student.md`` through :class:`huggingface_hub.ModelCardData` (license, pipeline tag,
tags, base model, data sets and a ``model-index`` the Hub renders as evaluation results), and
:func:`publish` writes it as ``README.md`` and uploads the folder in a single commit::

    from hf_pcoh.hub import publish

    plan = publish("outputs/minilm-wordnet", "me/minilm-tiny", dry_run=True)
    print(plan.files)        # what would be uploaded
    publish("outputs/minilm-wordnet", "me/minilm-tiny")

Nothing secret goes into the card: recipe fields named like credentials are redacted, and the text is
checked for the values of credential-like environment variables (``HF_TOKEN``...) and the token in use.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from . import __version__
from .artifacts import DISTILLATION_CONFIG_FILE, EVAL_RESULTS_FILE, HEADS_FILE, MODEL_CARD_FILE
from .losses import get_loss_class

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
CARD_FILE = MODEL_CARD_FILE
TEMPLATE_NAME = "distilled_student.md"

# Never uploaded: Trainer checkpoints and TensorBoard logs (the student is saved at the top level),
# pickled files (training_args.bin; weights are safetensors), and leftovers of interrupted atomic writes.
UPLOAD_IGNORE_PATTERNS = ("checkpoint-*/", "runs/", "*.bin", "*.tmp")

DEFAULT_TAGS = ("distillation", "hf_pcoh", "knowledge-distillation")

HF_PCOH_CITATION = f"""@software{{hf_pcoh,
  title   = {{hf_pcoh: feature distillation for transformers models}},
  note    = {{Python library, version {__version__}}},
  year    = {{2026}}
}}"""

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
CREDENTIAL_WORDS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey", "auth"}
REDACTED = "<redacted>"


class PublishError(RuntimeError):
    """A publish that cannot go on, with a message for the user (no traceback needed)."""


class MissingTokenError(PublishError):
    """No Hugging Face token: nothing was sent; the folder is ready to upload."""


class HubUnreachableError(PublishError):
    """The Hub could not be reached (offline, network error): nothing was uploaded."""


class HubRefusedError(PublishError):
    """The Hub answered with an error (bad token, no write access, ...): nothing was uploaded."""


@dataclass
class PublishPlan:
    """What :func:`publish` uploads (or, with ``dry_run``, would upload) and what came of it.

    ``files`` are paths relative to ``output_dir``, exactly the files ``upload_folder`` sends (``README.md``
    included); ``card`` is the model card's text.
    """

    output_dir: Path
    repo_id: str
    files: list[str]
    card: str
    commit_message: str
    ignore_patterns: list[str]
    private: bool = False
    dry_run: bool = False
    uploaded: bool = False
    repo_url: str | None = None
    commit_url: str | None = None
    card_path: Path | None = None
    skipped: list[str] = field(default_factory=list)


# ---- reading the run ------------------------------------------------------------------------------


def read_run(output_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(distillation_config, eval_results or None)`` of a run's output directory; errors name the file."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"output_dir={str(folder)!r} is not a directory; give the output_dir of a distillation run")
    config_path = folder / DISTILLATION_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {folder} is not the output of a finished hf_pcoh distillation run "
            f"(scripts/distill.py writes {DISTILLATION_CONFIG_FILE} beside the student when training ends)"
        )
    description = read_json(config_path)
    for key in ("recipe", "teacher", "student", "dataset", "losses", "modality", "task"):
        if key not in description:
            raise ValueError(f"{config_path} has no {key!r} entry; it was not written by hf_pcoh "
                             f"(keys: {sorted(description)})")
    results_path = folder / EVAL_RESULTS_FILE
    return description, (read_json(results_path) if results_path.is_file() else None)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a clear error for broken JSON or a non-object."""
    try:
        with path.open(encoding="utf-8") as stream:
            payload = json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(payload).__name__}")
    return payload


def check_student_files(output_dir: str | os.PathLike) -> None:
    """Fail, naming the missing file, unless the folder holds a loadable student and its provenance."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"output_dir={str(folder)!r} is not a directory; give the output_dir of a distillation run")
    if not (folder / MODEL_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder / MODEL_CONFIG_FILE} is missing: the student's config must be saved with save_pretrained"
        )
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise FileNotFoundError(
            f"{folder / WEIGHTS_FILES[0]} is missing: the student's weights must be saved as safetensors "
            f"({' or '.join(WEIGHTS_FILES)}); *.bin pickles are not uploaded"
        )
    if not (folder / DISTILLATION_CONFIG_FILE).is_file():
        read_run(folder)  # raises, naming the file


def files_to_upload(output_dir: str | os.PathLike, with_card: bool = True) -> list[str]:
    """The files ``upload_folder`` sends from ``output_dir``, relative and sorted, filtered as it filters them.

    ``with_card`` adds ``README.md`` when it is not written yet (a dry run lists what would be sent).
    """
    folder = Path(output_dir).expanduser().resolve()
    relative = sorted(path.relative_to(folder).as_posix() for path in folder.glob("**/*") if path.is_file())
    kept = list(filter_repo_objects(relative, ignore_patterns=[*UPLOAD_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))
    if with_card and CARD_FILE not in kept:
        kept = sorted([*kept, CARD_FILE])
    return kept


# ---- the card -------------------------------------------------------------------------------------


def template_path() -> Path:
    """``distilled_student.md``, from the installed package's data or from the repository checkout."""
    package_dir = Path(__file__).resolve().parent
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


def redact_recipe(value: Any, key: str = "") -> Any:
    """The recipe with the values of credential-like fields (``hub_token``...) replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {name: redact_recipe(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [redact_recipe(item, key) for item in value]
    words = set(re.split(r"[^a-z0-9]+", key.lower()))
    if value is not None and (words & CREDENTIAL_WORDS or key.lower().endswith("api_key")):
        return REDACTED
    return value


def secret_values(extra: tuple[str | None, ...] = ()) -> list[str]:
    """Values that must never appear in a card: credential-like environment variables and ``extra``."""
    values = [
        value
        for name, value in os.environ.items()
        if set(re.split(r"[^a-z0-9]+", name.lower())) & (CREDENTIAL_WORDS | {"key"})
    ]
    values.extend(value for value in extra if value)
    # Short values ("1", "true") would only wreck the text; real secrets are long.
    return sorted({value for value in values if len(value) >= 8}, key=len, reverse=True)


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


def embedding_spec(description: dict[str, Any]) -> tuple[int | str, str]:
    """(student layer, pooling) of the embedding the run was measured on.

    ``distillation_config.json``'s ``embedding`` entry when present; else, as the pipeline measures it,
    the deepest distilled student layer, with token-level pooling (``none``) read as ``mean``.
    """
    embedding = description.get("embedding") or {}
    recipe = description["recipe"]
    layer = embedding.get("student_layer")
    if layer is None:
        layers = recipe.get("student_layers") or ["last"]
        layer = layers[-1]
    pooling = embedding.get("pooling") or recipe.get("pooling") or "mean"
    if pooling == "none":
        pooling = "mean"
    if isinstance(layer, str) and re.fullmatch(r"-?\d+", layer.strip()):
        layer = int(layer)
    return layer, pooling


def usage_snippet(model_id: str, modality: str, layer: int | str, pooling: str, max_length: int = 128,
                  num_channels: int | None = None) -> str:
    """Python that loads the student with plain ``transformers`` and computes the embedding the card measured.

    It reproduces :class:`hf_pcoh.features.FeatureExtractor` (``layer``, ``pooling``) without hf_pcoh.
    """
    vision = modality == "vision"
    if vision:
        mode = "L" if num_channels == 1 else "RGB"
        lines = [
            "import torch",
            "from PIL import Image",
            "from transformers import AutoImageProcessor, AutoModel",
            "",
            f'model_id = "{model_id}"',
            "processor = AutoImageProcessor.from_pretrained(model_id)",
            "model = AutoModel.from_pretrained(model_id).eval()",
            "",
            f'images = [Image.open("my_image.png").convert("{mode}")]',
            'inputs = processor(images=images, return_tensors="pt")',
        ]
    else:
        lines = [
            "import torch",
            "from transformers import AutoModel, AutoTokenizer",
            "",
            f'model_id = "{model_id}"',
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            "model = AutoModel.from_pretrained(model_id).eval()",
            "",
            'sentences = ["A student distilled from its teacher.", "Embeddings from plain transformers."]',
            f'inputs = tokenizer(sentences, padding=True, truncation=True, max_length={max_length}, return_tensors="pt")',
        ]
    lines += ["with torch.no_grad():", "    outputs = model(**inputs, output_hidden_states=True)"]
    if layer == "pooler":
        lines.append("embeddings = outputs.pooler_output.flatten(1)  # the model's pooler")
        return "\n".join(lines)
    if layer == "last":
        lines.append("hidden = outputs.last_hidden_state")
    else:
        lines.append(f"hidden = outputs.hidden_states[{layer}]  # 0 = embeddings, 1.. = the layers' outputs")
    if pooling == "cls":
        lines.append(f"embeddings = hidden[:, 0]  # the {'class' if vision else '[CLS]'} token")
    elif vision:  # gap / mean (last_token has no meaning without padding: the last token)
        if pooling == "last_token":
            lines.append("embeddings = hidden[:, -1]  # the last token")
        else:
            lines.append("# global average pooling: over H, W of [B, C, H, W] maps, or over the tokens of [B, T, d]")
            lines.append("embeddings = hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)")
    elif pooling == "last_token":
        lines += [
            "# the last non-padding token, whichever side the tokenizer pads",
            'mask = inputs["attention_mask"]',
            "last = (torch.arange(mask.shape[1]) * mask).argmax(dim=1)",
            "embeddings = hidden[torch.arange(hidden.shape[0]), last]",
        ]
    else:  # mean / gap: mean over the non-padding tokens
        lines += [
            "# mean over the non-padding tokens",
            'mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
            "embeddings = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)",
        ]
    lines.append("print(embeddings.shape)  # [batch, dim]")
    return "\n".join(lines)


def loss_citations(loss_names: list[str]) -> list[str]:
    """The BibTeX entries of the losses used (each once, in order), then hf_pcoh's own."""
    citations = []
    for name in dict.fromkeys(loss_names):
        try:
            citation = get_loss_class(name).citation.strip()
        except ValueError:
            logger.warning("loss %r is not registered in this hf_pcoh; its citation is left out of the card", name)
            continue
        if citation and citation not in citations:
            citations.append(citation)
    citations.append(HF_PCOH_CITATION)
    return citations


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
    recipe = redact_recipe(description["recipe"])
    model_config_path = folder / MODEL_CONFIG_FILE
    model_config = read_json(model_config_path) if model_config_path.is_file() else {}
    model_name = (repo_id or folder.resolve().name).split("/")[-1]
    losses = list(dict.fromkeys([*description["losses"], *(term["loss"] for term in description.get("terms", []))]))
    task, modality = description["task"], description["modality"]
    dataset = description["dataset"]
    dataset_id = str(dataset.get("name") or recipe.get("dataset_name") or "unknown")
    dataset_type = Path(dataset_id).name if os.path.isabs(dataset_id) or os.path.isdir(dataset_id) else dataset_id

    teacher = teacher_summary(description)
    teacher_parameters, student_parameters = teacher["parameters"], description["student"].get("parameters")
    size_ratio = student_parameters / teacher_parameters if student_parameters and teacher_parameters else None
    student = student_summary(description, model_config, size_ratio)
    if size_ratio is not None:
        size_summary = (f"{format_count(student_parameters)} parameters, {format_ratio(size_ratio)} the teacher's "
                        f"({1 / size_ratio:.1f}x smaller)")
    else:
        size_summary = f"{format_count(student_parameters)} parameters"

    speed = None
    if results:
        student_speed = (results.get("student") or {}).get("embeddings_per_second")
        teacher_speed = (results.get("teacher") or {}).get("embeddings_per_second")
        speed_up = (results.get("ratios") or {}).get("speed_up")
        if speed_up is None and is_number(student_speed) and is_number(teacher_speed) and teacher_speed > 0:
            speed_up = student_speed / teacher_speed
        if is_number(speed_up):
            speed = {
                "student": format_metric("embeddings_per_second", student_speed),
                "teacher": format_metric("embeddings_per_second", teacher_speed),
                "speed_up": speed_up,
                "summary": f"{format_ratio(speed_up)} the teacher's embeddings per second (measured after training, "
                           "same machine)",
            }

    results_context = None
    eval_results = None
    if results:
        results_context = {
            "dataset": results.get("dataset") or dataset_id,
            "split": results.get("split", "eval"),
            "num_samples": format_count(results.get("num_samples")),
            "rows": results_rows(results),
        }
        eval_results = eval_results_for_card(results, task, dataset_type, str(results.get("dataset") or dataset_id)) or None

    layer, pooling = embedding_spec(description)
    usage = usage_snippet(
        repo_id or f"<user>/{model_name}",
        modality,
        layer,
        pooling,
        max_length=int(recipe.get("max_length") or 128),
        num_channels=model_config.get("num_channels"),
    )
    plots = [
        {"alt": Path(path).stem.replace("_", " ").replace("-", " "), "path": quote(path)}
        for path in files_to_upload(folder, with_card=False)
        if path.lower().endswith(".png")
    ]
    column_parts = [f"{key.replace('_', ' ')} `{dataset[key]}`" for key in ("text_column", "image_column", "label_column")
                    if dataset.get(key)]
    dataset_context = {
        "name": dataset_id,
        "train_samples": format_count(dataset.get("train_samples")),
        "eval_samples": format_count(dataset.get("eval_samples")),
        "columns": ", ".join(column_parts) if column_parts else "columns not recorded",
    }

    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=task,
        tags=[*DEFAULT_TAGS, *losses],
        datasets=[dataset_id] if looks_like_hub_id(dataset_id) else None,
        base_model=teacher["hub_id"],
        model_name=model_name,
        eval_results=eval_results,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template) if template is not None else str(template_path()),
        model_name=model_name,
        hf_pcoh_version=description.get("hf_pcoh_version", __version__),
        teacher=teacher,
        student=student,
        size_summary=size_summary,
        speed=speed,
        task=task,
        modality=modality,
        losses=losses,
        dataset=dataset_context,
        terms=description.get("terms", []),
        layer_selection=layer_selection_context(description.get("layer_selection")),
        recipe_yaml=yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, default_flow_style=None).strip(),
        results=results_context,
        plots=plots,
        embedding={"layer": layer, "pooling": pooling},
        usage=usage,
        citations=loss_citations(losses),
    )
    text = str(card)
    leaked = [value for value in secret_values(secrets) if value in text]
    if leaked:
        logger.warning("a credential-like value appeared in the model card; it was replaced by %s", REDACTED)
        for value in leaked:
            text = text.replace(value, REDACTED)
        card = ModelCard(text)
    return card


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
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{CARD_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as stream:
            stream.write(str(card))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# ---- publishing -----------------------------------------------------------------------------------


def network_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub could not be reached", whichever HTTP client huggingface_hub uses."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]  # includes OfflineModeIsEnabled
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        types.extend(getattr(module, name) for name in names if isinstance(getattr(module, name, None), type))
    return tuple(types)


def default_commit_message(description: dict[str, Any]) -> str:
    """``Distil TEACHER into a STUDENT student on DATASET with LOSSES (hf_pcoh VERSION)``."""
    teacher = description["teacher"].get("name_or_path") or "a teacher"
    student = description["student"].get("model_type") or "a"
    dataset = description["dataset"].get("name") or "its data"
    losses = ", ".join(description.get("losses") or ["feature distillation"])
    version = description.get("hf_pcoh_version", __version__)
    return f"Distil {teacher} into a {student} student on {dataset} with {losses} (hf_pcoh {version})"


def publish(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
    license: str = "apache-2.0",
) -> PublishPlan:
    """Write the model card into ``output_dir`` and upload the folder to ``repo_id`` in one commit.

    Checks the folder first (student ``config.json`` and safetensors weights, ``distillation_config.json``).
    Uploads every file except ``checkpoint-*/``, ``runs/``, ``*.bin`` pickles and ``*.tmp`` leftovers.

    Args:
        output_dir: the distillation run's output directory.
        repo_id: ``user/name`` (or ``org/name``) on the Hub; created if missing.
        private: create the repo private (an existing repo keeps its visibility).
        token: a Hugging Face token; default: ``huggingface_hub.get_token()`` (``HF_TOKEN`` or ``hf auth login``).
        commit_message: default: names the teacher, student, data set, losses and hf_pcoh version.
        dry_run: only build the card and list the files; write and send nothing.
        api: the :class:`huggingface_hub.HfApi` to use (tests pass a stand-in).
        license: the card's license.

    Returns:
        a :class:`PublishPlan` with the files, the card and (after an upload) the commit URL.

    Raises:
        FileNotFoundError / ValueError: the folder is not a finished run (the message names the file), or
            ``repo_id`` is not a valid repo id.
        MissingTokenError: no token; nothing was sent; the folder (with its card) is ready to upload.
        HubUnreachableError: offline or a network error; nothing was uploaded.
        HubRefusedError: the Hub refused (e.g. a read-only token); nothing was uploaded.
    """
    folder = Path(output_dir)
    check_student_files(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id={repo_id!r} is not a Hub repo id: use 'user/name' ({error})") from None
    description, _ = read_run(folder)
    message = commit_message or default_commit_message(description)
    ignore_patterns = list(UPLOAD_IGNORE_PATTERNS)
    every_file = sorted(path.relative_to(folder.resolve()).as_posix()
                        for path in folder.resolve().glob("**/*") if path.is_file())
    # Resolved locally (environment, then the token file of `hf auth login`); also kept out of the card.
    token = token or get_token()

    if dry_run:
        card = build_model_card(folder, repo_id=repo_id, license=license, secrets=(token,))
        files = files_to_upload(folder)
        return PublishPlan(folder, repo_id, files, str(card), message, ignore_patterns, private=private, dry_run=True,
                           skipped=[path for path in every_file if path not in files])

    # The card is written before anything is sent: whatever happens next, the folder is ready to upload.
    card_path = write_model_card(folder, repo_id=repo_id, license=license, secrets=(token,))
    files = files_to_upload(folder)
    plan = PublishPlan(folder, repo_id, files, card_path.read_text(encoding="utf-8"), message, ignore_patterns,
                       private=private, card_path=card_path, skipped=[path for path in every_file if path not in files])
    ready = (f"The folder {folder} is complete, with its model card {CARD_FILE}, and ready to upload "
             f"({len(files)} files)")

    if not token:
        raise MissingTokenError(
            f"No Hugging Face token found, so nothing was sent to {repo_id}. Run `hf auth login` (or set the "
            f"HF_TOKEN environment variable to a token with write access) and run the same command again. {ready}."
        )
    api = api if api is not None else HfApi()
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            commit_message=message,
            ignore_patterns=list(ignore_patterns),  # upload_folder appends its defaults to the list it gets
            token=token,
        )
    except network_error_types() as error:
        raise HubUnreachableError(
            f"Could not reach the Hugging Face Hub to upload to {repo_id} ({type(error).__name__}: {error}). Nothing "
            f"was uploaded: the upload is a single commit, so the repo holds no partial upload. {ready}: run the same "
            "command again once online (and without HF_HUB_OFFLINE=1)."
        ) from error
    except HfHubHTTPError as error:
        raise HubRefusedError(
            f"The Hugging Face Hub refused the upload to {repo_id} ({error}). Check that your token has write access "
            f"to {repo_id.split('/')[0]!r} (`hf auth whoami`). Nothing was uploaded. {ready}."
        ) from error
    plan.uploaded = True
    plan.repo_url = str(repo_url) if repo_url is not None else None
    plan.commit_url = getattr(commit, "commit_url", None)
    logger.info("uploaded %d files to %s", len(files), plan.repo_url or repo_id)
    return plan
