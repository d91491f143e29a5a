"""hf_pcoh's version, in a module that imports nothing, so any module can read it without import cycles."""

__version__ = "0.1.0"
