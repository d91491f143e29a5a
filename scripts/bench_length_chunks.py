"""One text training step with the whole batch in one forward against length-sorted chunks
(``student_forward_chunk_size``), B = 64 to 1,024, on real glosses: writes benchmarks/results/length_chunks.json and
renders docs/benchmarks.md's table (benchmarks.length_chunks).

    python scripts/bench_length_chunks.py
    python scripts/bench_length_chunks.py --batch_sizes 64 256 --repeats 1 --json /tmp/chunks.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# benchmarks/ is not installed with hf_pcoh: import it from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.length_chunks import RESULT, ChunkBenchOptions, measure, table  # noqa: E402
from benchmarks.rendered_tables import render_into_documents  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    defaults = ChunkBenchOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=defaults.batch_sizes)
    parser.add_argument("--chunk_size", type=int, default=defaults.chunk_size)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed steps (the best is reported)")
    parser.add_argument("--json", default=str(RESULT),
                        help="result file; the documents are rendered only when it is the committed one")
    args = parser.parse_args(argv)
    options = ChunkBenchOptions(batch_sizes=args.batch_sizes, chunk_size=args.chunk_size, repeats=args.repeats)
    result = measure(options)
    with open(args.json, "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=1)
    print(table(result))
    if os.path.abspath(args.json) == os.path.abspath(RESULT):
        print(render_into_documents({"length_chunks": table(result)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
