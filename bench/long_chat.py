"""Time to first token at turn 10 of a chat against turn 1, through llama.cpp's llama-server as the
app runs it (its default for a GGUF), on the in-process llama.cpp engine, and through
llama-cpp-python's server: a follow-up must reuse the conversation already in the KV cache.

    .venv/bin/python bench/long_chat.py            # embedded GGUF, 10 turns of up to 128 tokens, 3 chats
    .venv/bin/python bench/long_chat.py --quick    # smoke run: 3 turns of 16 tokens, 1 chat

Each chat is real: every reply is generated greedily and goes into the next turn's history, so by
turn 10 the prompt holds about 1,500 tokens. llama-server (4 slots, as the app starts it) keeps
each slot's last conversation and gives a follow-up the slot holding most of it (`cache_prompt`,
its default); llama-cpp-python's `python -m llama_cpp.server`, on the same GGUF and threads, keeps
the longest common prefix of the previous request. Chats alternate between the engines. Target: turn 10's first token within 2x turn 1's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import benchlib
import httpx

from chat_runtime import ChatService, ModelSpec, embedded, validate

SYSTEM = "You are a helpful assistant who answers in detail."
TOPICS = ["the sea", "volcanoes", "bees", "the moon", "rivers", "forests", "deserts", "glaciers", "storms", "caves"]


CHATS = itertools.count(1)


def chat(service: ChatService, turns: int, max_new_tokens: int) -> dict[str, float]:
    """One chat of `turns` turns; seconds to the first piece at turn 1 and at the last turn, and the
    last prompt's length in tokens."""
    params = validate(temperature=0, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    # Every chat opens with its own system prompt, so turn 1 never finds the previous chat's prompt
    # in a server's cache: turn 1 is a cold start on every engine, as a new user's first message is.
    system = f"Conversation {next(CHATS)}. {SYSTEM}"
    history: list[dict] = []
    firsts = []
    for turn in range(turns):
        message = f"Tell me, in detail, about {TOPICS[turn % len(TOPICS)]}."
        started = time.perf_counter()
        first = None
        reply = None
        for reply in service.reply(message, history, system, params):
            if reply.text and first is None:
                first = time.perf_counter() - started
        firsts.append(first)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply.text}]
    prompt = service.engine.encode_chat([{"role": "system", "content": system}, *history[:-1]])
    return {"turn 1 s": firsts[0], "last turn s": firsts[-1], "history tokens": float(len(prompt))}


@contextmanager
def llama_cpp_server(gguf: str, threads: int):
    """`python -m llama_cpp.server` on a free port; yields its /v1 URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "bench"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_ctx", "4096"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="the GGUF to chat with (default: the embedded model)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="llama.cpp threads")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=128, help="longest reply per turn")
    parser.add_argument("--reps", type=int, default=3, help="chats per engine (medians)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 turns of 16 tokens, 1 chat")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.max_new_tokens, args.reps = 3, 16, 1
    gguf = args.gguf or str(embedded.gguf_path())
    os.environ["FINCH_THREADS"] = str(args.threads)
    benchlib.header(
        f"time to first token, turn {args.turns} vs turn 1 of a chat, through llama-server, in process, through a server"
    )
    with llama_cpp_server(gguf, args.threads) as url:
        services = {
            "llama-server": ChatService.from_spec(ModelSpec(engine="llama-server", gguf=gguf)),
            "in process": ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=gguf)),
            "server": ChatService.from_spec(ModelSpec(server_url=url, server_model="bench")),
        }
        for service in services.values():
            chat(service, 1, 4)  # warm up
        rows = benchlib.interleaved(
            {name: (lambda s=service: chat(s, args.turns, args.max_new_tokens)) for name, service in services.items()},
            args.reps,
        )
    benchlib.table(rows)
    for name, row in rows.items():
        benchlib.ratio(f"{name} TTFT turn {args.turns} / turn 1", row["last turn s"] / row["turn 1 s"], 2.0, False)


if __name__ == "__main__":
    main()
