"""The installed command: ``hf-pcoh distill | select-layers | evaluate | publish | train-teacher`` (also
``python -m hf_pcoh``).

One console script with a subcommand per job, as ``accelerate`` and ``huggingface-cli`` have, so a user
who installed the wheel needs nothing from the repository's ``scripts/`` (which stay as thin wrappers
around the same functions). ``distill`` and ``select-layers`` take a recipe and ``--field value``
overrides (:mod:`hf_pcoh.cli`); ``evaluate`` measures a saved run again; ``publish`` writes its model
card and uploads it; ``train-teacher`` trains a teacher offline (the fashion-mnist recipe's vision teacher, or
``--task causal_lm`` an OPT language model on WordNet glosses). Each
subcommand's ``--help`` lists its options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from transformers import HfArgumentParser

from . import __version__
from .cli import distill_main, select_layers_main
from .errors import unknown_name_message
from .evaluation import evaluate_saved_student, summary_line, write_saved_student_results
from .hub import PublishError, publish
from .teacher_training import requested_teacher_task, teacher_task
from .weights import DEFAULT_MAX_ABS_WEIGHT

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


__all__ = ["SUBCOMMANDS", "evaluate_main", "main", "publish_main", "train_teacher_main"]
