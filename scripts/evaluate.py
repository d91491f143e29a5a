"""Measure a distilled student beside its teacher: ``python scripts/evaluate.py OUTPUT_DIR [--teacher PATH]``.

Reads the run's ``distillation_config.json`` (teacher, data, layers, pooling), embeds the held-out split
and a labelled reference sample with both models, and writes ``eval_results.json`` and ``eval_results.md``
into OUTPUT_DIR (the table shows each metric per geometry, ``<name>/cosine`` and ``<name>/euclidean``,
without the unsuffixed aliases). The logic is ``hf_pcoh.evaluation.evaluate_saved_student``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hf_pcoh.artifacts import EVAL_RESULTS_FILE, write_json
from hf_pcoh.evaluation import evaluate_saved_student, format_comparison_table, summary_line, without_aliases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the output_dir of a distillation run (scripts/distill.py)")
    parser.add_argument("--teacher", default=None, help="another teacher to compare with (folder or Hub id)")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="held-out rows (default: the run's)")
    parser.add_argument("--max_reference_samples", type=int, default=3000, help="labelled rows for kNN / probe")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        results = evaluate_saved_student(args.output_dir, args.teacher, args.max_eval_samples, args.max_reference_samples)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json(os.path.join(args.output_dir, EVAL_RESULTS_FILE), results)
    table = format_comparison_table({role: without_aliases(results[role]) for role in ("teacher", "student")})
    with open(os.path.join(args.output_dir, "eval_results.md"), "w", encoding="utf-8") as stream:
        stream.write(table + "\n")
    print(table)
    print(summary_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
