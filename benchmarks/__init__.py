"""Benchmarks and measurements of hf_pcoh: the tooling that produced the figures of ``docs/benchmarks.md``.

Nothing here is part of the installed library (the wheel ships ``hf_pcoh`` only, as peft keeps
``method_comparison/`` beside ``peft/``); run it from a checkout of the repository, through the scripts:

* :mod:`benchmarks.quality`: every distillation loss on the real text and vision benchmarks, beside a
  no-teacher cross-entropy student and the sentence-transformers peer (:mod:`benchmarks.peers`), over
  several seeds (``python scripts/benchmark.py``);
* :mod:`benchmarks.throughput`: samples/s of a distillation step beside a teacher forward and a
  plain-MSE student step, and :mod:`benchmarks.cache_epochs`: an epoch trained from the teacher-feature
  cache beside plain student training (``python scripts/bench_throughput.py``);
* :mod:`benchmarks.loss_cost`: time and peak memory of each loss's forward + backward, beside the naive
  perception coherence (``python scripts/bench_losses.py``);
* :mod:`benchmarks.end_to_end`: a whole distillation job, from nothing loaded to a saved student, beside
  sentence-transformers' own distillation recipe on the same job (``python scripts/bench_end_to_end.py``).

Results of full runs are kept in ``benchmarks/results/``.
"""
