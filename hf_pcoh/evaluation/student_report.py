"""Measure a student beside its teacher on held-out data: the figures a user reads after a run."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ..features import FeatureExtractor
from ..models import count_parameters
from .embedding import embed
from .report import evaluate_embeddings

logger = logging.getLogger(__name__)


def compare_teacher_and_student(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    teacher_processor: Any,
    student_processor: Any,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    input_column: str,
    label_column: str | None,
    modality: str,
    student_extractor: FeatureExtractor,
    teacher_extractor: FeatureExtractor,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    max_reference_samples: int = 3000,
    batch_size: int = 64,
    dataset_name: str = "",
) -> dict[str, Any]:
    """Embed a reference sample of the training split and the eval split with both models, then measure.

    Class-aware metrics (kNN, probe, retrieval) use the training sample as the labelled reference;
    agreement metrics (teacher-neighbour recall, dissimilarity Spearman, perception coherence) compare
    the student's embeddings of the eval split with the teacher's. Every metric but the probe is measured
    in the cosine and the euclidean geometry; the keys are those of :func:`evaluate_embeddings`.
    """
    reference = train_dataset.select(range(min(max_reference_samples, len(train_dataset))))
    reference_inputs = reference[input_column]
    eval_inputs = eval_dataset[input_column]
    embeddings: dict[str, dict[str, Any]] = {}
    for role, model, processor, extractor in (
        ("teacher", teacher, teacher_processor, teacher_extractor),
        ("student", student, student_processor, student_extractor),
    ):
        train_embeddings = embed(model, processor, reference_inputs, extractor, modality, batch_size, max_length, device,
                                 description=f"{role}: embedding reference")
        test_embeddings = embed(model, processor, eval_inputs, extractor, modality, batch_size, max_length, device,
                                description=f"{role}: embedding eval split")
        embeddings[role] = {"train": train_embeddings, "test": test_embeddings}
    train_labels = np.asarray(reference[label_column]) if label_column else None
    test_labels = np.asarray(eval_dataset[label_column]) if label_column else None
    results: dict[str, Any] = {"dataset": dataset_name, "split": "eval", "num_samples": len(eval_dataset),
                               "num_reference_samples": len(reference)}
    for role, model in (("teacher", teacher), ("student", student)):
        is_student = role == "student"
        metrics = evaluate_embeddings(
            embeddings[role]["train"].values,
            embeddings[role]["test"].values,
            train_labels=train_labels,
            test_labels=test_labels,
            teacher_train=embeddings["teacher"]["train"].values if is_student else None,
            teacher_test=embeddings["teacher"]["test"].values if is_student else None,
        )
        seconds = embeddings[role]["train"].seconds + embeddings[role]["test"].seconds
        metrics["parameters"] = count_parameters(model)
        metrics["embeddings_per_second"] = (len(reference) + len(eval_dataset)) / seconds
        results[role] = {key: float(value) for key, value in metrics.items()}
    teacher_metrics, student_metrics = results["teacher"], results["student"]
    results["ratios"] = {
        "parameters": student_metrics["parameters"] / teacher_metrics["parameters"],
        "speed_up": student_metrics["embeddings_per_second"] / teacher_metrics["embeddings_per_second"],
    }
    return results


def summary_line(results: dict[str, Any]) -> str:
    """One line: size, speed, teacher-neighbour agreement and kNN accuracy of student vs teacher."""
    teacher, student, ratios = results["teacher"], results["student"], results["ratios"]
    parts = [
        f"parameters {student['parameters'] / 1e6:.1f}M vs {teacher['parameters'] / 1e6:.1f}M ({ratios['parameters']:.2f}x)",
        f"embeddings/s {student['embeddings_per_second']:.0f} vs {teacher['embeddings_per_second']:.0f} "
        f"({ratios['speed_up']:.2f}x)",
    ]
    if "teacher_neighbour_recall@10" in student:
        parts.append(f"teacher-neighbour recall@10 {student['teacher_neighbour_recall@10']:.3f}")
    if "knn_accuracy@10" in student:
        parts.append(f"10-NN accuracy {student['knn_accuracy@10']:.3f} vs teacher {teacher['knn_accuracy@10']:.3f}")
    return "student vs teacher: " + "; ".join(parts)
