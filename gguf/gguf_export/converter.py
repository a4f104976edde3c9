"""llama.cpp's own converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`), run as
subprocesses.

They come from the llama-cpp-python source distribution that matches the installed runtime
(fetched through pip into Finch's cache, extracted once) or from a user's llama.cpp checkout. They
must run with their own gguf-py on PYTHONPATH: the PyPI `gguf` that transformers uses is older than
the converters (it lacks LazyChunkedTensor), so they cannot run in this process.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ExportError

log = logging.getLogger(__name__)

# What we take from the sdist (3.9k files): the two converters, their model classes and gguf-py.
_KEEP = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
_VENDOR = "vendor/llama.cpp/"


@dataclass(frozen=True)
class Converter:
    """A llama.cpp tree holding the converters, and where it came from (for cards and errors)."""

    root: Path
    origin: str  # "llama-cpp-python 0.3.36 sdist" or "llama.cpp checkout /path"

    def env(self) -> dict[str, str]:
        """The environment the converters run in: their own gguf-py first, the Hub token kept."""
        path = os.pathsep.join(p for p in (str(self.root / "gguf-py"), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def runtime_version() -> str:
    """The installed llama-cpp-python version: the converters must match the runtime that loads the files."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise ExportError("llama-cpp-python is not installed: run `bash scripts/setup.sh`") from None


def _check_tree(root: Path, origin: str) -> Converter:
    missing = [
        name for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py") if not (root / name).exists()
    ]
    if missing:
        raise ExportError(
            f"{origin} at {root} lacks {', '.join(missing)}: point --llama_cpp_dir at the root of a llama.cpp checkout"
        )
    return Converter(root, origin)


def _download_sdist(version: str, dest: Path) -> Path:
    """pip download the llama-cpp-python sdist (the registry is all Finch needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        f"llama-cpp-python=={version}",
        "-d",
        str(dest),
    ]
    log.info("downloading llama.cpp's converters (llama-cpp-python %s sources, ~77 MB) into %s", version, dest)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ExportError(
            f"could not fetch llama.cpp's converter ({last}). With network access run "
            f"`{' '.join(cmd[:2])} -m pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d {dest}`, "
            "or pass --llama_cpp_dir /path/to/llama.cpp (a checkout of llama.cpp)."
        )
    return found[0]


def _extract(sdist: Path, target: Path) -> None:
    """Extract the converters from the sdist into `target`, whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the user's checkouts
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                rel = member.name.split(_VENDOR, 1)[-1] if _VENDOR in member.name else None
                if rel and rel.startswith(_KEEP) and (member.isfile() or member.isdir()):
                    member.name = rel
                    members.append(member)
            tar.extractall(tmp, members=members, filter="data")
        _check_tree(tmp, "the llama-cpp-python sdist")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "convert_hf_to_gguf.py").is_file():  # not a concurrent extraction that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_converter(llama_cpp_dir: str | None, cache: Path) -> Converter:
    """The converters: a user's llama.cpp checkout, else the cached sdist matching the runtime."""
    if llama_cpp_dir:
        return _check_tree(Path(llama_cpp_dir).expanduser().resolve(), "the llama.cpp checkout")
    version = runtime_version()
    target = cache / f"llama.cpp-{version}"
    if not (target / "convert_hf_to_gguf.py").is_file():
        sdist = cache / "sdist" / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            sdist = _download_sdist(version, cache / "sdist")
        log.info("extracting llama.cpp's converters from %s (once)", sdist.name)
        _extract(sdist, target)
    return Converter(target, f"llama-cpp-python {version} sdist")


def supported_architectures(converter: Converter) -> set[str]:
    """Architectures (config.json `architectures`) the converter knows, asked from the converter itself."""
    proc = subprocess.run(
        [sys.executable, str(converter.root / "convert_hf_to_gguf.py"), "--print-supported-models"],
        capture_output=True,
        text=True,
        env=converter.env(),
    )
    names, in_text = set(), False
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.split(":", 2)[-1] if line.startswith(("ERROR:", "INFO:")) else line
        if line.strip().endswith("models:"):
            in_text = line.strip().startswith("TEXT")
        elif in_text and line.strip().startswith("- "):
            names.add(line.strip()[2:])
    return names


# The converters' own failure lines, and what the user should do about each.
_HINTS: Sequence[tuple[str, str]] = (
    (
        r"Model (\S+) is not supported|Architecture '?(\S+?)'? not supported",
        "llama.cpp's converter ({origin}) cannot convert this architecture. Use a base it supports (Llama, Qwen2/3, "
        "Mistral, Gemma, Phi-3, SmolLM, ...; `python convert_hf_to_gguf.py --print-supported-models` lists them), or a "
        "newer llama.cpp: --llama_cpp_dir /path/to/llama.cpp",
    ),
    (r"No space left on device", "the disk is full: free some space or choose another --output_dir"),
    (
        r"No module named '?(\S+?)'?$",
        "the converter needs a package this environment lacks: pip install it "
        "(llama.cpp's requirements), or re-run `bash scripts/setup.sh`",
    ),
)


def failure_line(output: str, origin: str) -> str:
    """One line out of a converter's output: its own error, then what to do."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:") or re.match(r"^\w+(Error|Exception)\b", line)]
    own = (errors or lines or ["no output"])[-1]
    own = re.sub(r"^ERROR:[\w.-]+:", "", own).strip()[:300]
    for pattern, hint in _HINTS:
        if any(re.search(pattern, line) for line in lines[-40:]):
            return f"{own} -> {hint.format(origin=origin)}"
    return f"{own} -> run again with --verbose to see the converter's full output"


def run(converter: Converter, script: str, args: Sequence[str], what: str, verbose: bool) -> None:
    """Run one converter script; raise ExportError with its own error in one line when it fails."""
    cmd = [sys.executable, str(converter.root / script), *args]
    log.debug("running %s", " ".join(cmd))
    if verbose:
        proc = subprocess.run(cmd, env=converter.env(), stdout=sys.stderr, stderr=subprocess.STDOUT, text=True)
        output = ""
    else:
        proc = subprocess.run(cmd, env=converter.env(), capture_output=True, text=True)
        output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if verbose:
            raise ExportError(f"{what} failed (exit code {proc.returncode}): the converter's own error is above")
        raise ExportError(f"{what} failed: {failure_line(output, converter.origin)}")
