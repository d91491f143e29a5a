"""Publish a distilled student with its model card: ``python scripts/publish.py DIR --repo_id USER/NAME``.

The same as the installed ``hf-pcoh publish DIR --repo_id USER/NAME``: writes ``DIR/README.md`` (the model
card) and uploads the folder in one commit; ``--dry_run`` prints the files and the card that would be
uploaded, and writes and sends nothing. The logic is ``hf_pcoh.cli.publish_main`` and :mod:`hf_pcoh.hub`.
"""

from __future__ import annotations

import argparse
import sys

from hf_pcoh.cli import parse_publish_args, publish_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_publish_args(argv, prog="scripts/publish.py")


def main(argv: list[str] | None = None) -> int:
    return publish_main(argv, prog="scripts/publish.py")


if __name__ == "__main__":
    sys.exit(main())
