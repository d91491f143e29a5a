"""Publish a distilled student with its model card: ``python scripts/publish.py DIR --repo_id USER/NAME``.

Writes ``DIR/README.md`` (the model card: teacher, recipe, results, plots, usage, citations) and uploads
the folder in one commit (not ``checkpoint-*/``, ``runs/``, ``*.bin`` nor symbolic links). ``--dry_run``
prints the files and the card that would be uploaded, and writes and sends nothing. Log in first with
``hf auth login`` (or set ``HF_TOKEN``). All the logic is in :mod:`hf_pcoh.hub`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hf_pcoh.hub import PublishError, publish


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Publish a distilled student (a distillation run's output_dir) "
                                     "to the Hugging Face Hub with its model card.")
    parser.add_argument("output_dir", help="The output_dir of a distillation run (scripts/distill.py).")
    parser.add_argument("--repo_id", required=True, help="The Hub repo to publish to: USER/NAME or ORG/NAME.")
    parser.add_argument("--private", action="store_true",
                        help="Create the repo private (an existing repo keeps its visibility).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the files and the card that would be uploaded; write and send nothing.")
    parser.add_argument("--commit_message", default=None,
                        help="Default: names the teacher, student, data set and losses.")
    parser.add_argument("--license", default="apache-2.0", help="The model card's license (a Hub license id).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        plan = publish(args.output_dir, args.repo_id, private=args.private, commit_message=args.commit_message,
                       dry_run=args.dry_run, license=args.license)
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


if __name__ == "__main__":
    sys.exit(main())
