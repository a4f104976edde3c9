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
# The suite runs in one process per core (pytest-xdist, pyproject's addopts), so each process and
# what it starts (train.py, the apps, llama.cpp) computes on its share of the cores: two processes
# of two torch threads each on two cores ran 4-5x slower than one, their threads spinning on barriers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
    os.environ.setdefault("FINCH_THREADS", _THREADS)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
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
def llama3_tokenizer(embedded_hf, meta_llama3):
    """The embedded tokenizer with Llama 3's special tokens and chat template (Meta's, as llama.cpp ships it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_hf)
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
        }
    )
    tok.chat_template = meta_llama3.chat_template
    return tok


def run_train(*args, env=None, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    """`python training/train.py ARGS` from the repo root, its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        **kwargs,
    )


def kill_then_resume(
    args: list[str], run_dir: Path, checkpoint: int, resume_from: int | None = None, timeout: float = 600
) -> tuple[subprocess.CompletedProcess, dict[int, float]]:
    """Start train.py, SIGKILL it once `checkpoint-N` is on disk, then run the same command again (a
    resume). Returns (the resumed process, {step: loss} as the killed run logged them up to checkpoint-N).

    With `resume_from=M`, checkpoint-N goes with the kill, as if the kill had come before it was
    written: the resume starts at checkpoint-M and retakes steps M+1..N, which the killed run took
    uninterrupted. Comparing the two logs needs no third, reference run."""
    import json
    import shutil
    import signal

    cmd = [sys.executable, str(ROOT / "training" / "train.py"), *args, "--output_dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "checkpoints" / f"checkpoint-{checkpoint}" / "trainer_state.json"
    deadline = time.time() + timeout
    while not state.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "adapter").exists()
    logged = {e["step"]: e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e}
    if resume_from is not None:
        assert (run_dir / "checkpoints" / f"checkpoint-{resume_from}").is_dir()
        shutil.rmtree(state.parent)
    return run_train(*args, "--output_dir", str(run_dir)), logged


@pytest.fixture(scope="session")
def train_script():
    """(run_train, kill_then_resume): train.py as a user runs it, and as a killed run resumed."""
    return run_train, kill_then_resume


@pytest.fixture(scope="session")
def meta_llama3():
    """Llama 3's real tokenizer (128,256 tokens) and chat template: the llama3 family's stand-in
    (finetune.standin), read offline from the vocabulary and template llama.cpp's sources ship."""
    from finetune import standin

    return standin.tokenizer("llama3")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The CPU recipe as the README runs it, stopped at 32 of its 65 steps (half an epoch: the
    sample's voice is learned by step 20, and the suite's budget is the reason), evaluated against
    its base at the end with the quick evaluation settings (the embedded model judging on llama.cpp).
    (run folder, the finished process)."""
    run_dir = tmp_path_factory.mktemp("runs") / "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "training" / "train.py"),
            "--config",
            str(ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml"),
            "--output_dir",
            str(run_dir),
            "--max_steps",
            "32",
            "--evaluate",
            "true",
            "--evaluate_config",
            str(ROOT / "training" / "eval" / "quick.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.fixture(scope="session")
def llamacpp_service(embedded_gguf):
    from chat_runtime import ChatService, ModelSpec

    return ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=str(embedded_gguf)))


@pytest.fixture(scope="session")
def llama_server_service(embedded_gguf):
    """The embedded GGUF on llama.cpp's server, the app's child: what a GGUF app serves by default."""
    from chat_runtime import ChatService, ModelSpec

    service = ChatService.from_spec(ModelSpec(engine="llama-server", gguf=str(embedded_gguf)))
    yield service
    service.engine.server.stop()


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
def start_app(tmp_path_factory):
    """Start `python app.py` from a folder as a subprocess on a free port; stop it afterwards.
    Its output goes to `start.log_dir / app-PORT.log`."""
    procs: list[subprocess.Popen] = []
    log_dir = tmp_path_factory.mktemp("apps")

    def start(
        app_dir: Path, env: dict[str, str] | None = None, python: str = sys.executable, blocked: tuple[str, ...] = ()
    ) -> str:
        """`blocked`: modules the app must run without (importing one raises ImportError)."""
        port = free_port()
        full_env = {**os.environ, "GRADIO_SERVER_PORT": str(port), **(env or {})}
        log = open(log_dir / f"app-{port}.log", "w")
        block = f"import runpy, sys; sys.modules.update(dict.fromkeys({list(blocked)!r})); "
        command = (
            [python, "-c", block + "runpy.run_path('app.py', run_name='__main__')"] if blocked else [python, "app.py"]
        )
        proc = subprocess.Popen(command, cwd=app_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, proc)
        return url

    start.log_dir = log_dir
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


def load_app(app_file: Path, module_name: str, engine: str = "llamacpp"):
    """Import an app.py as `python app.py` would build it (its `demo` at module level), on `engine`.

    In process by default: the tests of the apps read the prompts their engine was given
    (`engine.llm`). What a user gets by default, llama.cpp's server, is started as `python app.py`
    in test_load and test_deploy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, app_file)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FINCH_ENGINE", engine)  # read once, as the app module is built
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chatbot(tmp_path_factory):
    """The chatbot app running in this process on a free port: (module, url). Its votes go to a
    temporary file (`module.votes.path`)."""
    from chat_runtime import limits

    os.environ["FINCH_VOTES_FILE"] = str(tmp_path_factory.mktemp("votes") / "votes.jsonl")
    module = load_app(ROOT / "chatbot_app" / "app.py", "finch_chatbot_app")
    port = free_port()
    module.demo.queue(max_size=limits.QUEUE_SIZE).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True
    )
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


