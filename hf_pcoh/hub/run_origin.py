"""The parts of the model card that depend on where the run's models and data came from.

``distillation_config.json`` records the teacher, the student and the data as the trainer received them
(:mod:`hf_pcoh.run_sources`): a Hub id, a local folder, a config, a model object with no name or path, a data set
named by the config or a local / in-memory one. From that the card names them (:func:`teacher_summary`,
:func:`student_summary`, :func:`dataset_names`), offers a command to run the recipe again or to measure the student
only when that command can work (:func:`rerun_context`, :func:`measure_context`; else a Python snippet or a note
saying why not), and, for a run not measured after training, shows the trainer's last evaluation from its log
(:func:`training_results_context`). Files written before these were recorded read as they always did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .card_text import (
    METRIC_NAMES,
    format_count,
    format_metric,
    format_ratio,
    is_number,
    looks_like_hub_id,
    metric_display_name,
    ordered_metrics,
)

IN_MEMORY = "in-memory"  # the dataset "source" of data given to the trainer as an object
DISTILL_COMMAND = "hf-pcoh distill recipe.yaml"
EVALUATE_COMMAND = "hf-pcoh evaluate"


# ---- naming the models and the data -----------------------------------------------------------------------


def name_markdown(name: str) -> str:
    """A Hub id as a link, anything else (a folder) as code."""
    return f"[{name}](https://huggingface.co/{name})" if looks_like_hub_id(name) else f"`{name}`"


def object_markdown(model: dict[str, Any]) -> str:
    """``a bert model object built from a config (no name or path; 37,856 parameters)``."""
    model_type = model.get("model_type")
    return (f"a {model_type + ' ' if model_type else ''}model object built from a config (no name or path; "
            f"{format_count(model.get('parameters'))} parameters)")


def teacher_summary(description: dict[str, Any]) -> dict[str, Any]:
    """The teacher as the card shows it: a Hub link, its folder, the config it was built from, or a model object."""
    teacher = description["teacher"]
    source = teacher.get("source")
    name = teacher.get("name_or_path") or ("config" if source is None else None)
    model_type = teacher.get("model_type")
    from_config = source == "config" or (
        source is None and not description["recipe"].get("teacher_model_name_or_path") and name == "config")
    if from_config:
        markdown = f"the {model_type + ' ' if model_type else ''}teacher built from `teacher_config`"
    elif source == "object":
        markdown = object_markdown(teacher)
    elif source == "precomputed" and not looks_like_hub_id(name):
        markdown = name or "embeddings precomputed in a column of the data"
    else:
        markdown = name_markdown(name)
    return {
        "name_or_path": name or "config",
        "markdown": markdown,
        "model_type": teacher.get("model_type", "—"),
        "parameters": teacher.get("parameters"),
        "parameters_text": format_count(teacher.get("parameters")),
        "hub_id": name if name and looks_like_hub_id(name) else None,
    }


def student_origin(description: dict[str, Any]) -> str:
    """Where the student started from: a checkpoint (Hub id or folder), a config, or a model object it was given as."""
    student, recipe = description["student"], description["recipe"]
    source = student.get("source")
    if source in ("hub", "local") or (source is None and recipe.get("student_model_name_or_path")):
        return f"initialised from {name_markdown(student.get('name_or_path') or recipe['student_model_name_or_path'])}"
    if source == "object":
        return object_markdown(student)
    if student.get("init", "teacher" if recipe.get("student_init_from_teacher") else "random") == "teacher":
        return "built from `student_config`, initialised from the teacher's layers"
    return "built from `student_config`, randomly initialised"


def student_summary(description: dict[str, Any], model_config: dict[str, Any], size_ratio: float | None) -> dict[str, Any]:
    """The student as the card shows it: architecture from its config.json, where it started from, its size."""
    student = description["student"]
    model_type = student.get("model_type") or model_config.get("model_type", "")
    shape = []
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden size")):
        if isinstance(model_config.get(key), int):
            shape.append(f"{model_config[key]} {label}" if label == "layers" else f"{label} {model_config[key]}")
    architecture = f"{model_type} ({', '.join(shape)})" if shape else model_type
    parameters = student.get("parameters")
    parameters_text = format_count(parameters)
    if size_ratio is not None:
        parameters_text += f" ({format_ratio(size_ratio)})"
    return {
        "model_type": model_type,
        "architecture": architecture,
        "origin": student_origin(description),
        "parameters": parameters,
        "parameters_text": parameters_text,
        "description": f"{architecture} student" if model_type else "student",
    }


def is_in_memory(dataset: dict[str, Any]) -> bool:
    """Data given to the trainer as a data set object, which no name can load again."""
    return dataset.get("source") == IN_MEMORY


def dataset_names(description: dict[str, Any]) -> tuple[str, str]:
    """(id, type) of the data set: its name or path as recorded (for a local path the folder's name as its type), or
    the description of a local / in-memory data set."""
    dataset = description["dataset"]
    if is_in_memory(dataset):
        return str(dataset.get("description") or "a local/in-memory dataset"), IN_MEMORY
    dataset_id = str(dataset.get("name") or description["recipe"].get("dataset_name") or "unknown")
    dataset_type = Path(dataset_id).name if os.path.isabs(dataset_id) or os.path.isdir(dataset_id) else dataset_id
    return dataset_id, dataset_type


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


# ---- what can run it again or measure it ------------------------------------------------------------------


def model_problem(role: str, model: dict[str, Any]) -> str | None:
    """Why a recipe cannot load this model again, or None when it can (files written before sources were recorded
    are taken as loadable, as their recipe named the models)."""
    source, name = model.get("source"), model.get("name_or_path")
    if source == "object":
        return f"the {role} was a model object with no name or path"
    if source == "local" and not (name and os.path.isdir(name)):
        return f"the {role}'s folder {name} is no longer there"
    return None


def data_problem(description: dict[str, Any]) -> str | None:
    """Why a recipe cannot load the training data again, or None when it can."""
    dataset, recipe = description["dataset"], description["recipe"]
    if is_in_memory(dataset):
        return f"the data was {dataset_names(description)[0]}, which a recipe cannot name"
    name = str(dataset.get("name") or recipe.get("dataset_name") or "")
    files = recipe.get("dataset_files")
    paths = list(files.values()) if isinstance(files, dict) else list(files) if isinstance(files, list) else []
    if (os.path.isabs(name) or name.startswith(".")) and not os.path.exists(name):
        paths.append(name)
    missing = [path for path in paths if isinstance(path, str) and not os.path.exists(path)]
    return f"the data's files ({', '.join(missing)}) are no longer there" if missing else None


def argument_line(keyword: str, role: str, model: dict[str, Any]) -> str:
    """One argument of the Python snippet: the model's folder or Hub id, else the object it was."""
    if model.get("source") in ("hub", "local") and model.get("name_or_path"):
        return f"    {keyword}={model['name_or_path']!r},"
    if model.get("source") == "config":
        return f"    {keyword}=None,  # built from the recipe's {role}_config"
    kind = model.get("model_type") or "model"
    return f"    {keyword}={role},  # the same {kind} object ({format_count(model.get('parameters'))} parameters)"


def python_rerun(description: dict[str, Any]) -> str:
    """The Python that runs the recipe again with the same models and data, for a run no command can rebuild."""
    data = dataset_names(description)[0]
    teacher = description["teacher"]
    teacher_line = ("    teacher_model=None,  # its embeddings are a column of the data" if teacher.get("source") ==
                    "precomputed" else argument_line("teacher_model", "teacher", teacher))
    return "\n".join([
        "import yaml",
        "from hf_pcoh import DistillationConfig, DistillationTrainer",
        "",
        'recipe = yaml.safe_load(open("recipe.yaml"))  # the recipe above',
        "trainer = DistillationTrainer(",
        argument_line("model", "student", description["student"]),
        teacher_line,
        "    args=DistillationConfig(**recipe),",
        f"    train_dataset=train_dataset,  # the same data: {data}",
        "    eval_dataset=eval_dataset,",
        ")",
        "trainer.train()",
    ])


def rerun_context(description: dict[str, Any]) -> dict[str, Any]:
    """``{"command": "hf-pcoh distill recipe.yaml"}`` when the recipe names models and data that load again, else
    ``{"command": None, "reasons": ..., "python": ...}``: why no command can, and the Python that can."""
    problems = [problem for problem in (model_problem("teacher", description["teacher"]),
                                        model_problem("student", description["student"]), data_problem(description))
                if problem]
    if not problems:
        return {"command": DISTILL_COMMAND, "reasons": None, "python": None}
    return {"command": None, "reasons": "; ".join(problems), "python": python_rerun(description)}


def measure_context(description: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``hf-pcoh evaluate FOLDER`` when the recorded teacher and data load again (the student is this folder), else
    a note saying why not and what measures it from Python."""
    problems = [problem for problem in (model_problem("teacher", description["teacher"]), data_problem(description))
                if problem]
    if not problems:
        return {"command": f"{EVALUATE_COMMAND} {folder}", "note": None}
    return {"command": None,
            "note": (f"`{EVALUATE_COMMAND}` loads the teacher and the data by name, and here {'; '.join(problems)}: "
                     "measure it from Python with the same objects, `trainer.evaluate(eval_dataset)` (the agreement "
                     "metrics above) or `hf_pcoh.evaluation.compare_teacher_and_student` (student beside teacher)")}


# ---- the trainer's own evaluation ----------------------------------------------------------------------


def training_results_context(description: dict[str, Any]) -> dict[str, Any] | None:
    """The last evaluation in the trainer's log (``training_evaluation``), for a run measured by no
    ``eval_results.json``: its step, and each metric it logged, the known ones first under their card names."""
    evaluation = description.get("training_evaluation")
    metrics = (evaluation or {}).get("metrics") or {}
    names = [name for name in ordered_metrics(metrics) if is_number(metrics[name])]
    if not names:
        return None
    rows = [{"name": metric_display_name(name) if name in METRIC_NAMES else f"`eval_{name}`",
             "value": format_metric(name, metrics[name])} for name in names]
    return {"step": evaluation.get("step"), "eval_samples": format_count(description["dataset"].get("eval_samples")),
            "rows": rows}
