"""Several users at once on a CPU: aggregate decode tokens/s of 1, 4 and 8 users chatting at the same
time through the llama-server engine (llama.cpp's own server, run by the app, its parallel slots
decoding together), and each user's time to first token (median and p90).

    .venv/bin/python bench/concurrent_users.py            # Llama-3.2-1B-shaped q4_k_m, 128 tokens, 3 rounds
    .venv/bin/python bench/concurrent_users.py --quick    # smoke run: embedded GGUF, 16 tokens, 1 round

Each user sends one message in a thread through ChatService, as the apps do, greedily; replies have
up to --max_new_tokens tokens, counted by the server itself (its /metrics counter of decoded
tokens; the shaped model's random replies are mostly byte pieces, which re-tokenized or counted as
streamed pieces come to about a third of that). The engine runs as the product
starts it (FINCH_MAX_CONCURRENT unset: its default slots), so with more users than slots the rest
wait in ChatService for a free slot, as they would in the app's queue. Targets: 4 users' aggregate
tokens/s at least 2.5x one user's, and 8 users' no worse than 4 users'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import benchlib
import httpx

from chat_runtime import ChatService, ModelSpec, embedded, validate

QUESTIONS = [
    "Tell me about the sea.",
    "How do volcanoes form?",
    "Why do bees make honey?",
    "What is on the far side of the moon?",
    "Where do rivers begin?",
    "How do forests grow back after a fire?",
    "What lives in a desert?",
    "How do glaciers move?",
]


def users_at_once(service: ChatService, users: int, max_new_tokens: int) -> dict[str, float]:
    """`users` chats started together; aggregate tokens/s and the users' times to first token."""
    params = validate(temperature=0, max_new_tokens=max_new_tokens)
    firsts: list[float] = []
    lock = threading.Lock()

    def user(question: str) -> None:
        started, first = time.perf_counter(), None
        for reply in service.reply(question, [], None, params):
            if first is None and reply.text:
                first = time.perf_counter() - started
        with lock:
            firsts.append(first)

    threads = [threading.Thread(target=user, args=(QUESTIONS[i % len(QUESTIONS)],)) for i in range(users)]
    before = decoded(service)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    tokens = decoded(service) - before
    ordered = sorted(firsts)
    return {
        "tok/s": tokens / seconds,
        "TTFT median s": statistics.median(ordered),
        "TTFT p90 s": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "tokens": float(tokens),
    }


def decoded(service: ChatService) -> int:
    """Tokens the server has decoded so far (its Prometheus counter, summed over finished replies)."""
    for line in httpx.get(service.engine.root + "/metrics").text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return int(float(line.split()[-1]))
    raise SystemExit("llama-server's /metrics has no llamacpp:tokens_predicted_total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="GGUF to serve (default: the Llama-3.2-1B-shaped q4_k_m)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3, help="rounds; each runs 1, 4 and 8 users (medians)")
    parser.add_argument("--quick", action="store_true", help="smoke run: embedded GGUF, 16 tokens, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.gguf, args.max_new_tokens, args.reps = args.gguf or str(embedded.gguf_path()), 16, 1
    gguf = args.gguf or str(benchlib.shaped_gguf("llama-3.2-1b", "q4_k_m"))
    benchlib.header(f"several users at once through llama.cpp's server on {os.path.basename(gguf)}")
    service = ChatService.from_spec(ModelSpec(engine="llama-server", gguf=gguf))
    print(f"# {service.engine.label}; up to {args.max_new_tokens} new tokens a reply, greedy")
    try:
        users_at_once(service, 1, 8)  # warm up: the first calls page the weights in
        rows = benchlib.interleaved(
            {f"{n} users": (lambda n=n: users_at_once(service, n, args.max_new_tokens)) for n in (1, 4, 8)}, args.reps
        )
    finally:
        service.engine.server.stop()
    benchlib.table(rows, "{:.3f}")
    print(f"# load average at end: {benchlib.load()}")
    one, four, eight = (rows[f"{n} users"]["tok/s"] for n in (1, 4, 8))
    benchlib.ratio("4 users / 1 user aggregate tok/s", four / one, 2.5)
    benchlib.ratio("8 users / 4 users aggregate tok/s", eight / four, 1.0)


if __name__ == "__main__":
    main()
