"""llama.cpp's own server, run and watched by the app: several users at once on a GGUF.

On a CPU, decoding is bound by reading the weights, and llama-server decodes the replies of its
parallel slots together, a token of each in one batch (continuous batching): several users are
served at nearly the speed of one, where the in-process engine takes them one at a time. The app
starts it on a free port of 127.0.0.1, waits until the model is loaded, talks to it through the
server engine (the GGUF's own chat template, grammars and DRY, Stop by closing the connection),
starts it again when it has died, and it ends with the app.

`scripts/setup.sh` builds it once from the llama.cpp sources of the llama-cpp-python release in
use, with the same flags as that wheel, and links it beside the virtual environment's python. On a
GGUF Space, the portable llama-cpp-python build installs it beside its CPU variants.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .. import limits
from ..errors import ServerError
from ..gguf_files import check_gguf_header, resolve_gguf
from ..params import GenerationParams
from ..spec import ModelSpec
from . import cpu_variants
from .server_engine import ChatPrompt, ServerEngine

log = logging.getLogger(__name__)

# Replies decoded together when FINCH_MAX_CONCURRENT is not set; each slot holds a whole context of
# KV cache. On 2 cores (bench/concurrent_users.py, 1B q4_k_m) 4 users together decode at 1.3-1.5x
# one user's tokens/s and each sees a first token within 0.8 s; more slots would only share the
# same arithmetic more thinly.
DEFAULT_SLOTS = 4
# Longest wait for the server to load its model (a 1B q4_k_m loads in a few seconds here).
START_SECONDS = 120.0
# Lines of the server's own log kept, to say why it would not start.
LOG_LINES = 40
# Longest wait, after a request failed unanswered, for the server's process to be seen ending.
DYING_SECONDS = 2.0
# What the user whose message found the server dead is told (the reply follows as usual).
RESTARTED = "The model's server had stopped and was started again; replies being written then were lost."


def binary() -> str | None:
    """The llama-server to run: FINCH_LLAMA_SERVER, else the one setup linked beside this python, else
    the one a portable llama-cpp-python installs beside its CPU variants (a GGUF Space's)."""
    configured = os.environ.get("FINCH_LLAMA_SERVER", "").strip()
    if configured:
        return configured
    return shutil.which("llama-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "llama-server", path=str(cpu_variants.variants_dir())
    )


def launch(program: str) -> tuple[list[str], dict[str, str], str | None]:
    """(command, environment, working folder) that run `program` on the CPU code the runtime chose.

    Beside llama.cpp's CPU variants, llama-server would load the one ggml scores best, AMX
    included (see cpu_variants). So it runs from a copy in a folder of its own, where it finds no
    variant, and loads the chosen one named by GGML_BACKEND_PATH; the install's libraries are on
    its library path (it has no run path of its own)."""
    folder = Path(program).resolve().parent
    variant = cpu_variants.choose(folder) if folder == cpu_variants.variants_dir() else None
    if variant is None:
        return [program], {}, None
    own = Path(tempfile.mkdtemp(prefix="finch-llama-server-"))
    atexit.register(shutil.rmtree, own, True)
    shutil.copy2(program, own / "llama-server")
    site = folder.parent
    libraries = [str(site / "lib"), str(site / "llama_cpp" / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]
    env = {"GGML_BACKEND_PATH": str(variant), "LD_LIBRARY_PATH": os.pathsep.join(filter(None, libraries))}
    log.info("llama-server runs the %s CPU code", variant.name)
    return [str(own / "llama-server")], env, str(own)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_the_app() -> None:
    """In the child, before it runs: Linux kills it when the app's process ends, even by SIGKILL, so
    no server outlives its app (prctl PR_SET_PDEATHSIG). SIGKILL, not SIGTERM: llama-server's own
    SIGTERM handler can hang in its shutdown (one did, for 33 minutes, after a test's app ended),
    and the server holds nothing that must be saved."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class LlamaServerProcess:
    """One llama-server child: started on a free port, waited for, stopped."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.command, self.env, self.cwd = command, env or {}, cwd
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)

    def start(self) -> str:
        """Start the server and return its URL once its model is loaded; ValueError if it cannot start."""
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.lines.clear()
        self.process = subprocess.Popen(
            [*self.command, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **self.env},
            cwd=self.cwd,
            preexec_fn=_die_with_the_app if sys.platform == "linux" else None,
        )
        threading.Thread(target=self._keep_log, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:  # 503 while the model loads, 200 once it serves
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ValueError(self._why_not_started())

    def _why_not_started(self) -> str:
        """What to tell the user, then the server's own last lines."""
        lines = "\n".join(self.lines)
        if "failed to load model" in lines:
            return (
                "llama.cpp's server could not load the GGUF: the file may be truncated or corrupt (download or "
                "export it again), or hold a model this llama.cpp cannot run. Its last lines:\n" + lines
            )
        return (
            "llama.cpp's server did not start (its last lines below). Check the GGUF, or set "
            "FINCH_ENGINE=llamacpp to serve it in process:\n" + lines
        )

    def _keep_log(self, process: subprocess.Popen) -> None:
        """Keep the server's last lines (for a failed start) and pass its warnings to the app's log."""
        for line in process.stdout:
            line = line.rstrip()
            self.lines.append(line)
            if " E " in line or " W " in line:
                log.info("llama-server: %s", line)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ended_within(self, seconds: float) -> bool:
        """Whether the server has ended or ends within `seconds` (a killed process takes a moment)."""
        try:
            self.process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Slots:
    """Which of the server's slots each running reply is pinned to: a free one, the one holding the
    longest start of the reply's conversation, so that a follow-up finds its prefix in that slot's
    KV cache (as the server itself would choose, but fixed for both of the reply's requests)."""

    def __init__(self, count: int):
        self.held: list[list] = [[] for _ in range(count)]  # each slot's last prompt, as messages
        self.busy: set[int] = set()
        self.changed = threading.Condition()

    def take(self, messages: list) -> int:
        with self.changed:
            while len(self.busy) == len(self.held):  # never, while ChatService lets `count` replies run
                self.changed.wait()
            free = [slot for slot in range(len(self.held)) if slot not in self.busy]
            slot = max(free, key=lambda k: _shared_start(self.held[k], messages))
            self.busy.add(slot)
            self.held[slot] = list(messages)
            return slot

    def give_back(self, slot: int) -> None:
        with self.changed:
            self.busy.discard(slot)
            self.changed.notify()


def _shared_start(held: list, messages: list) -> int:
    """How many messages two conversations share from their start."""
    shared = 0
    for a, b in zip(held, messages):
        if a != b:
            break
        shared += 1
    return shared


class LlamaServerEngine(ServerEngine):
    """A GGUF served by a llama-server child of the app, with parallel slots."""

    name = "llama-server"
    max_concurrent = DEFAULT_SLOTS

    def __init__(self, spec: ModelSpec):
        program = binary()
        if not program or not os.access(program, os.X_OK):
            raise ValueError(
                "llama.cpp's llama-server is not installed here: `bash scripts/setup.sh` builds it, or set "
                "FINCH_LLAMA_SERVER to its path; without it, FINCH_ENGINE=llamacpp serves the GGUF in process."
            )
        path = resolve_gguf(spec.gguf)
        check_gguf_header(path)
        lora = resolve_gguf(spec.gguf_lora) if spec.gguf_lora else None
        self.max_concurrent = limits.MAX_CONCURRENT_GENERATIONS or DEFAULT_SLOTS
        per_slot = limits.CONTEXT_TOKENS or limits.DEFAULT_CONTEXT_CAP
        threads = int(os.environ.get("FINCH_THREADS", "0")) or len(os.sched_getaffinity(0))
        command, env, cwd = launch(program)
        command += ["--model", path, "--host", "127.0.0.1", "--parallel", str(self.max_concurrent)]
        command += ["--ctx-size", str(per_slot * self.max_concurrent), "--threads", str(threads), "--no-webui"]
        command += ["--metrics"]  # Prometheus counters on 127.0.0.1 (tokens decoded, requests), for watching it
        command += ["--cache-ram", str(limits.PROMPT_CACHE_MIB)]  # memory that stops growing (limits.py)
        # Attention as in process (llama-cpp-python's default): llama.cpp's flash attention, which its
        # server turns on by itself, keeps its sums in 16-bit on a CPU, and that moved the embedded
        # model's first token of the chatbot's own first example from "The" to "La" (a near tie).
        command += ["--flash-attn", "off"]
        command += ["--lora", lora] if lora else []
        self.server = LlamaServerProcess(command, env, cwd)
        self._restart_lock = threading.Lock()
        self._restarted = threading.local()  # .notice: RESTARTED for the reply this thread prepares
        self._slots = Slots(self.max_concurrent)
        url = self.server.start()
        atexit.register(self.server.stop)
        super().__init__(ModelSpec(server_url=url + "/v1", server_model=Path(path).name))
        # A slot's context is what trimming may fill, never beyond the model's own.
        trained = self._trained_context()
        self.context_tokens = per_slot if limits.CONTEXT_TOKENS or not trained else min(per_slot, trained)
        self.label = f"{spec.label} · llama.cpp server · CPU · {self.max_concurrent} at once"

    def _trained_context(self) -> int | None:
        try:
            models = self.client.get(self.root + "/v1/models").json()["data"]
            return int(models[0]["meta"]["n_ctx_train"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return None

    def stream(self, prompt: ChatPrompt, params: GenerationParams, cancel: threading.Event):
        """As the server engine, on one slot of the server from the prompt to the reply's end; the
        reply's pieces carry a notice when preparing or sending it found the server ended and
        started it again.

        The prompt is read whole first (a request for no new tokens), so that the reply's request
        finds it held and reads its last token again alone. A Retry does the same, so at temperature 0
        it repeats the reply exactly: read in a batch with the rest of the message, that last token
        can come out of the arithmetic a hair apart, and a near tie then flips (1 of 20 Retries on
        the embedded model did, before)."""
        body = self._body(prompt, params)
        body["id_slot"] = slot = self._slots.take(prompt.messages)
        try:
            self._send("POST", "/v1/chat/completions", {**body, "stream": False, "max_tokens": 0}).close()
            pieces = self._stream(body, cancel)
        except BaseException:
            self._slots.give_back(slot)
            raise
        pieces.on_close = lambda: self._slots.give_back(slot)
        pieces.notice, self._restarted.notice = getattr(self._restarted, "notice", ""), ""
        return pieces

    def _send(self, method: str, path: str, body: dict, stream: bool = False, probe: bool = False):
        """Every request to the server (a message's token count, then its reply): a server that has
        ended is started again first. One that dies as the request goes out (killed, out of memory)
        fails it unanswered before its process is seen to end; once it has, it is started again and
        the request sent once more. A server that answered, or is still running: the error stands."""
        self._start_if_ended()
        try:
            return super()._send(method, path, body, stream, probe)
        except ServerError as err:
            if err.status is not None or not self.server.ended_within(DYING_SECONDS):
                raise
            self._start_if_ended()
            return super()._send(method, path, body, stream, probe)

    def _start_if_ended(self) -> None:
        """Start the server again if it has ended; the reply this thread prepares then carries the
        notice (a ChatService prepares and sends a reply in one thread)."""
        with self._restart_lock:
            if self.server.alive():
                return
            log.warning("llama-server had stopped (exit status %s): starting it again", self.server.process.poll())
            self.root = self.server.start()
            self._restarted.notice = RESTARTED
