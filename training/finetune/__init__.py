"""Finch's fine-tuning library: data preparation, assistant-only tokenization, backends,
reporting, and the run itself. The entry script is training/train.py; a notebook calls the same
function:

    from finetune import load_config, train
    train(load_config("training/recipes/cpu-smollm2-sample.yaml", max_steps=20))
"""

from .config import Config, load_config

__all__ = ["Config", "load_config", "train"]


def __getattr__(name: str):
    # The run pulls in torch, transformers and trl: import it only when it is asked for.
    if name == "train":
        from .stages import train

        return train
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
