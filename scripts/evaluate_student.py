"""Measure a distilled student beside its teacher: ``python scripts/evaluate_student.py OUTPUT_DIR [--teacher PATH]``.

The same as the installed ``hf-pcoh evaluate OUTPUT_DIR``: reads the run's ``distillation_config.json``
(teacher, data, layers, pooling), embeds the held-out split and a labelled reference sample with both
models, and writes ``eval_results.json`` and ``eval_results.md`` into OUTPUT_DIR. The logic is
``hf_pcoh.cli.evaluate_main``.
"""

from __future__ import annotations

import sys

from hf_pcoh.cli import evaluate_main


def main(argv: list[str] | None = None) -> int:
    return evaluate_main(argv, prog="scripts/evaluate_student.py")


if __name__ == "__main__":
    sys.exit(main())
