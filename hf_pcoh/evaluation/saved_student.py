"""Re-measure a student saved by a distillation run, beside its teacher, on the run's held-out split."""

from __future__ import annotations

import json
import os
from typing import Any

from ..artifacts import DISTILLATION_CONFIG_FILE
from ..config import DistillationConfig
from .student_report import compare_teacher_and_student


def evaluate_saved_student(
    student_dir: str, teacher: str | None = None, max_eval_samples: int | None = None,
    max_reference_samples: int = 3000,
) -> dict[str, Any]:
    """Measure a student saved by a distillation run beside its teacher, on the run's held-out split.

    The run's ``distillation_config.json`` says which teacher, data, layers and pooling; ``teacher``
    replaces the teacher (a folder or Hub id) and ``max_eval_samples`` the number of held-out rows.
    """
    # The setup builds models and data from a config and (through layer selection) imports this package.
    from ..setup import build_setup, embedding_extractors

    description_path = os.path.join(student_dir, DISTILLATION_CONFIG_FILE)
    if not os.path.isfile(description_path):
        raise ValueError(f"{student_dir} has no {DISTILLATION_CONFIG_FILE}: give the output_dir of a distillation run")
    with open(description_path, encoding="utf-8") as stream:
        recipe = dict(json.load(stream)["recipe"])
    recipe.update(student_model_name_or_path=student_dir, student_config=None, student_init_from_teacher=False,
                  teacher_cache=None, output_dir=student_dir, push_to_hub=False)
    if teacher is not None:
        recipe.update(teacher_model_name_or_path=teacher, teacher_config=None)
    if max_eval_samples is not None:
        recipe["max_eval_samples"] = max_eval_samples
    config = DistillationConfig(**{key: value for key, value in recipe.items() if value is not None or key == "student_config"})
    setup = build_setup(config)
    student_extractor, teacher_extractor = embedding_extractors(config)
    return compare_teacher_and_student(
        teacher=setup.teacher, student=setup.student, teacher_processor=setup.collator.teacher_processor,
        student_processor=setup.collator.student_processor, train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset, input_column=setup.collator.input_column,
        label_column=setup.collator.label_column, modality=setup.modality, student_extractor=student_extractor,
        teacher_extractor=teacher_extractor, max_length=config.max_length, device=config.device,
        max_reference_samples=max_reference_samples, dataset_name=config.dataset_name,
    )
