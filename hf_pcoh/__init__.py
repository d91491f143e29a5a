"""hf_pcoh: feature distillation for transformers models (perception coherence and friends).

The public API: :class:`DistillationConfig` (every knob, a ``TrainingArguments``),
:class:`DistillationTrainer` (a ``transformers.Trainer``), the losses and their registry ``LOSSES``,
:func:`run_distillation` (the main job as a function) and the evaluation of students. The loss classes
are exported from the registry by their class names (``from hf_pcoh import CKALoss``), including losses
registered later.
"""

from .version import __version__
from .config import DistillationConfig
from .distillation_model import DistillationModel
from .evaluation import compare_teacher_and_student as evaluate_student
from .evaluation import evaluate_embeddings
from .features import FeatureExtractor, Features
from .losses import DISSIMILARITIES, LOSSES, DistillationLoss, build_loss, loss_classes, register_loss
from .pipeline import run_distillation
from .trainer import DistillationTrainer

globals().update(loss_classes())


def __getattr__(name: str) -> type[DistillationLoss]:
    try:
        return loss_classes()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = [
    "DISSIMILARITIES",
    "LOSSES",
    "DistillationConfig",
    "DistillationLoss",
    "DistillationModel",
    "DistillationTrainer",
    "FeatureExtractor",
    "Features",
    "build_loss",
    "evaluate_embeddings",
    "evaluate_student",
    "register_loss",
    "run_distillation",
    *loss_classes(),
]
