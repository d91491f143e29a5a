"""hf_pcoh: feature distillation for transformers models (perception coherence and friends).

The public API: :class:`DistillationConfig` (every knob, a ``TrainingArguments``),
:class:`DistillationTrainer` (a ``transformers.Trainer``), the losses and their registry ``LOSSES``,
:func:`run_distillation` (the main job as a function) and the evaluation of students.
"""

__version__ = "0.1.0"

from .config import DistillationConfig
from .evaluation import compare_teacher_and_student as evaluate_student
from .evaluation import evaluate_embeddings
from .features import FeatureExtractor, Features
from .losses import (
    DISSIMILARITIES,
    LOSSES,
    CKALoss,
    CosPressLoss,
    DistillationLoss,
    GramLoss,
    LogitKDLoss,
    PerceptionCoherenceLoss,
    ProcrustesLoss,
    ProjectedMSELoss,
    RKDDistanceLoss,
    build_loss,
    register_loss,
)
from .pipeline import run_distillation
from .trainer import DistillationModel, DistillationTrainer

__all__ = [
    "DISSIMILARITIES",
    "LOSSES",
    "CKALoss",
    "CosPressLoss",
    "DistillationConfig",
    "DistillationLoss",
    "DistillationModel",
    "DistillationTrainer",
    "FeatureExtractor",
    "Features",
    "GramLoss",
    "LogitKDLoss",
    "PerceptionCoherenceLoss",
    "ProcrustesLoss",
    "ProjectedMSELoss",
    "RKDDistanceLoss",
    "build_loss",
    "evaluate_embeddings",
    "evaluate_student",
    "register_loss",
    "run_distillation",
]
