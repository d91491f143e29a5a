"""Train a teacher here, offline: ``python scripts/train_teacher.py [--task causal_lm] [--field value ...]``.

Without ``--task`` (or with ``--task image_classification``): the small ResNet vision teacher of the fashion-mnist
recipe. With ``--task causal_lm``: a small OPT causal language model on WordNet glosses with the all-MiniLM-L6-v2
tokenizer, saved with ``teacher_results.json`` (held-out perplexity beside a unigram baseline); the teacher of decoder
students distilled as language models. ``--task causal_lm --help`` lists its options.

The same as the installed ``hf-pcoh train-teacher``; the logic is ``hf_pcoh.cli.train_teacher_main``.
"""

import sys

from hf_pcoh.cli import train_teacher_main

if __name__ == "__main__":
    sys.exit(train_teacher_main())
