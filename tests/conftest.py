"""Shared fixtures. Everything runs offline on the embedded SmolLM2-135M-Instruct model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Nothing may reach the Hub in tests: weights and data come from the embedded model only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    from chat_runtime import embedded

    return embedded.gguf_path()


@pytest.fixture(scope="session")
def embedded_hf() -> Path:
    from chat_runtime import embedded

    return embedded.hf_dir()


@pytest.fixture(scope="session")
def llamacpp_service(embedded_gguf):
    from chat_runtime import ChatService, ModelSpec

    return ChatService.from_spec(ModelSpec(gguf=str(embedded_gguf)))


@pytest.fixture(scope="session")
def transformers_service(embedded_hf):
    from chat_runtime import ChatService, ModelSpec

    return ChatService.from_spec(ModelSpec(base=str(embedded_hf)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Wait until `url` answers (or the process dies, or time runs out)."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@pytest.fixture
def start_app():
    """Start `python app.py` from a folder as a subprocess on a free port; stop it afterwards."""
    procs: list[subprocess.Popen] = []

    def start(app_dir: Path, env: dict[str, str] | None = None) -> str:
        port = free_port()
        full_env = {**os.environ, "GRADIO_SERVER_PORT": str(port), **(env or {})}
        log = open(Path(app_dir).parent / f"app-{port}.log", "w") if os.access(Path(app_dir).parent, os.W_OK) else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=app_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: run `bash scripts/setup.sh --test` (it installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def load_app(app_file: Path, module_name: str):
    """Import an app.py as `python app.py` would build it (its `demo` at module level)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, app_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chatbot():
    """The chatbot app running in this process on a free port: (module, url)."""
    from chat_runtime import limits

    module = load_app(ROOT / "chatbot_app" / "app.py", "finch_chatbot_app")
    port = free_port()
    module.demo.queue(max_size=limits.QUEUE_SIZE).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


@pytest.fixture(scope="session")
def storymaker():
    """The storymaker app running in this process on a free port, launched as its __main__ does."""
    from chat_runtime import limits

    module = load_app(ROOT / "storymaker_app" / "app.py", "finch_storymaker_app")
    port = free_port()
    module.demo.queue(max_size=limits.QUEUE_SIZE).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                         theme=module.THEME, css=module.CSS)
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def wait_until_idle():
    """Wait until a ChatService has no generation running; return the seconds it took."""

    def wait(service, limit: float = 5.0) -> float:
        started = time.monotonic()
        while service.active and time.monotonic() - started < limit:
            time.sleep(0.02)
        return time.monotonic() - started

    return wait


@pytest.fixture(scope="session")
def launch_app():
    """`launch_app(folder, env, log) -> (process, port)`: `python app.py` started in `folder` (an app
    folder or a Space bundle) on a free port, as a user or a Space runs it. The caller stops it
    (terminate), so a module-scoped server can be shared by that module's tests."""

    def launch(folder: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                env={**os.environ, "GRADIO_SERVER_PORT": str(port), **env})
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", proc)
        except Exception:
            proc.kill()
            raise
        return proc, port

    return launch
