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
LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
# A Space that talks to an inference server loads no model: Gradio (and its httpx) is all it needs.
SERVER_REQUIREMENTS = (
    "# The model runs on the inference server (FINCH_SERVER_URL): no torch here.\nhuggingface_hub==2.4.0\n"
)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "flagged", ".gradio")


def assemble(app: str, dest: Path, variables: dict[str, str]) -> Path:
    """Write the bundle for `app` to `dest` atomically (a half-written bundle never sits there)."""
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}: choose one of {', '.join(APPS)}")
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(APPS[app], tmp, dirs_exist_ok=True, ignore=_IGNORE)
        shutil.copytree(RUNTIME, tmp / RUNTIME.name, ignore=_IGNORE)
        if variables.get("FINCH_GGUF"):
            with open(tmp / "requirements.txt", "a") as f:
                f.write(f"{LLAMA_CPP_REQUIREMENT}\n")
        if variables.get("FINCH_SERVER_URL"):
            (tmp / "requirements.txt").write_text(SERVER_REQUIREMENTS)
        _set_card_models(tmp / "README.md", variables)
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


def _set_card_models(card_path: Path, variables: dict[str, str]) -> None:
    """List the served models in the Space card, so the Hub links the Space to them."""
    models = [v for k in ("FINCH_MODEL", "FINCH_ADAPTER") if (v := variables.get(k)) and not Path(v).exists()]
    gguf = variables.get("FINCH_GGUF", "")
    if gguf.count("/") >= 2 and not Path(gguf).exists():
        models.append("/".join(gguf.split("/")[:2]))
    if models:
        card = SpaceCard.load(card_path)
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
