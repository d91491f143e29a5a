"""The command line, in one module: the installed ``hf-pcoh distill | select-layers | evaluate | publish |
train-teacher | cache`` (also ``python -m hf_pcoh``) and the functions ``scripts/`` wraps.

One console script with a subcommand per job, as ``accelerate`` and ``huggingface-cli`` have, so a user
who installed the wheel needs nothing from the repository's ``scripts/`` (thin wrappers around the same
functions). ``distill`` and ``select-layers`` take a recipe (YAML/JSON, or a built-in name) and ``--field value``
overrides; ``evaluate`` measures a saved run again; ``publish`` writes its model card and uploads it;
``train-teacher`` trains a teacher offline (the fashion-mnist recipe's vision teacher, or ``--task causal_lm`` an
OPT language model on WordNet glosses); ``cache list`` / ``cache clear`` show and remove the teacher-feature caches.
Each subcommand's ``--help`` lists its options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from transformers import HfArgumentParser

from . import __version__
from .artifacts import LAYER_QUALITY_PLOT_FILE
from .config import DistillationConfig, options_of_used_losses
from .distributed import end_process_group
from .errors import unknown_name_message
from .evaluation import evaluate_saved_student, summary_line, write_saved_student_results
from .hub import PublishError, publish
from .non_finite import NonFiniteLossError
from .output_dir import holds_finished_run
from .pipeline import run_distillation
from .readout import resolve_readout
from .recipes import DEFAULT_RECIPE, builtin_recipes, is_recipe_argument, read_recipe
from .setup import build_run_inputs
from .setup_steps import choose_layers_by_quality
from .teacher_cache_store import FINGERPRINT, auto_cache_dir, describe_cache, find_caches, format_bytes, remove_caches
from .teacher_training import requested_teacher_task, teacher_task
from .weights import DEFAULT_MAX_ABS_WEIGHT

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

    Command-line values override the recipe's, exactly as with any ``HfArgumentParser`` script. Without a recipe
    the fields not given keep ``DistillationConfig``'s defaults, so every option the run is refused for is one the
    user set (or the recipe they named set); with no argument at all, the quick start: the built-in
    default recipe, ``recipes.DEFAULT_RECIPE`` (:func:`named_recipe`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = named_recipe(argv)
    if recipe is not None and argv:
        argv.pop(0)
    parser = DistillationArgumentParser(DistillationConfig)
    if recipe is not None:
        parser.set_defaults(**recipe_for_command_line(read_recipe(recipe), argv))
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        config.check_models_given()  # a run builds both models: say so before anything runs
    except ValueError as error:
        if recipe is not None:
            raise
        raise ValueError(f"{error}; or start from a recipe: {PROGRAM} distill {DEFAULT_RECIPE} [--field value ...] "
                         f"(built-in: {', '.join(sorted(builtin_recipes()))})") from None
    return config


def named_recipe(argv: list[str]) -> str | None:
    """The recipe a command line runs: its first argument when that is not an option, the built-in default
    (``recipes.DEFAULT_RECIPE``) when there is no argument at all (the README's quick start), else none."""
    if not argv:
        return DEFAULT_RECIPE
    return argv[0] if is_recipe_argument(argv[0]) else None


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
    recipe = named_recipe(argv)
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


PROGRAM = "hf-pcoh"


@dataclass(frozen=True)
class Subcommand:
    """One job of ``hf-pcoh``: its one-line description and its entry point, ``argv -> exit status``."""

    summary: str
    run: Callable[[list[str]], int]


# ---- evaluate -------------------------------------------------------------------------------------------


def evaluate_parser(prog: str = f"{PROGRAM} evaluate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=prog,
        description="Measure a distilled student beside its teacher: read the run's distillation_config.json "
        "(teacher, data, layers, pooling), embed the held-out split and a labelled reference sample with both "
        "models, and write eval_results.json and eval_results.md (each metric per geometry, <name>/cosine and "
        "<name>/euclidean) into OUTPUT_DIR.",
    )
    parser.add_argument("output_dir", help="the output_dir of a distillation run (hf-pcoh distill)")
    parser.add_argument("--teacher", default=None, help="another teacher to compare with (folder or Hub id)")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="held-out rows (default: the run's)")
    parser.add_argument("--max_reference_samples", type=int, default=3000, help="labelled rows for kNN / probe")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="let the teacher/student run their own code (never taken from the folder's files)")
    return parser


