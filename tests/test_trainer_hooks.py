"""The private ``transformers.Trainer`` hooks that ``DistillationTrainer`` overrides or calls still have the shape
the overrides expect.

A release that renames a hook, or changes its parameters, would otherwise leave an override silently unused (the
Trainer stops calling it) or break at run time. The list is docs/architecture.md's table "The Trainer's private
hooks"; each failure names the hook and what changed.
"""

from __future__ import annotations

import inspect

import pytest
import transformers
from transformers import Trainer

from hf_pcoh.trainer import DistillationTrainer

# hook -> the parameters (after self) the Trainer's method has, in order, as the override or call expects them
PRIVATE_HOOKS: dict[str, list[str]] = {
    "_get_grad_norm": ["model", "grad_norm"],
    "_save": ["output_dir", "state_dict"],
    "_load_optimizer_and_scheduler": ["checkpoint"],
    "_load_from_checkpoint": ["resume_from_checkpoint", "model"],
    "_load_best_model": [],
    "_save_checkpoint": ["model", "trial"],
    "_prepare_inputs": ["inputs"],
    "_get_num_items_in_batch": ["batch_samples", "device"],
    "_finish_current_push": [],
}
# the public method with a private parameter hf_pcoh overrides
PUBLIC_WITH_PRIVATE_PARAMETERS: dict[str, list[str]] = {"save_model": ["output_dir", "_internal_call"]}


def parameters_of(method) -> list[str]:
    return [name for name in inspect.signature(method).parameters if name != "self"]


@pytest.mark.parametrize("hook", sorted(PRIVATE_HOOKS | PUBLIC_WITH_PRIVATE_PARAMETERS))
def test_the_trainers_hook_has_the_parameters_the_override_expects(hook: str) -> None:
    expected = (PRIVATE_HOOKS | PUBLIC_WITH_PRIVATE_PARAMETERS)[hook]
    version = transformers.__version__
    assert hasattr(Trainer, hook), (
        f"transformers {version}: Trainer.{hook} is gone; DistillationTrainer relies on it (docs/architecture.md, "
        f"'The Trainer's private hooks'): port the override before moving pyproject's transformers bound"
    )
    actual = parameters_of(getattr(Trainer, hook))
    assert actual == expected, (
        f"transformers {version}: Trainer.{hook} takes {actual}, DistillationTrainer's use of it expects {expected} "
        f"(docs/architecture.md, 'The Trainer's private hooks'): port the override"
    )


def overridden_here() -> set[str]:
    """The private Trainer methods that DistillationTrainer or one of hf_pcoh's mixins before Trainer defines."""
    classes = DistillationTrainer.__mro__[:DistillationTrainer.__mro__.index(Trainer)]
    return {name for cls in classes for name in vars(cls)
            if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)}


@pytest.mark.parametrize("hook", sorted(name for name in PRIVATE_HOOKS if name in overridden_here()))
def test_each_override_accepts_what_the_trainer_passes(hook: str) -> None:
    """The override takes the Trainer's parameters (so the Trainer's own calls reach it unchanged)."""
    assert parameters_of(getattr(DistillationTrainer, hook)) == PRIVATE_HOOKS[hook], hook


def test_every_private_trainer_method_hf_pcoh_overrides_is_listed_here_and_in_the_docs() -> None:
    from pathlib import Path

    overridden = overridden_here()
    assert overridden <= set(PRIVATE_HOOKS), f"list {sorted(overridden - set(PRIVATE_HOOKS))} in PRIVATE_HOOKS"
    docs = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    missing = [hook for hook in PRIVATE_HOOKS | PUBLIC_WITH_PRIVATE_PARAMETERS if f"`{hook}`" not in docs]
    assert not missing, f"docs/architecture.md does not list {missing} among the Trainer's private hooks"
