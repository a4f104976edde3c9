"""GGUF files: where one comes from (a path or the Hub) and whether it is whole. Used by the
llama.cpp engine and by the GGUF export, so neither reaches into the other."""

from __future__ import annotations

from pathlib import Path


def resolve_gguf(source: str) -> str:
    """A local GGUF path, or `owner/repo/file.gguf` downloaded from the Hub into its cache."""
    path = Path(source).expanduser()
    if path.is_file():
        return str(path)
    parts = source.split("/")
    if len(parts) >= 3 and source.endswith(".gguf") and not path.is_absolute():
        from huggingface_hub import hf_hub_download

        return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
    raise FileNotFoundError(f"GGUF {source!r} not found: give a local .gguf path or `owner/repo/file.gguf` on the Hub")


def check_gguf_header(path: str) -> None:
    """Fail with a clear message for a file that is not a whole GGUF (llama.cpp only says 'failed')."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}); re-download or re-export it")
