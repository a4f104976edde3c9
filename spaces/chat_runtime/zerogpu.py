"""ZeroGPU, the Hub's shared GPUs for Spaces: a GPU is attached only while a function decorated
with the `spaces` package's `@spaces.GPU` runs, so the transformers engine's generation runs under
it there. Anywhere else nothing is decorated and `spaces` is never imported (it need not be
installed). The repository's own `spaces/` folder cannot stand in for that package: it is not in a
Space bundle (space_deploy.bundle refuses one) and raises ImportError when imported from a checkout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from . import limits

F = TypeVar("F", bound=Callable)
# The Hub sets this variable on ZeroGPU hardware (the `spaces` package reads the same one).
ZERO_GPU_VARIABLE = "SPACES_ZERO_GPU"


def on_zero_gpu() -> bool:
    """Whether this process runs on a ZeroGPU Space."""
    return os.environ.get(ZERO_GPU_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def prepare() -> None:
    """Import `spaces` before torch touches CUDA, as ZeroGPU needs (no-op elsewhere)."""
    if on_zero_gpu():
        import spaces  # noqa: F401  Hugging Face's package, installed on ZeroGPU Spaces


def gpu_task(fn: F) -> F:
    """`fn` under `@spaces.GPU` on ZeroGPU (a GPU for at most FINCH_ZEROGPU_SECONDS per call);
    `fn` itself anywhere else."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=limits.ZEROGPU_SECONDS)(fn)
