"""Feature-distillation losses, one family per module, all reachable by name through ``LOSSES``."""

from .base import LOSSES, DistillationLoss, build_loss, get_loss_class, register_loss
from .dissimilarity import DISSIMILARITIES, Cosine, Dissimilarity, Euclidean, SquaredEuclidean, get_dissimilarity
from .mse import ProjectedMSELoss
from .perception_coherence import PerceptionCoherenceLoss

__all__ = [
    "LOSSES",
    "DISSIMILARITIES",
    "Cosine",
    "Dissimilarity",
    "DistillationLoss",
    "Euclidean",
    "PerceptionCoherenceLoss",
    "ProjectedMSELoss",
    "SquaredEuclidean",
    "build_loss",
    "get_dissimilarity",
    "get_loss_class",
    "register_loss",
]
