"""``python -m hf_pcoh <command> [options]``: the same command as the installed ``hf-pcoh``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
