"""Feature-distillation losses, one per module, all reachable by name through ``LOSSES``.

Every module of this package is imported here, so a loss module dropped into it registers itself
(``@register_loss``); then the modules named in ``HF_PCOH_LOSS_MODULES`` (:mod:`.external`). The loss
classes are exported from the registry by their class names (``from hf_pcoh.losses import CKALoss``),
including losses registered later (module ``__getattr__``).
"""

import importlib
import pkgutil

from .base import (
    INVARIANCES,
    LOSSES,
    DistillationLoss,
    build_loss,
    check_loss_options,
    describe_loss_options,
    get_loss_class,
    loss_options_help,
    register_loss,
)
from .dissimilarity import DISSIMILARITIES, Cosine, Dissimilarity, Euclidean, SquaredEuclidean, get_dissimilarity
from .external import import_loss_modules_from_environment

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
import_loss_modules_from_environment()


def loss_classes() -> dict[str, type[DistillationLoss]]:
    """Every registered loss class by its class name (``{"CKALoss": CKALoss, ...}``), in registry order."""
    return {loss_class.__name__: loss_class for loss_class in LOSSES.values()}


def __getattr__(name: str) -> type[DistillationLoss]:
    try:
        return loss_classes()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


globals().update(loss_classes())

__all__ = [
    "LOSSES",
    "DISSIMILARITIES",
    "INVARIANCES",
    "Cosine",
    "Dissimilarity",
    "DistillationLoss",
    "Euclidean",
    "SquaredEuclidean",
    "build_loss",
    "check_loss_options",
    "describe_loss_options",
    "get_dissimilarity",
    "get_loss_class",
    "loss_classes",
    "loss_options_help",
    "register_loss",
    *loss_classes(),
]
