"""Item 4: time to first token through Gradio (the real chatbot app, gradio_client streaming)
minus the runtime's own time to first token on the same model and message (target <= 50 ms).

    .venv/bin/python bench/gradio_ttft.py            # embedded SmolLM2 GGUF, 9 rounds
    .venv/bin/python bench/gradio_ttft.py --quick    # smoke run

The app runs as `python chatbot_app/app.py` in a subprocess, as a user starts it; the runtime's
own figure comes from a ChatService in this process. Rounds alternate between the two.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing

import benchlib

SYSTEM = "You are a helpful assistant."
MESSAGE = "Give me three tips for learning a new language."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=benchlib.ROOT / "chatbot_app", env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the chatbot app exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the chatbot app did not start in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--max_new_tokens", type=int, default=8, help="only the first token matters; keep it short")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.reps = 2

    from gradio_client import Client

    from chat_runtime import ChatService, validate

    benchlib.header("time to first token: through Gradio vs the runtime alone")
    port = free_port()
    app = start_app(port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        service = ChatService.from_spec()  # the same FINCH_* environment (default: embedded GGUF) as the app
        params = validate(temperature=0, max_new_tokens=args.max_new_tokens)

        def gradio() -> dict[str, float]:
            client.reset_session()  # a fresh conversation each round, same prompt
            start = time.perf_counter()
            job = client.submit(message=MESSAGE, system_prompt=SYSTEM, temperature=0,
                                max_new_tokens=args.max_new_tokens, api_name="/chat")
            first = next(time.perf_counter() for partial in job if partial)
            job.result()
            return {"ttft_ms": 1000 * (first - start)}

        def runtime() -> dict[str, float]:
            start = time.perf_counter()
            with closing(service.reply(MESSAGE, [], SYSTEM, params)) as stream:  # closing cancels the rest
                first = next(time.perf_counter() for reply in stream if reply.text)
            return {"ttft_ms": 1000 * (first - start)}

        gradio(), runtime()  # warm-up
        results = benchlib.interleaved({"gradio_client -> app": gradio, "runtime alone": runtime}, args.reps)
    finally:
        app.terminate()
        app.wait(10)
    benchlib.table(results, "{:.1f}")
    print(f"# load average at end: {benchlib.load()}")
    added = results["gradio_client -> app"]["ttft_ms"] - results["runtime alone"]["ttft_ms"]
    benchlib.ratio("gradio added time to first token", added, 50, higher_is_better=False, unit=" ms")


if __name__ == "__main__":
    main()
