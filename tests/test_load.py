"""Load on the chatbot, started as `python app.py` with a small queue (FINCH_QUEUE_SIZE=8): eight
concurrent gradio_client sessions each get the answer to their own prompt (through llama.cpp's
server decoding several at once, what the app runs by default, and in process), a client beyond the
queue's bound is told at once that the app is busy, and the server's memory stays flat."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio_client", reason="Gradio is not in requirements-gpu.txt (a Space installs its own)")
from gradio_client import Client  # noqa: E402
from gradio_client.utils import QueueError, Status  # noqa: E402

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
QUEUE_SIZE = 8
COUNTRIES = ["France", "Japan", "Italy", "Egypt", "Canada", "Spain", "Germany", "Peru"]
GREEDY = dict(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def server(tmp_path_factory, launch_app):
    """The chatbot in its own process, its GGUF in that process (one reply at a time): (url, pid)."""
    log = tmp_path_factory.mktemp("load") / "app.log"
    env = {"FINCH_QUEUE_SIZE": str(QUEUE_SIZE), "FINCH_ENGINE": "llamacpp"}
    proc, port = launch_app(ROOT / "chatbot_app", env, log)
    yield f"http://127.0.0.1:{port}/", proc.pid
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def server_with_slots(tmp_path_factory, launch_app):
    """The chatbot in its own process with no engine set: llama.cpp's server as its child, 4 slots
    decoding together (the default wherever setup.sh built it): (url, pid)."""
    log = tmp_path_factory.mktemp("load") / "app-llama-server.log"
    # A prompt cache that the memory test's 200 short conversations fill (about 45 MiB a hundred
    # here), so that it sees the memory stop growing where the limit says.
    env = {"FINCH_QUEUE_SIZE": str(QUEUE_SIZE), "FINCH_PROMPT_CACHE_MIB": "16"}
    proc, port = launch_app(ROOT / "chatbot_app", env, log)
    yield f"http://127.0.0.1:{port}/", proc.pid
    proc.terminate()
    proc.wait(10)


def ask(url: str, message: str, **params) -> str:
    client = Client(url, verbose=False)  # a session of its own: no history from another test
    return client.predict(message=message, **params, api_name="/chat")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("app", ["server", "server_with_slots"])
def test_eight_concurrent_sessions_each_get_their_own_answer(app, request):
    url, _ = request.getfixturevalue(app)
    prompts = [f"What is the capital of {country}?" for country in COUNTRIES]
    # Alone, at temperature 0, each prompt has one answer; they all differ, so a reply that went to
    # the wrong session (or mixed two) cannot equal its own prompt's answer.
    alone = [ask(url, p, **GREEDY) for p in prompts]
    assert len(set(alone)) == len(prompts), alone
    start = threading.Barrier(len(prompts))

    def together(prompt: str) -> str:
        client = Client(url, verbose=False)
        start.wait()  # all eight requests go out at once
        return client.predict(message=prompt, **GREEDY, api_name="/chat")

    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(together, prompts))
    assert replies == alone


def test_stop_on_one_user_leaves_the_others_replies_running(server_with_slots, llama_server_child):
    """Through gradio_client on the app's default engine: one user's long reply is stopped while three
    others are decoded beside it in the server's slots; each of them still gets their reply alone, and
    the server stops decoding the stopped one."""
    url, app_pid = server_with_slots
    params = dict(temperature=0, max_new_tokens=48)
    prompts = [f"Tell me about {country}." for country in COUNTRIES[:3]]
    alone = [ask(url, prompt, **params) for prompt in prompts]
    long_job = Client(url, verbose=False).submit(
        message="Write the numbers from 1 to 500, separated by commas.",
        temperature=0,
        repetition_penalty=1.0,
        max_new_tokens=2000,
        api_name="/chat",
    )
    deadline = time.monotonic() + 120
    while not long_job.outputs():
        assert time.monotonic() < deadline and not long_job.done(), "the long reply never started"
        time.sleep(0.05)
    jobs = [Client(url, verbose=False).submit(message=p, **params, api_name="/chat") for p in prompts]
    while not all(job.outputs() for job in jobs):  # all three are being decoded beside the long one
        assert time.monotonic() < deadline and not any(job.done() for job in jobs), "the others never started"
        time.sleep(0.05)
    long_job.cancel()  # that user pressed Stop
    assert [job.result(timeout=120) for job in jobs] == alone
    command = Path(f"/proc/{llama_server_child(app_pid)}/cmdline").read_text().split("\0")
    slots = f"http://127.0.0.1:{command[command.index('--port') + 1]}/slots"
    while any(slot["is_processing"] for slot in httpx.get(slots, timeout=5).json()):
        assert time.monotonic() < deadline, "the server kept decoding the stopped reply"
        time.sleep(0.1)
    assert "500" not in long_job.outputs()[-1]  # it ended where it was stopped


def test_a_killed_llama_server_is_started_again_and_the_page_says_so(server_with_slots, page, llama_server_child):
    """The app's llama-server child killed: the next message in the browser gets its answer, with a
    notice that the server was started again, instead of a page that hangs."""
    from chat_runtime.engines.llama_server import RESTARTED

    url, app_pid = server_with_slots
    child = llama_server_child(app_pid)
    os.kill(child, signal.SIGKILL)
    page.goto(url)
    box = page.locator("#chat-input textarea")
    box.fill("What is the capital of France?")
    box.press("Enter")
    page.get_by_text(RESTARTED).wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length >= 1", timeout=60_000)
    page.locator("button.submit-button").wait_for(state="visible", timeout=60_000)
    assert page.locator("[data-testid=bot]").last.inner_text().strip()  # an answer, after the notice
    assert llama_server_child(app_pid) != child


@pytest.mark.parametrize("app, slots", [("server", 1), ("server_with_slots", 4)])
def test_a_client_beyond_the_queue_bound_is_told_the_app_is_busy(app, slots, request):
    """Every generation slot taken (1 in process, llama-server's 4), the queue filled: one more
    client hears at once that the app is busy; Stop drains it all and the app serves again."""
    url, _ = request.getfixturevalue(app)
    clients = [Client(url, verbose=False) for _ in range(QUEUE_SIZE + 1)]  # connected before the slots are taken
    # Greedy counting to 500 runs for ~1,000 tokens without an EOS: the slots stay taken while the queue fills.
    long_jobs = [
        Client(url, verbose=False).submit(
            message="Write the numbers from 1 to 500, separated by commas.",
            temperature=0,
            repetition_penalty=1.0,
            max_new_tokens=2000,
            api_name="/chat",
        )
        for _ in range(slots)
    ]
    deadline = time.monotonic() + 120
    while not all(job.outputs() for job in long_jobs):  # they hold every generation slot
        assert time.monotonic() < deadline and not any(job.done() for job in long_jobs), "a long reply never started"
        time.sleep(0.05)
    waiting = [
        client.submit(message=f"Name a city in {country}.", temperature=0, max_new_tokens=2, api_name="/chat")
        for client, country in zip(clients, COUNTRIES[:QUEUE_SIZE])
    ]
    while not all(job.status().code == Status.IN_QUEUE for job in waiting):  # every one has joined the queue
        assert time.monotonic() < deadline, [job.status().code for job in waiting]
        time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(QueueError, match="Queue is full! Please try again."):
        clients[-1].predict(message="Hello?", **GREEDY, api_name="/chat")
    assert time.monotonic() - started < 15, "a refused client must hear so at once, not hang"
    assert not any(job.done() for job in long_jobs), (
        "a long reply ended early: the queue was not full for the right reason"
    )
    for job in long_jobs:
        job.cancel()  # Stop: the slots free and the queue drains
    for job in waiting:
        assert isinstance(job.result(timeout=120), str)
    assert ask(url, "Say hello.", **GREEDY).strip()  # and the app serves again


@pytest.mark.parametrize("app", ["server", "server_with_slots"])
def test_memory_stays_flat_over_200_requests(app, request, llama_server_child):
    """The app's memory, and its llama-server child's: llama-server keeps the prompts of
    conversations whose slot went to another user, up to FINCH_PROMPT_CACHE_MIB, and no further."""
    url, pid = request.getfixturevalue(app)

    def rss_of_app() -> float:
        return rss_mib(pid) + (rss_mib(llama_server_child(pid)) if app == "server_with_slots" else 0)

    def burst(n: int, offset: int) -> None:
        def worker(k: int) -> None:
            client = Client(url, verbose=False)
            for i in range(k, n, 4):
                client.reset_session()  # a fresh conversation each time, as new visitors bring
                client.predict(
                    message=f"Say the number {offset + i}.", temperature=0, max_new_tokens=2, api_name="/chat"
                )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(worker, range(4)))

    burst(20, 0)  # warm-up: caches, first allocations
    before = rss_of_app()
    burst(100, 1000)
    middle = rss_of_app()
    burst(100, 2000)
    after = rss_of_app()
    print(f"\n{app} RSS: {before:.0f} MiB after warm-up, {middle:.0f} after 100 requests, {after:.0f} after 200")
    assert after - before < 64, f"RSS grew {after - before:.0f} MiB over 200 requests"
    assert after - middle < 32, f"RSS still growing: {middle:.0f} -> {after:.0f} MiB over the last 100 requests"
