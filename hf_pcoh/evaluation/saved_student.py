"""Re-measure a student saved by a distillation run, beside its teacher, on the run's held-out split."""

from __future__ import annotations

import enum
import json
import logging
import os
import types
import typing
from typing import Any

from ..artifacts import DISTILLATION_CONFIG_FILE, EVAL_RESULTS_FILE, EVAL_RESULTS_TABLE_FILE, write_json, write_text
from ..config import DistillationConfig
from ..errors import unknown_name_message
from ..setup import build_setup
from .report import without_aliases
from .student_report import compare_teacher_and_student
from .table import format_comparison_table

logger = logging.getLogger(__name__)


def evaluate_saved_student(
    student_dir: str, teacher: str | None = None, max_eval_samples: int | None = None,
    max_reference_samples: int = 3000, trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Measure a student saved by a distillation run beside its teacher, on the run's held-out split.

    The run's ``distillation_config.json`` says which teacher, data, layers and pooling; ``teacher``
    replaces the teacher (a folder or Hub id) and ``max_eval_samples`` the number of held-out rows.
    ``trust_remote_code`` comes from the caller only: the folder's file cannot turn it on (a downloaded
    "student" could otherwise run any Python it ships).
    """
    description_path = os.path.join(student_dir, DISTILLATION_CONFIG_FILE)
    if not os.path.isfile(description_path):
        raise ValueError(f"{student_dir} has no {DISTILLATION_CONFIG_FILE}: give the output_dir of a distillation run")
    recipe = read_saved_recipe(description_path)
    if "dataset_name" not in recipe:  # the run's data was a data set object (a Python call), which no name loads
        raise ValueError(f"{description_path}: the run was given its data as a data set object (a local/in-memory "
                         "dataset), which hf-pcoh evaluate cannot load again: measure it from Python with the same data "
                         "(hf_pcoh.evaluation.compare_teacher_and_student, or the trainer's evaluate())")
    if recipe.pop("trust_remote_code", False) and not trust_remote_code:
        logger.warning("%s asks for trust_remote_code: true, which is ignored: a saved file never turns on running a "
                       "checkpoint's own code; pass --trust_remote_code only if you trust this folder", description_path)
    recipe["trust_remote_code"] = trust_remote_code
    recipe.update(student_model_name_or_path=student_dir, student_config=None, student_init_from_teacher=False,
                  teacher_cache=None, output_dir=student_dir, push_to_hub=False)
    if teacher is not None:
        recipe.update(teacher_model_name_or_path=teacher, teacher_config=None)
    if max_eval_samples is not None:
        recipe["max_eval_samples"] = max_eval_samples
    try:
        config = DistillationConfig(**{key: value for key, value in recipe.items() if value is not None or key == "student_config"})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{description_path}: {error}") from None
    setup = build_setup(config)
    return compare_teacher_and_student(
        teacher=setup.teacher, student=setup.student, teacher_processor=setup.collator.teacher_processor,
        student_processor=setup.collator.student_processor, train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset, input_column=setup.collator.input_column,
        teacher_input_column=setup.collator.teacher_input_column,
        teacher_embedding_column=setup.collator.teacher_embedding_column,
        label_column=setup.collator.label_column, modality=setup.modality,
        student_extractor=setup.readout.student_embedding, teacher_extractor=setup.readout.teacher_embedding,
        max_length=config.max_length, device=config.device,
        max_reference_samples=max_reference_samples, dataset_name=config.dataset_name,
    )


def write_saved_student_results(student_dir: str, results: dict[str, Any]) -> str:
    """Write :func:`evaluate_saved_student`'s results into the run's folder as ``eval_results.json`` and
    ``eval_results.md`` (through :func:`hf_pcoh.artifacts.atomic_file`: a link planted under either name is
    replaced, never written through); returns the table."""
    table = format_comparison_table({role: without_aliases(results[role]) for role in ("teacher", "student")})
    write_json(os.path.join(student_dir, EVAL_RESULTS_FILE), results)
    write_text(os.path.join(student_dir, EVAL_RESULTS_TABLE_FILE), table + "\n")
    return table


def read_saved_recipe(path: str) -> dict[str, Any]:
    """The ``recipe`` of a run's ``distillation_config.json``: known fields of the hinted types, or a
    ``ValueError`` naming the file, the field, the value and what was expected."""
    try:
        with open(path, encoding="utf-8") as stream:
            description = json.load(stream)
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    recipe = description.get("recipe") if isinstance(description, dict) else None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} has no 'recipe' mapping: it was not written by an hf_pcoh run")
    hints = typing.get_type_hints(DistillationConfig)
    for key, value in recipe.items():
        if key not in hints:
            raise ValueError(f"{path}: recipe {unknown_name_message('field', key, list(hints))}")
        if value is not None and not value_fits(value, hints[key]):
            raise ValueError(f"{path}: recipe field {key}={value!r} is a {type(value).__name__}, expected "
                             f"{type_name(hints[key])}")
    return dict(recipe)


def value_fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type a config field is hinted with (containers: only the container)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str) and value in {member.value for member in hint}
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
