"""Layers point one way: apps (Gradio) -> runtime (no Gradio) -> libraries; training and the GGUF
tools may use the runtime, never a serving engine's internals, and the runtime uses neither."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "spaces" / "chat_runtime"
APPS = [ROOT / "chatbot_app" / "app.py", ROOT / "storymaker_app" / "app.py"]


def imported(path: Path) -> set[str]:
    """Every module name a file imports, anywhere in it (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def offenders(paths, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(n for n in imported(path) if n.split(".")[0] in forbidden or n.startswith(forbidden))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_the_runtime_never_imports_gradio_or_the_training_and_export_code():
    assert offenders(RUNTIME.rglob("*.py"), ("gradio", "finetune", "gguf_export", "space_deploy")) == {}


@pytest.mark.parametrize("app", APPS, ids=lambda p: p.parent.name)
def test_an_app_never_imports_a_model_library(app):
    assert offenders([app], ("transformers", "torch", "peft", "llama_cpp", "bitsandbytes")) == {}


def test_training_and_export_never_reach_into_a_serving_engine():
    code = [*(ROOT / "training").rglob("*.py"), *(ROOT / "gguf").rglob("*.py")]
    assert offenders(code, ("chat_runtime.engines.",)) == {}  # the engine table (chat_runtime.engines) is public
