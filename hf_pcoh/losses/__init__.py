"""Feature-distillation losses, one family per module, all reachable by name through ``LOSSES``."""

from .base import LOSSES, DistillationLoss, build_loss, get_loss_class, register_loss
from .cka import CKALoss
from .cospress import CosPressLoss
from .dissimilarity import DISSIMILARITIES, Cosine, Dissimilarity, Euclidean, SquaredEuclidean, get_dissimilarity
from .logit_kd import LogitKDLoss
from .mse import ProjectedMSELoss
from .perception_coherence import PerceptionCoherenceLoss
from .procrustes import GramLoss, ProcrustesLoss
from .rkd import RKDDistanceLoss

__all__ = [
    "LOSSES",
    "DISSIMILARITIES",
    "CKALoss",
    "CosPressLoss",
    "Cosine",
    "Dissimilarity",
    "DistillationLoss",
    "Euclidean",
    "GramLoss",
    "LogitKDLoss",
    "PerceptionCoherenceLoss",
    "ProcrustesLoss",
    "ProjectedMSELoss",
    "RKDDistanceLoss",
    "SquaredEuclidean",
    "build_loss",
    "get_dissimilarity",
    "get_loss_class",
    "register_loss",
]
