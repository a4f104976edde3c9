"""Finch's fine-tuning library: data preparation, assistant-only tokenization, backends,
reporting. The entry script is training/train.py; this package holds what it calls."""
