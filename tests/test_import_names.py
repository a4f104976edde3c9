"""`spaces` and `gguf` are import names of packages this product runs with (HF's ZeroGPU helper,
llama.cpp's gguf-py). Our folders of those names must never shadow them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _resolve(name: str, cwd) -> str:
    code = f"import importlib.util as u; s = u.find_spec({name!r}); print(s.origin if s else 'absent')"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_gguf_is_llamacpp_gguf_py_even_from_the_repo_root():
    origin = _resolve("gguf", ROOT)
    assert "site-packages" in origin and not origin.startswith(str(ROOT / "gguf"))


def test_spaces_is_not_our_folder_from_the_repo_root():
    code = "import spaces; print(spaces.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert ("ImportError" in proc.stderr and "not Hugging Face's" in proc.stderr) or "site-packages" in proc.stdout


def test_gradio_sees_no_spaces_package_in_the_app_process():
    code = "import gradio.blocks as b; print(b.spaces)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "None"


def test_the_runtime_has_its_own_import_name():
    origin = _resolve("chat_runtime", "/")
    assert origin == str(ROOT / "spaces" / "chat_runtime" / "__init__.py")
