"""Knowledge quality of every teacher layer: ``python scripts/select_layers.py [RECIPE] [--field value ...]``.

Prints the per-layer table (separation S, information I, efficiency E, Q = S + sqrt(I E)) with the
top-k layers marked, and saves the plot to ``OUTPUT_DIR/layer_quality.png``.
"""

import sys

from hf_pcoh.cli import select_layers_main

if __name__ == "__main__":
    sys.exit(select_layers_main())