def evaluate_main(argv: list[str] | None = None, prog: str = f"{PROGRAM} evaluate") -> int:
    """``hf-pcoh evaluate OUTPUT_DIR [--teacher PATH]``: eval_results.json and .md, the table and a summary
    printed; 2 with a one-line error when the run's files or options cannot be used."""
    args = evaluate_parser(prog).parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        results = evaluate_saved_student(args.output_dir, args.teacher, args.max_eval_samples,
                                         args.max_reference_samples, trust_remote_code=args.trust_remote_code)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = write_saved_student_results(args.output_dir, results)
    print(table)
    print(summary_line(results))
    return 0


# ---- publish --------------------------------------------------------------------------------------------


def publish_parser(prog: str = f"{PROGRAM} publish") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=prog,
        description="Publish a distilled student (a distillation run's output_dir) to the Hugging Face Hub with its "
        "model card: write OUTPUT_DIR/README.md and upload the folder in one commit (not checkpoint-*/, runs/, "
        "*.bin nor symbolic links). Log in first with `hf auth login` (or set HF_TOKEN).",
    )
    parser.add_argument("output_dir", help="The output_dir of a distillation run (hf-pcoh distill).")
    parser.add_argument("--repo_id", required=True, help="The Hub repo to publish to: USER/NAME or ORG/NAME.")
    parser.add_argument("--private", action="store_true",
                        help="Create the repo private (an existing repo keeps its visibility).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the files and the card that would be uploaded; write and send nothing.")
    parser.add_argument("--commit_message", default=None,
                        help="Default: names the teacher, student, data set and losses.")
    parser.add_argument("--license", default="apache-2.0", help="The model card's license (a Hub license id).")
    parser.add_argument("--max_abs_weight", type=float, default=DEFAULT_MAX_ABS_WEIGHT,
                        help="Refuse a student with a weight beyond this magnitude, or any NaN/inf weight (a run that "
                        "diverged). Default: %(default)g.")
    return parser


def parse_publish_args(argv: list[str] | None = None, prog: str = f"{PROGRAM} publish") -> argparse.Namespace:
    return publish_parser(prog).parse_args(argv)


