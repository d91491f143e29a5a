"""Command-line entry points: a recipe (YAML/JSON, or a built-in name) plus ``--field value`` overrides."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from typing import Any

from transformers import HfArgumentParser

from .artifacts import LAYER_QUALITY_PLOT_FILE
from .config import DistillationConfig, options_of_used_losses
from .evaluation import summary_line
from .hub import PublishError
from .distributed import end_process_group
from .non_finite import NonFiniteLossError
from .output_dir import holds_finished_run
from .pipeline import run_distillation
from .readout import resolve_readout
from .recipes import DEFAULT_RECIPE, builtin_recipes, is_recipe_argument, read_recipe
from .setup import build_run_inputs
from .setup_steps import choose_layers_by_quality

logger = logging.getLogger(__name__)


class DistillationArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one line naming the option and the value (raised, not printed
    after the usage of every ``TrainingArguments`` field), so ``distill_main`` reports them like any other."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefix matching: `--output_d DIR` is refused as unknown rather than taken for --output_dir.
        super().__init__(*args, allow_abbrev=False, add_help=False,
                         usage="%(prog)s [RECIPE] [--field value ...]", **kwargs)
        self.group_distillation_options_first()
        self.add_argument("-h", "--help", action=HelpAction, nargs=0, default=argparse.SUPPRESS,
                          help="the distillation options, then stop")
        self.add_argument("--help-all", "--help_all", action=HelpAction, nargs=0, default=argparse.SUPPRESS,
                          help="every option, the Trainer's (transformers.TrainingArguments) included")

    def group_distillation_options_first(self) -> None:
        """Two groups: the distillation fields (``DistillationConfig``'s own and the main training knobs a recipe
        sets) first, then the ~200 inherited ``TrainingArguments`` fields, so ``--help`` starts with what matters.
        argparse has no public way to move an option between groups: its group lists are edited here."""
        distillation = self.add_argument_group("distillation options (DistillationConfig)")
        trainer = self.add_argument_group("Trainer options (transformers.TrainingArguments)")
        order = {name: index for index, name in enumerate(DistillationConfig.distillation_field_names())}
        for action in list(self._optionals._group_actions):
            (distillation if action.dest in order else trainer)._group_actions.append(action)
            self._optionals._group_actions.remove(action)
        distillation._group_actions.sort(key=lambda action: order[action.dest])
        self.distillation_group, self.trainer_group = distillation, trainer

    def error(self, message: str) -> None:
        raise ValueError(f"{message} (run with --help for every option and its type)")


class HelpAction(argparse.Action):
    """``--help``: the distillation options and a pointer to ``--help-all``; ``--help-all``: every option."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string in ("--help-all", "--help_all"):
            parser.print_help()
        else:
            groups = parser._action_groups
            parser._action_groups = [group for group in groups if group is not parser.trainer_group]
            try:
                parser.print_help()
            finally:
                parser._action_groups = groups
            hidden = len(parser.trainer_group._group_actions)
            print(f"\n{hidden} more options of the Trainer (transformers.TrainingArguments: logging, saving, "
                  "precision, distributed...): --help-all")
        parser.exit()


