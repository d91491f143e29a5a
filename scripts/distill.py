"""Distil a teacher into a student: ``python scripts/distill.py [RECIPE] [--field value ...]``.

With no arguments it runs the built-in ``minilm-wordnet`` recipe offline. ``--help`` lists every field.
Works the same under ``accelerate launch scripts/distill.py ...``.
"""

import sys

from hf_pcoh.cli import distill_main

if __name__ == "__main__":
    sys.exit(distill_main())