def publish_main(argv: list[str] | None = None, prog: str = f"{PROGRAM} publish") -> int:
    """``hf-pcoh publish OUTPUT_DIR --repo_id USER/NAME [--dry_run]``: 0 when uploaded (or planned), 1 with a
    one-line error when the folder cannot be published."""
    args = parse_publish_args(argv, prog)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        plan = publish(args.output_dir, args.repo_id, private=args.private, commit_message=args.commit_message,
                       dry_run=args.dry_run, license=args.license, max_abs_weight=args.max_abs_weight)
    except (PublishError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if plan.dry_run:
        print(f"Dry run: would upload {len(plan.files)} files to {plan.repo_id} "
              f"with commit message {plan.commit_message!r}:")
        for path in plan.files:
            print(f"  {path}")
        if plan.skipped:
            print(f"Left out ({', '.join(plan.ignore_patterns)}): {len(plan.skipped)} files")
        print(f"\n----- README.md -----\n{plan.card}")
        return 0
    print(f"Uploaded {len(plan.files)} files to {plan.repo_url or plan.repo_id}")
    if plan.commit_url:
        print(f"Commit: {plan.commit_url}")
    return 0


# ---- train-teacher --------------------------------------------------------------------------------------


def train_teacher_main(argv: list[str] | None = None) -> int:
    """``hf-pcoh train-teacher [--task causal_lm] [--field value ...]``: train a teacher here, offline: the vision
    teacher of the fashion-mnist recipe (default) or an OPT language model on WordNet glosses (``--task causal_lm``)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    task = teacher_task(requested_teacher_task(argv))
    (arguments,) = HfArgumentParser(task.arguments).parse_args_into_dataclasses(args=argv)
    print(task.summary(arguments, task.train(arguments)))
    return 0


# ---- cache -----------------------------------------------------------------------------------------------


def cache_parser(prog: str = f"{PROGRAM} cache") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=prog,
        description="hf_pcoh's teacher-feature caches (--teacher_cache): list them, or remove them. They are looked "
        "for under HF_DATASETS_CACHE/hf_pcoh_teacher_features (teacher_cache: auto) and each --cache_dir; only "
        "hf_pcoh's caches are listed or removed, never any other entry of the datasets cache.",
    )
    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument("--cache_dir", action="append", default=[], metavar="DIR",
                         help="A run's --teacher_cache DIR, looked in besides the default folder (repeatable).")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{list,clear}")
    actions.add_parser("list", parents=[folders], allow_abbrev=False,
                       help="one line per cached teacher-feature set: fingerprint, teacher, layers, rows, size on disk, "
                       "created, folder")
    clear = actions.add_parser("clear", parents=[folders], allow_abbrev=False,
                               help="remove cached teacher features: all, or those a fingerprint or --teacher chooses")
    clear.add_argument("fingerprints", nargs="*", metavar="FINGERPRINT",
                       help="A cache's fingerprint, or its first digits, as `list` shows it (default: every cache).")
    clear.add_argument("--teacher", default=None,
                       help="Only the caches of this teacher, named as `list` shows it (* and ? match any characters).")
    clear.add_argument("--dry_run", action="store_true", help="Print what would be removed; remove nothing.")
    return parser


def cache_main(argv: list[str] | None = None, prog: str = f"{PROGRAM} cache") -> int:
    """``hf-pcoh cache list`` / ``hf-pcoh cache clear [FINGERPRINT ...] [--teacher NAME] [--dry_run]``: 0, or 2 with a
    one-line error for a fingerprint that is not one."""
    args = cache_parser(prog).parse_args(argv)
    cache_dirs = [auto_cache_dir(), *args.cache_dir]
    caches = find_caches(cache_dirs)
    if args.action == "list":
        for cache in caches:
            print(describe_cache(cache))
        print(f"{len(caches)} teacher-feature cache(s), {format_bytes(sum(cache.size for cache in caches))} on disk, "
              f"under {', '.join(cache_dirs)}")
        return 0
    wrong = [given for given in args.fingerprints if not FINGERPRINT.match(given.lower().ljust(24, "0"))]
    if wrong:
        print(f"error: {', '.join(map(repr, wrong))} is not a fingerprint (hexadecimal digits, as `{PROGRAM} cache "
              "list` shows them)", file=sys.stderr)
        return 2
    chosen = [cache for cache in caches if cache.matches(args.fingerprints, args.teacher)]
    if not args.dry_run:
        remove_caches(chosen)
    verb = "would remove" if args.dry_run else "removed"
    for cache in chosen:
        print(f"{verb} {describe_cache(cache)}")
    print(f"{verb} {len(chosen)} teacher-feature cache(s), {format_bytes(sum(cache.size for cache in chosen))}; "
          f"{len(caches) - len(chosen)} kept")
    return 0


# ---- the dispatcher -------------------------------------------------------------------------------------

SUBCOMMANDS: dict[str, Subcommand] = {
    "distill": Subcommand("distil a teacher into a student: [RECIPE] [--field value ...] (--help lists every field)",
                          distill_main),
    "select-layers": Subcommand("knowledge quality of every teacher layer of a recipe: the table and its plot",
                                select_layers_main),
    "evaluate": Subcommand("measure a saved run's student beside its teacher again: OUTPUT_DIR",
                           evaluate_main),
    "publish": Subcommand("write a run's model card and upload it to the Hub: OUTPUT_DIR --repo_id USER/NAME",
                          publish_main),
    "train-teacher": Subcommand("train a teacher offline: the fashion-mnist ResNet, or --task causal_lm an OPT LM",
                                train_teacher_main),
    "cache": Subcommand("the teacher-feature caches: `cache list` shows them, `cache clear [--teacher NAME]` removes them",
                        cache_main),
}


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"usage: {PROGRAM} <command> [options]   (or: python -m hf_pcoh <command> [options])", "",
             "Feature distillation for transformers models.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {command.summary}" for name, command in SUBCOMMANDS.items()]
    lines += ["", f"`{PROGRAM} <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``hf-pcoh <command> [options]``: run one subcommand, return its exit status (2 for an unknown one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"{PROGRAM} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: {unknown_name_message('command', name, list(SUBCOMMANDS))}\n\n{usage()}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[name].run(rest)


__all__ = ["SUBCOMMANDS", "cache_main", "distill_main", "evaluate_main", "main", "parse_distillation_args", "publish_main",
           "select_layers_main", "train_teacher_main"]
