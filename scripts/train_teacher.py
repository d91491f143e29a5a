"""Train the vision teacher of the fashion-mnist recipe: ``python scripts/train_teacher.py [--field value ...]``.

The same as the installed ``hf-pcoh train-teacher``; the logic is ``hf_pcoh.commands.train_teacher_main``.
"""

import sys

from hf_pcoh.commands import train_teacher_main

if __name__ == "__main__":
    sys.exit(train_teacher_main())
