"""Build a Space bundle: the app's folder plus the shared runtime, and nothing importable as
`spaces` or `gguf` (Gradio imports `spaces`, HF's ZeroGPU helper, on a Space: a folder of that
name in the bundle would break every event)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import SpaceCard

ROOT = Path(__file__).resolve().parents[2]
APPS = {"chatbot": ROOT / "chatbot_app", "storymaker": ROOT / "storymaker_app"}
RUNTIME = ROOT / "spaces" / "chat_runtime"
SHADOWING_NAMES = {"spaces", "gguf"}  # import names of packages the Space runs with
# llama.cpp built for any x86-64 CPU with llama.cpp's own options for that: a Space builds its
# packages on one machine and may run on another CPU (a -march=native build can die there with
# "illegal instruction"), and gcc 12's -march=native miscompiles AMX. The library uses baseline
# x86-64; the matrix code is built once per CPU generation and chosen at run time
# (chat_runtime.engines.cpu_variants). The same build installs llama.cpp's own server with its
# library (LLAMA_TOOLS_INSTALL), for several users at once; llama-cpp-python's multimodal library
# is left to that build (LLAVA_BUILD off: built twice, CMake refuses), and the server needs no TLS.
# Per-requirement config settings need pip 23.1 or newer.
# setup.sh --test builds this very line into the wheel the tests install as a Space would.
LLAMA_CPP_PORTABLE_ARGS = ";".join(
    [
        "-DGGML_NATIVE=OFF;-DGGML_BACKEND_DL=ON;-DGGML_CPU_ALL_VARIANTS=ON",
        "-DLLAMA_BUILD_TOOLS=ON;-DLLAMA_BUILD_SERVER=ON;-DLLAMA_TOOLS_INSTALL=ON;-DLLAVA_BUILD=OFF;-DLLAMA_OPENSSL=OFF",
    ]
)
LLAMA_CPP_REQUIREMENT = f'llama-cpp-python==0.3.36 --config-settings=cmake.args="{LLAMA_CPP_PORTABLE_ARGS}"'
# What a Space installs on top of Gradio, by what it serves. Only a transformers Space needs torch
# (the app folder's own requirements.txt); a GGUF or server Space is a CPU Space through and through.
SERVER_REQUIREMENTS = (
    "# The model runs on the inference server (FINCH_SERVER_URL): no torch here.\nhuggingface_hub==2.4.0\n"
)
GGUF_REQUIREMENTS = (
    "# The model is a GGUF run by llama.cpp on the CPU (FINCH_GGUF): no torch here. transformers is\n"
    "# the chat template's renderer (chat_runtime.templating), which runs without torch; httpx talks\n"
    "# to llama.cpp's server (Gradio has it too).\n"
    f"huggingface_hub==2.4.0\ntransformers==5.23.0\nhttpx==0.29.0\n{LLAMA_CPP_REQUIREMENT}\n"
)
# Hardware a Space of each kind asks for unless told otherwise (deploy.py --hardware).
DEFAULT_HARDWARE = {"transformers": "t4-small", "llamacpp": "cpu-basic", "server": "cpu-basic"}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "flagged", ".gradio")


def space_kind(variables: dict[str, str]) -> str:
    """What the Space will run: "server" (an inference server), "llamacpp" (a GGUF on llama.cpp: the
    server its build installs, as spec.resolved picks) or "transformers"."""
    if variables.get("FINCH_SERVER_URL"):
        return "server"
    return "llamacpp" if variables.get("FINCH_GGUF") else "transformers"


def assemble(app: str, dest: Path, variables: dict[str, str], hardware: str | None = None) -> Path:
    """Write the bundle for `app` to `dest` atomically (a half-written bundle never sits there);
    `hardware` is what the card suggests (default: DEFAULT_HARDWARE for the Space's kind)."""
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}: choose one of {', '.join(APPS)}")
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(APPS[app], tmp, dirs_exist_ok=True, ignore=_IGNORE)
        shutil.copytree(RUNTIME, tmp / RUNTIME.name, ignore=_IGNORE)
        kind = space_kind(variables)
        compares_gguf = variables.get("FINCH_COMPARE", "").lower().endswith(".gguf")  # compare mode's second model
        if kind == "llamacpp" or (kind == "server" and compares_gguf):
            (tmp / "requirements.txt").write_text(GGUF_REQUIREMENTS)
        elif kind == "server":
            (tmp / "requirements.txt").write_text(SERVER_REQUIREMENTS)
        elif compares_gguf:
            with (tmp / "requirements.txt").open("a") as requirements:
                requirements.write(f"{LLAMA_CPP_REQUIREMENT}\n")
        _set_card(tmp / "README.md", variables, hardware or DEFAULT_HARDWARE[kind])
        check_bundle(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _set_card(card_path: Path, variables: dict[str, str], hardware: str) -> None:
    """List the served models in the Space card, so the Hub links the Space to them, and suggest
    the hardware it runs on (what a duplicate of the Space asks for)."""
    models = [v for k in ("FINCH_MODEL", "FINCH_ADAPTER") if (v := variables.get(k)) and not Path(v).exists()]
    gguf = variables.get("FINCH_GGUF", "")
    if gguf.count("/") >= 2 and not Path(gguf).exists():
        models.append("/".join(gguf.split("/")[:2]))
    card = SpaceCard.load(card_path)
    card.data.suggested_hardware = hardware
    if models:
        card.data.models = models
    card.save(card_path)


def check_bundle(folder: Path) -> None:
    """Refuse a bundle with a top-level module that would shadow `spaces` or `gguf`."""
    for entry in Path(folder).iterdir():
        if entry.stem in SHADOWING_NAMES:
            raise ValueError(
                f"the bundle has {entry.name!r} at its top level: it would shadow the {entry.stem!r} package"
            )
    for required in ("app.py", "README.md", "requirements.txt", RUNTIME.name):
        if not (Path(folder) / required).exists():
            raise ValueError(f"the bundle lacks {required}")
