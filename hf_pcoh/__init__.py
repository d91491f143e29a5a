"""hf_pcoh: feature distillation for transformers models (perception coherence and friends)."""

__version__ = "0.1.0"