def recipe_for_command_line(recipe: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The recipe's fields, less its options for losses that ``--losses`` on the command line no longer runs.

    A recipe's ``loss_kwargs`` configure the recipe's losses; ``recipe --losses cka`` asks for another loss,
    so the recipe's perception-coherence options are dropped (logged) rather than refused as options for a
    loss the run does not use. Options given with ``--loss_kwargs`` are kept as given and checked.
    """
    options = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    options.add_argument("--losses", "--loss", nargs="+")
    options.add_argument("--loss_kwargs")
    chosen, _ = options.parse_known_args(argv)
    if chosen.losses is None or chosen.loss_kwargs is not None or not isinstance(recipe.get("loss_kwargs"), dict):
        return recipe
    kept = options_of_used_losses(recipe["loss_kwargs"], chosen.losses)
    dropped = sorted(set(recipe["loss_kwargs"]) - set(kept))
    if dropped:
        logger.info("--losses %s: the recipe's options for %s are not used", " ".join(chosen.losses), ", ".join(dropped))
    return {**recipe, "loss_kwargs": kept}


def parse_distillation_args(argv: list[str] | None = None) -> DistillationConfig:
    """``[RECIPE] [--field value ...]`` -> a validated :class:`DistillationConfig`.

    With no recipe, the built-in ``minilm-wordnet`` recipe is used. Command-line values override the
    recipe's, exactly as with any ``HfArgumentParser`` script.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = DEFAULT_RECIPE
    if argv and is_recipe_argument(argv[0]):
        recipe = argv.pop(0)
    parser = DistillationArgumentParser(DistillationConfig)
    parser.set_defaults(**recipe_for_command_line(read_recipe(recipe), argv))
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    config.check_models_given()  # a recipe builds both models: say so before anything runs
    return config


def distill_main(argv: list[str] | None = None) -> int:
    """Run a distillation recipe end to end and print where the student is and how it compares."""

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        config = parse_distillation_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    replace_builtin_recipe_run(config, list(sys.argv[1:] if argv is None else argv))
    try:
        result = run_distillation(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except PublishError as error:  # the run itself finished: its folder is complete
        print(f"error: {error}", file=sys.stderr)
        return 1
    if config.process_index == 0:  # one line per run, not one per process of a multi-process launch
        print(f"student saved to {os.path.abspath(result.output_dir)}")
        if result.evaluation is not None:
            print(summary_line(result.evaluation))
    end_process_group()
    return 0


def replace_builtin_recipe_run(config: DistillationConfig, argv: list[str]) -> None:
    """A built-in recipe run again into its own default folder replaces its finished run there, with a warning.

    So the README's quick start (``python scripts/distill.py``) can be run again as written, and
    ``evaluate_student.py`` / ``publish.py`` keep finding the student where the README says. A folder the user named
    (``--output_dir``), or one holding an unfinished run (checkpoints only), is still refused.
    """
    recipe = argv[0] if argv and is_recipe_argument(argv[0]) else DEFAULT_RECIPE
    named = any(argument.split("=", 1)[0] in ("--output_dir", "--output-dir") for argument in argv)
    if (recipe in builtin_recipes() and not named and not config.resume_from_checkpoint
            and not config.overwrite_output_dir and holds_finished_run(config.output_dir)):
        logger.warning("%s holds a finished run of the built-in recipe %r: this run replaces it (give --output_dir "
                       "to keep it)", config.output_dir, recipe)
        config.overwrite_output_dir = True


def select_layers_main(argv: list[str] | None = None) -> int:
    """Print the knowledge quality of every teacher layer of a recipe and save its plot.

    ``[RECIPE] [--field value ...] [--layer_selection_top_k K]``: the teacher, data and labels of the
    recipe; the table marks the top-K layers (default: as many as the recipe's student layers).
    """
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        config = parse_distillation_args(argv)
        top_k = config.layer_selection_top_k or len(config.student_layers)
        # The recipe's data and models; its layers are scored with the teacher pooling the run would use (a recipe
        # with teacher_layers auto chooses them in resolving its readout, as a run does).
        inputs = build_run_inputs(config)
        choose = partial(choose_layers_by_quality, config, inputs.teacher, inputs.collator, inputs.train_dataset,
                         top_k=top_k)
        readout = resolve_readout(config, inputs.teacher, choose_teacher_layers=choose)
        choice = readout.layer_choice or choose(readout.teacher_pooling)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.makedirs(config.output_dir, exist_ok=True)
    plot_path = os.path.join(config.output_dir, LAYER_QUALITY_PLOT_FILE)
    choice.plot(plot_path)
    print(choice.table())
    print(f"top {top_k} teacher layers by knowledge quality: {choice.selected}; plot saved to {plot_path}")
    return 0
