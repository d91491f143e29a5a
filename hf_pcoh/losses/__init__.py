"""Feature-distillation losses, one family per module, all reachable by name through ``LOSSES``."""

from .base import (
    LOSSES,
    DistillationLoss,
    build_loss,
    check_loss_options,
    describe_loss_options,
    get_loss_class,
    loss_options_help,
    register_loss,
)
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
    "check_loss_options",
    "describe_loss_options",
    "get_dissimilarity",
    "get_loss_class",
    "loss_options_help",
    "register_loss",
]
