"""Quantize an f16 GGUF in-process through llama-cpp-python (the library Finch's setup built, so no
llama.cpp binaries are needed), and check a GGUF the way the runtime will load it."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ExportError
from .quants import QUANTS

log = logging.getLogger(__name__)


@contextmanager
def captured_native_stderr(enabled: bool = True) -> Iterator[list[str]]:
    """Collect what native code writes to fd 2 (llama.cpp prints a line per tensor) into a list."""
    lines: list[str] = []
    if not enabled:
        yield lines
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", errors="replace").splitlines())


def quantize(src: Path, dst: Path, quant: str, verbose: bool = False) -> int:
    """Write `src` (an f16 GGUF) quantized to `quant` at `dst`; return how many tensors fell back
    to another type (llama.cpp does that for rows whose width its k-quants can't split)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant].ftype)
    with captured_native_stderr(not verbose) as lines:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        if any("No space left" in line for line in lines) or _short_of_space(dst.parent, src):
            raise OSError(28, "No space left on device", str(dst))  # becomes a DiskFullError with numbers
        reason = next((line.strip() for line in reversed(lines) if "failed" in line), f"exit code {rc}")
        raise ExportError(f"llama.cpp could not quantize {src.name} to {quant}: {reason[:300]}")
    return sum("falling back" in line for line in lines)


def _short_of_space(folder: Path, src: Path) -> bool:
    import shutil

    return shutil.disk_usage(folder).free < src.stat().st_size // 4  # the smallest quant we write


def inspect_gguf(path: Path) -> dict[str, str]:
    """Load a GGUF's header and vocabulary with llama.cpp (as the runtime will) and return its
    metadata; ExportError when the file is not a whole GGUF."""
    from llama_cpp import Llama

    from chat_runtime.gguf_files import check_gguf_header

    try:
        check_gguf_header(str(path))
        with captured_native_stderr():
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, OSError) as err:
        raise ExportError(f"{path} is not a usable GGUF (truncated or corrupt?): {err}") from None
    meta = dict(llm.metadata)
    llm.close()
    return meta


def check_chat_metadata(path: Path, template: str | None, eos_token_id: int | None) -> dict[str, str]:
    """Prove the GGUF carries the tokenizer's chat template and EOS: without them llama.cpp apps fall
    back to another prompt format or never stop (see DESIGN, section 5)."""
    meta = inspect_gguf(path)
    if template and meta.get("tokenizer.chat_template") != template:
        raise ExportError(
            f"{path.name} lost the chat template in conversion: its tokenizer.chat_template differs from the tokenizer's"
        )
    if eos_token_id is not None and meta.get("tokenizer.ggml.eos_token_id") != str(eos_token_id):
        raise ExportError(
            f"{path.name} has EOS id {meta.get('tokenizer.ggml.eos_token_id')}, the tokenizer has {eos_token_id}"
        )
    return meta
