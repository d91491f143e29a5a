"""Losses defined outside hf_pcoh: the modules named in ``HF_PCOH_LOSS_MODULES``, imported with the registry.

A loss written in its own file (a :class:`~hf_pcoh.losses.DistillationLoss` subclass decorated with
``@register_loss``) is usable from Python as soon as that file is imported. The command line cannot import
it, so ``HF_PCOH_LOSS_MODULES`` names such modules, separated by ``os.pathsep`` (``:`` on Linux and macOS):
each entry is a module name (``my_package.my_losses``) or the path of a ``.py`` file. They are imported
when ``hf_pcoh.losses`` is first imported, before ``DistillationConfig`` builds its ``--help`` and checks
recipes, so their losses appear in ``--help`` and can be named in ``--losses``::

    HF_PCOH_LOSS_MODULES=my_losses.py hf-pcoh distill minilm-wordnet --losses my_loss

Such a module imports what it needs from ``hf_pcoh.losses`` (not from the ``hf_pcoh`` package, which is
still being imported at that point).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

LOSS_MODULES_VARIABLE = "HF_PCOH_LOSS_MODULES"


def import_loss_module(entry: str) -> ModuleType:
    """Import one module of losses: a ``.py`` file by its path (as a module named after its stem), or a module by name."""
    if entry.endswith(".py"):
        path = Path(entry).expanduser().resolve()
        if not path.is_file():
            raise ImportError(f"{LOSS_MODULES_VARIABLE}: {entry!r} is not a file (give a .py file or a module name)")
        if path.stem in sys.modules and getattr(sys.modules[path.stem], "__file__", None) == str(path):
            return sys.modules[path.stem]
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # registered first, so that the loss classes pickle by reference
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(path.stem, None)
            raise
        return module
    try:
        return importlib.import_module(entry)
    except ModuleNotFoundError as error:
        raise ImportError(f"{LOSS_MODULES_VARIABLE}: cannot import the module {entry!r} ({error}); give an importable "
                          "module name or the path of a .py file") from error


def import_loss_modules_from_environment() -> list[ModuleType]:
    """Import every module ``HF_PCOH_LOSS_MODULES`` names (none when it is unset or empty)."""
    entries = [entry.strip() for entry in os.environ.get(LOSS_MODULES_VARIABLE, "").split(os.pathsep)]
    return [import_loss_module(entry) for entry in entries if entry]