@pytest.fixture(scope="session")
def storymaker():
    """The storymaker app running in this process on a free port, launched as its __main__ does."""
    from chat_runtime import limits

    module = load_app(ROOT / "storymaker_app" / "app.py", "finch_storymaker_app")
    port = free_port()
    module.demo.queue(max_size=limits.QUEUE_SIZE).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, theme=module.THEME, css=module.CSS
    )
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


class LlamaServer:
    """`python -m llama_cpp.server` (llama-cpp-python's OpenAI-compatible server) on the embedded
    GGUF, on a fixed free port, so it can be stopped and started again at the same URL."""

    MODEL = "smollm2-135m"  # the name it serves the model under (FINCH_SERVER_MODEL)

    def __init__(self, gguf: Path, log_dir: Path, api_key: str | None = None):
        self.gguf, self.log_dir, self.api_key = gguf, log_dir, api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LlamaServer":
        # One thread: llama.cpp's threads spin on barriers, which crawls on a shared, busy 2-core box.
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.gguf),
            "--model_alias",
            self.MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "4096",
            "--n_threads",
            "1",
        ]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        self.log_path = self.log_dir / f"llama-server-{self.port}.log"
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_for_http(f"http://127.0.0.1:{self.port}/docs", self.proc)  # /docs answers without the key
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def spec(self, **overrides):
        from chat_runtime import ModelSpec

        return ModelSpec(
            **{"server_url": self.url, "server_model": self.MODEL, "server_api_key": self.api_key, **overrides}
        )


@pytest.fixture(scope="session")
def llama_servers(embedded_gguf, tmp_path_factory):
    """make(api_key=None) -> a LlamaServer, not started yet; every one is stopped at the end."""
    servers: list[LlamaServer] = []
    log_dir = tmp_path_factory.mktemp("llama-server")

    def make(api_key: str | None = None) -> LlamaServer:
        servers.append(LlamaServer(embedded_gguf, log_dir, api_key))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def stream_cut():
    """make(upstream_port) -> a StreamCut relay (tests/stream_cut.py) to that port; closed afterwards."""
    relays = []
    module = load_app(ROOT / "tests" / "stream_cut.py", "finch_stream_cut")

    def make(upstream_port: int):
        relays.append(module.StreamCut(upstream_port))
        return relays[-1]

    yield make
    for relay in relays:
        relay.close()


