"""Measure a student beside its teacher on held-out data: the figures a user reads after a run."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ..data import first_rows
from ..features import FeatureExtractor
from ..models import count_parameters
from ..precomputed_teacher import precomputed_embeddings
from .agreement import dissimilarity_spearman
from ..embedding import Embeddings, embed
from .neighbours import knn_accuracy, teacher_neighbour_recall
from .report import AGREEMENT_ALIAS_GEOMETRY, NEIGHBOUR_ALIAS_GEOMETRY, evaluate_embeddings

logger = logging.getLogger(__name__)

# The first rows of the training split embedded as the labelled reference (kNN, probe), and the batch size.
REFERENCE_SAMPLES = 3000
EMBEDDING_BATCH_SIZE = 64


def compare_teacher_and_student(
    teacher: torch.nn.Module | None,
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
    max_reference_samples: int = REFERENCE_SAMPLES,
    batch_size: int = EMBEDDING_BATCH_SIZE,
    dataset_name: str = "",
    teacher_input_column: str | None = None,
    teacher_embedding_column: str | None = None,
    teacher_embeddings: dict[str, Embeddings] | None = None,
) -> dict[str, Any]:
    """Embed a reference sample of the training split and the eval split with both models, then measure.

    Class-aware metrics (kNN, probe, retrieval) use the training sample as the labelled reference;
    agreement metrics (teacher-neighbour recall, dissimilarity Spearman, perception coherence) compare
    the student's embeddings of the eval split with the teacher's. Every metric but the probe is measured
    in the cosine and the euclidean geometry; the keys are those of :func:`evaluate_embeddings`.
    The teacher reads ``teacher_input_column`` when it is not the student's (a translation pair); with no
    ``teacher`` its embeddings are read from ``teacher_embedding_column`` (precomputed), and its size and
    speed are not measured. ``teacher_embeddings`` (``{"train": the reference sample's, "test": the eval
    split's}``) are the teacher's computed elsewhere, by a teacher sharded across processes
    (:mod:`hf_pcoh.sharded_embedding`): ``teacher`` is then counted, not run, and its speed is theirs.
    """
    reference = first_rows(train_dataset, max_reference_samples)  # a streamed training split: its first rows
    embeddings: dict[str, dict[str, Any]] = {}
    for role, model, processor, extractor, column in (
        ("teacher", teacher, teacher_processor, teacher_extractor, teacher_input_column or input_column),
        ("student", student, student_processor, student_extractor, input_column),
    ):
        if role == "teacher" and teacher_embeddings is not None:  # computed by the sharded teacher
            row_counts = {"train": len(reference), "test": len(eval_dataset)}
            embeddings[role] = checked_embeddings(teacher_embeddings, row_counts)
            continue
        if model is None:  # the teacher's embeddings were computed before the run
            embeddings[role] = {split: Embeddings(precomputed_embeddings(rows, teacher_embedding_column), 0.0)
                                for split, rows in (("train", reference), ("test", eval_dataset))}
            continue
        train_embeddings = embed(model, processor, reference[column], extractor, modality, batch_size, max_length,
                                 device, description=f"{role}: embedding reference")
        test_embeddings = embed(model, processor, eval_dataset[column], extractor, modality, batch_size, max_length,
                                device, description=f"{role}: embedding eval split")
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
        if model is not None:
            seconds = embeddings[role]["train"].seconds + embeddings[role]["test"].seconds
            metrics["parameters"] = count_parameters(model)
            metrics["embeddings_per_second"] = (len(reference) + len(eval_dataset)) / seconds
        results[role] = {key: float(value) for key, value in metrics.items()}
    teacher_metrics, student_metrics = results["teacher"], results["student"]
    results["ratios"] = {} if teacher is None else {
        "parameters": student_metrics["parameters"] / teacher_metrics["parameters"],
        "speed_up": student_metrics["embeddings_per_second"] / teacher_metrics["embeddings_per_second"],
    }
    return results


def checked_embeddings(given: dict[str, Embeddings], rows: dict[str, int]) -> dict[str, Embeddings]:
    """``given``, once each split's embeddings are found with one row per row of that split."""
    for split, count in rows.items():
        if split not in given:
            raise ValueError(f"teacher_embeddings has no {split!r} entry (keys: {sorted(given)}); give 'train' and 'test'")
        if len(given[split].values) != count:
            raise ValueError(f"teacher_embeddings[{split!r}] holds {len(given[split].values)} rows; the {split} rows "
                             f"evaluated are {count}")
    return given


def agreement_metrics(
    student: np.ndarray,
    teacher: np.ndarray,
    labels: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    k: int = 10,
) -> dict[str, float]:
    """The figures watched during training, under the names and geometries of the final report
    (:func:`evaluate_embeddings`): ``teacher_neighbour_recall@{k}`` (cosine) and ``dissimilarity_spearman``
    (euclidean) of the student's embeddings of a split against the teacher's, and, given the split's
    ``labels`` and a labelled ``reference`` sample embedded by the student, ``knn_accuracy@{k}`` (cosine)."""
    if len(student) <= k:
        logger.warning("agreement metrics need more than k=%d points, got %d; skipped", k, len(student))
        return {}
    metrics = {
        f"teacher_neighbour_recall@{k}": teacher_neighbour_recall(student, teacher, k, NEIGHBOUR_ALIAS_GEOMETRY),
        "dissimilarity_spearman": dissimilarity_spearman(student, teacher, AGREEMENT_ALIAS_GEOMETRY),
    }
    if labels is not None and reference is not None and reference_labels is not None and len(reference) >= k:
        metrics[f"knn_accuracy@{k}"] = knn_accuracy(reference, reference_labels, student, labels, k,
                                                    NEIGHBOUR_ALIAS_GEOMETRY)
    return {name: float(value) for name, value in metrics.items()}


def summary_line(results: dict[str, Any]) -> str:
    """One line: size, speed, teacher-neighbour agreement and kNN accuracy of student vs teacher."""
    teacher, student, ratios = results["teacher"], results["student"], results["ratios"]
    parts = [
        f"parameters {student['parameters'] / 1e6:.1f}M vs {teacher['parameters'] / 1e6:.1f}M ({ratios['parameters']:.2f}x)",
        f"embeddings/s {student['embeddings_per_second']:.0f} vs {teacher['embeddings_per_second']:.0f} "
        f"({ratios['speed_up']:.2f}x)",
    ] if ratios else [  # the teacher's embeddings were precomputed: its size and speed are unknown
        f"parameters {student['parameters'] / 1e6:.1f}M",
        f"embeddings/s {student['embeddings_per_second']:.0f}",
    ]
    if "teacher_neighbour_recall@10" in student:
        parts.append(f"teacher-neighbour recall@10 {student['teacher_neighbour_recall@10']:.3f}")
    if "knn_accuracy@10" in student:
        parts.append(f"10-NN accuracy {student['knn_accuracy@10']:.3f} vs teacher {teacher['knn_accuracy@10']:.3f}")
    language_model = results.get("language_model")
    if language_model:
        parts.append(f"perplexity {language_model['student_perplexity']:.1f} vs teacher "
                     f"{language_model['teacher_perplexity']:.1f}; top-1 agreement {language_model['top1_agreement']:.3f}; "
                     f"greedy ROUGE-L {language_model['greedy_rouge_l']:.3f}")
    return "student vs teacher: " + "; ".join(parts)
