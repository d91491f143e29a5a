"""hf_pcoh end to end beside the sentence-transformers recipe, on the same distillation job, on this machine.

    python scripts/bench_end_to_end.py                          # 20,000 glosses, batch 64: the recipe vs hf_pcoh as the
                                                                # minilm-wordnet recipe runs it (about 10 min on 2 CPU cores)
    python scripts/bench_end_to_end.py --variants hf_pcoh hf_pcoh_cache_auto   # also the teacher live
    python scripts/bench_end_to_end.py --threads 2 --rounds 2   # ABBA order, median wall time
    python scripts/bench_end_to_end.py --smoke                  # tiny sizes, about a minute

Prints a markdown table (wall time, samples/s, the ratio to the recipe, agreement with the teacher) and
writes the JSON to benchmarks/results/end_to_end.json; ``--help`` lists the options and
:mod:`benchmarks.end_to_end` says what each job runs.
"""

import logging
import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import HfArgumentParser  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from benchmarks.end_to_end import EndToEndOptions, run_end_to_end  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    transformers_logging.set_verbosity_error()
    (options,) = HfArgumentParser(EndToEndOptions).parse_args_into_dataclasses()
    report = run_end_to_end(options, progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(report.setting)
    print()
    print(report.table)
    print(f"\nwritten: {report.output}")