@pytest.fixture(scope="session")
def launch_app():
    """`launch_app(folder, env, log, python) -> (process, port)`: `python app.py` started in `folder`
    (an app folder or a Space bundle) on a free port, as a user or a Space runs it. The caller stops it
    (terminate), so a module-scoped server can be shared by that module's tests."""

    def launch(
        folder: Path, env: dict[str, str], log: Path, python: str = sys.executable
    ) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = subprocess.Popen(
            [python, "app.py"],
            cwd=folder,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_SERVER_PORT": str(port), **env},
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", proc)
        except Exception:
            proc.kill()
            raise
        return proc, port

    return launch


def server_child(app_pid: int) -> int:
    """The pid of the app's llama-server child."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # a process that ended meanwhile
            continue
        name, fields = text.split("(", 1)[1].rsplit(")", 1)[0], text.rsplit(")", 1)[1].split()
        if int(fields[1]) == app_pid and name.startswith("llama-server"):
            return int(stat.parent.name)
    raise AssertionError("the app has no llama-server child")


@pytest.fixture(scope="session")
def llama_server_child():
    """`llama_server_child(app_pid) -> pid` of the llama-server an app started as its child."""
    return server_child


# --- What this environment can run: the CPU set (.venv) or the GPU set less CUDA (.venv-gpu-set) ----
# Tests marked `trains` or `cuda` are skipped, each with its reason, where the installed packages or
# the machine cannot run them; the reason comes from probing what is installed, not from a list.


def _why_trl_cannot_train() -> str | None:
    """trl 1.15's SFTTrainer always takes its fused LM head, whose log-probs come from trl.kernels (Triton):
    without Triton that import fails and the first step dies ('NoneType' object has no attribute 'apply').
    trl 1.16's kernels fall back to PyTorch. So trl trains here exactly when trl.kernels imports."""
    try:
        import trl.kernels  # noqa: F401
    except ImportError as err:
        import trl

        return (
            f"trl {trl.__version__}'s SFTTrainer computes its loss only with Triton kernels, and Triton "
            f"(CUDA only) is not installed ({err}): this runs on a CUDA machine (scripts/gpu_check.sh trains there)"
        )
    return None


def _why_no_cuda() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU, and torch sees none here (scripts/gpu_check.sh measures this path on one)"
    return None


CAPABILITY_PROBES = {"cuda": _why_no_cuda, "trains": _why_trl_cannot_train}  # the first reason found is shown
# What makes a test end-to-end whatever its module says: it generates with the embedded model, drives a
# browser or an app, or reads what a real training run or export built. Such a test is marked e2e, so
# the fast tier (`pytest -m "not e2e"`) stays free of real generation.
REAL_FIXTURES = {
    "llamacpp_service",
    "transformers_service",
    "llama_servers",
    "chatbot",
    "storymaker",
    "browser",
    "page",
    "start_app",
    "launch_app",
    "trained_run",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_itemcollected(item):
    # A parametrized test may name its engine and look it up itself (request.getfixturevalue).
    named = getattr(getattr(item, "callspec", None), "params", {}).values()
    used = set(getattr(item, "fixturenames", ())) | {v for v in named if isinstance(v, str)}
    if REAL_FIXTURES & used:
        item.add_marker(pytest.mark.e2e)


# The suite runs in one process per core (pytest-xdist); a fixture is built once per process that
# uses it. So each module runs whole in one process (its module fixtures are built once), and the
# modules that share a session fixture that trains run in one process (it trains once): collection
# fails if another module uses one of these fixtures, until it is added here.
SAME_PROCESS = {"trained_run": ("test_train.py", "test_compare.py", "test_evaluate.py")}
# The groups that take longest start first, so that neither process is left alone with a long one at
# the end (seconds in a serial run on the 2-core Zen 4, 3 Dec 2026). The rest follow in collection
# order; a stale figure costs balance, nothing else.
LONGEST_FIRST = {
    "trained_run": 880,
    "test_preference_train.py": 250,
    "test_gguf_export.py": 250,
    "test_families.py": 230,
    "test_finetuning.py": 230,
    "test_distributed.py": 150,
    "test_story_grammar.py": 130,
    "test_sweep.py": 100,
}


def process_group(module: str) -> str:
    """The group of a test module's tests (its file name), run in one process."""
    return next((fixture for fixture, modules in SAME_PROCESS.items() if module in modules), module)


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler by scope, with `process_group` as the scope of a test."""
    from xdist.scheduler import LoadScopeScheduling

    class ByProcessGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return process_group(Path(nodeid.split("::")[0]).name)

    return ByProcessGroup(config, log)


def order_for_processes(items) -> None:
    """The longest groups first; refuse a module that would build a shared training run again."""
    for item in items:
        for fixture, modules in SAME_PROCESS.items():
            if fixture in item.fixturenames and item.path.name not in modules:
                raise pytest.UsageError(
                    f"{item.path.name} uses {fixture}: add it to SAME_PROCESS in tests/conftest.py, so that "
                    "the run is built once"
                )
    rank = {group: i for i, group in enumerate(sorted(LONGEST_FIRST, key=LONGEST_FIRST.get, reverse=True))}
    items.sort(key=lambda item: rank.get(process_group(item.path.name), len(rank)))  # stable within a group


def skip_what_this_machine_cannot_run(items) -> None:
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, probe in CAPABILITY_PROBES.items():
            if item.get_closest_marker(marker):
                if marker not in reasons:
                    reasons[marker] = probe()
                if reasons[marker]:
                    item.add_marker(pytest.mark.skip(reason=reasons[marker]))


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    order_for_processes(items)
    yield
    skip_what_this_machine_cannot_run(items)  # after `-m` has deselected: probe only for the tests that will run


def pytest_report_header(config):
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    names = ("torch", "transformers", "trl", "peft", "datasets", "huggingface_hub", "triton", "unsloth", "gradio")
    return "finch stack: " + ", ".join(installed(n) for n in names)
