"""Item 4: time to first token through Gradio (the real chatbot app, gradio_client streaming)
minus the runtime's own time to first token on the same model and message (target <= 50 ms).

Three sides, so the added time can be split between Gradio's server and gradio_client:
- gradio_client -> app: `Client.submit` to `/chat`, clock stopped at the first non-empty partial;
- SSE wire -> app: the same request as raw HTTP (queue/join, then the queue/data event stream, as
  the browser's own client reads it), clock stopped at the first `process_generating` event;
- runtime alone: a ChatService in this process.

    .venv/bin/python bench/gradio_ttft.py            # embedded SmolLM2 GGUF, 9 rounds
    .venv/bin/python bench/gradio_ttft.py --quick    # smoke run

The app runs as `python chatbot_app/app.py` in a subprocess, as a user starts it; the runtime's
own figure comes from a ChatService in this process. Rounds alternate between the two.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import closing

import benchlib
import httpx

SYSTEM = "You are a helpful assistant."
MESSAGE = "Give me three tips for learning a new language."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=benchlib.ROOT / "chatbot_app",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


def wire_request(base: str, api_name: str, values: dict) -> tuple[int, list]:
    """The fn_index and input list that the queue expects for `api_name`, in the endpoint's order:
    a gr.State input travels as None (as gradio_client sends it), every other input takes the value
    given here or the endpoint's own default."""
    config = httpx.get(f"{base}/config").json()
    dep = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
    kinds = {c["id"]: c["type"] for c in config["components"]}
    params = iter(httpx.get(f"{base}/gradio_api/info").json()["named_endpoints"][f"/{api_name}"]["parameters"])
    data = []
    for component in dep["inputs"]:
        if kinds[component] == "state":
            data.append(None)
            continue
        param = next(params)
        data.append(values.get(param["parameter_name"], param.get("parameter_default")))
    return dep["id"], data


def wire_ttft(http: httpx.Client, base: str, fn_index: int, data: list) -> float:
    """Seconds from joining the queue to the first streamed output on the SSE wire."""
    session = uuid.uuid4().hex
    start = time.perf_counter()
    http.post(
        f"{base}/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session}
    ).raise_for_status()
    first = None
    with http.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}) as events:
        for line in events.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])["msg"]
            if msg == "process_generating" and first is None:
                first = time.perf_counter()
            if msg == "process_completed":
                break
    if first is None:
        raise RuntimeError("the app streamed no output; see its log")
    return first - start


def main() -> None:
    args = benchlib.ttft_arguments(__doc__, reps=9)

    from gradio_client import Client

    from chat_runtime import ChatService, validate

    benchlib.header("time to first token: through Gradio vs the runtime alone")
    port = free_port()
    app = start_app(port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        service = ChatService.from_spec()  # the same FINCH_* environment (default: embedded GGUF) as the app
        params = validate(temperature=0, max_new_tokens=args.max_new_tokens)
        base = f"http://127.0.0.1:{port}"
        fn_index, data = wire_request(
            base,
            "chat",
            {"message": MESSAGE, "system_prompt": SYSTEM, "temperature": 0, "max_new_tokens": args.max_new_tokens},
        )
        http = httpx.Client(timeout=120)

        def gradio() -> dict[str, float]:
            client.reset_session()  # a fresh conversation each round, same prompt
            start = time.perf_counter()
            job = client.submit(
                message=MESSAGE,
                system_prompt=SYSTEM,
                temperature=0,
                max_new_tokens=args.max_new_tokens,
                api_name="/chat",
            )
            first = next(time.perf_counter() for partial in job if partial)
            job.result()
            return {"ttft_ms": 1000 * (first - start)}

        def runtime() -> dict[str, float]:
            start = time.perf_counter()
            with closing(service.reply(MESSAGE, [], SYSTEM, params)) as stream:  # closing cancels the rest
                first = next(time.perf_counter() for reply in stream if reply.text)
            return {"ttft_ms": 1000 * (first - start)}

        def wire() -> dict[str, float]:
            return {"ttft_ms": 1000 * wire_ttft(http, base, fn_index, data)}

        gradio(), wire(), runtime()  # warm-up
        results = benchlib.interleaved(
            {"gradio_client -> app": gradio, "SSE wire -> app": wire, "runtime alone": runtime}, args.reps
        )
    finally:
        app.terminate()
        app.wait(10)
    benchlib.table(results, "{:.1f}")
    print(f"# load average at end: {benchlib.load()}")
    alone = results["runtime alone"]["ttft_ms"]
    added = results["gradio_client -> app"]["ttft_ms"] - alone
    benchlib.ratio("gradio added time to first token", added, 50, higher_is_better=False, unit=" ms")
    server = results["SSE wire -> app"]["ttft_ms"] - alone
    benchlib.ratio("gradio server added time to first token (SSE wire)", server, 50, higher_is_better=False, unit=" ms")
    # gradio_client reads the event stream in one thread and hands events over through a deque that
    # another thread polls every 50 ms (gradio_client/utils.py, stream_sse_v1plus), so its share is
    # about 30 ms of threads and HTTP plus 0-50 ms of waiting for the next poll.
    benchlib.result("gradio_client's own share", added - server, "ms")


if __name__ == "__main__":
    main()
