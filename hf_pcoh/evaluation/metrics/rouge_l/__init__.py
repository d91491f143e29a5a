"""Holds rouge_l.py, an ``evaluate`` metric script; a package only so that it ships with hf_pcoh."""
