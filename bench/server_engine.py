"""The server engine's cost over in-process llama.cpp, on the embedded GGUF: first piece, pieces per
second, and how soon the next reply starts after a cancelled one (the server must stop).

    python bench/server_engine.py --threads 2 --runs 3

Starts `python -m llama_cpp.server` on a free local port with the same GGUF and thread count, and
stops it at the end. Numbers are medians; on a shared CPU they are noisy, so compare in one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

from chat_runtime import ChatService, GenerationParams, ModelSpec, embedded

PROMPT = "Write a short story about a lighthouse keeper."


def measure(service: ChatService, max_new_tokens: int) -> tuple[float, float]:
    """(seconds to the first piece, pieces per second after it) of one greedy reply."""
    started = time.perf_counter()
    first, pieces = None, 0
    for reply in service.reply(PROMPT, [], None, GenerationParams(temperature=0, max_new_tokens=max_new_tokens)):
        if reply.text and first is None:
            first = time.perf_counter()
        pieces += bool(reply.text)
    return first - started, (pieces - 1) / max(time.perf_counter() - first, 1e-9)


def restart_after_cancel(service: ChatService) -> float:
    """Seconds from closing a long reply to the first piece of the next one."""
    stream = service.reply(PROMPT, [], None, GenerationParams(temperature=1, max_new_tokens=1000))
    for reply in stream:
        if len(reply.text) > 40:
            break
    started = time.perf_counter()
    stream.close()
    nxt = service.reply("hi", [], None, GenerationParams(temperature=0, max_new_tokens=4))
    next(nxt), next(nxt)
    nxt.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="llama.cpp threads, both sides"
    )
    parser.add_argument("--runs", type=int, default=3, help="replies measured per engine")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="tokens per reply")
    args = parser.parse_args()
    gguf = str(embedded.gguf_path())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--model_alias",
            "bench",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            str(args.threads),
            "--n_ctx",
            "4096",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        os.environ["FINCH_THREADS"] = str(args.threads)
        engines = {
            "llamacpp (in process)": ModelSpec(engine="llamacpp", gguf=gguf),
            "server (llama_cpp.server)": ModelSpec(server_url=f"http://127.0.0.1:{port}/v1", server_model="bench"),
        }
        for name, spec in engines.items():
            service = ChatService.from_spec(spec)
            measure(service, 8)  # warm up
            runs = [measure(service, args.max_new_tokens) for _ in range(args.runs)]
            ttft = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[1] for r in runs)
            again = statistics.median(restart_after_cancel(service) for _ in range(args.runs))
            print(
                f"{name:28s} first piece {ttft * 1000:6.0f} ms  {rate:6.1f} pieces/s  next reply after cancel {again * 1000:6.0f} ms"
            )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
