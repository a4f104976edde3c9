"""Item 1: CPU chat through Finch's runtime (ChatService + LlamaCppEngine) vs raw llama-cpp-python
on the same GGUF and prompt: decode tokens/s and time to first token (target >= 0.95x).

    .venv/bin/python bench/chat_engine.py                 # embedded SmolLM2 Q4_1, 7 rounds
    .venv/bin/python bench/chat_engine.py --gguf path/to/model.gguf --reps 9
    .venv/bin/python bench/chat_engine.py --quick         # smoke run

Both sides decode greedily from the same prompt ids with the same thread count, and both start
from an empty KV cache (the runtime resets it per reply so temperature 0 repeats itself). The raw
side gets the ids ready-made; the runtime's time to first token includes its templating,
tokenizing and trimming, so the ratio shows everything the runtime adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import benchlib

SYSTEM = "You are a helpful, friendly assistant. Answer clearly and in detail."
MESSAGE = (
    "I am planning a week-long trip to the mountains in autumn with two friends. We like hiking, cooking and "
    "photography. Describe a day-by-day plan, what to pack, and how to stay safe on the trails."
)


def timed(stream, count_tokens) -> dict[str, float]:
    """Time to the first text, and decode tokens/s after it, for a stream of text pieces."""
    start = time.perf_counter()
    first = None
    text = ""
    for piece in stream:
        if piece and first is None:
            first = time.perf_counter()
        text += piece
    end = time.perf_counter()
    tokens = count_tokens(text)
    return {"ttft_s": first - start, "decode_tok_s": (tokens - 1) / (end - first), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="GGUF to run (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument("--reps", type=int, default=7, help="rounds; each runs both sides once, order alternating")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 16 tokens")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.max_new_tokens = 2, 16

    from llama_cpp import Llama

    from chat_runtime import ChatService, ModelSpec, embedded, validate

    gguf = args.gguf or str(embedded.gguf_path())
    benchlib.header(f"chat engine: Finch runtime vs raw llama-cpp-python on {os.path.basename(gguf)}")
    service = ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=gguf))
    raw = Llama(
        model_path=gguf, n_ctx=service.engine.context_tokens, n_threads=len(os.sched_getaffinity(0)), verbose=False
    )
    params = validate(temperature=0, max_new_tokens=args.max_new_tokens, repetition_penalty=1.0)
    prompt_ids = service.engine.encode_chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": MESSAGE}]
    )
    print(
        f"# prompt {len(prompt_ids)} tokens, {args.max_new_tokens} new tokens, greedy, threads "
        f"{raw.n_threads} (runtime: {service.engine.llm.n_threads})"
    )
    count = lambda text: len(raw.tokenize(text.encode(), add_bos=False, special=True))  # noqa: E731

    def runtime() -> dict[str, float]:
        return timed(_deltas(service.reply(MESSAGE, [], SYSTEM, params)), count)

    def plain() -> dict[str, float]:
        raw.reset()
        chunks = raw.create_completion(
            prompt=prompt_ids, max_tokens=args.max_new_tokens, temperature=0.0, repeat_penalty=1.0, stream=True
        )
        return timed((c["choices"][0]["text"] for c in chunks), count)

    runtime(), plain()  # warm-up: first calls page weights in
    results = benchlib.interleaved({"finch runtime": runtime, "raw llama-cpp-python": plain}, args.reps)
    benchlib.table(results, "{:.3f}")
    ours, theirs = results["finch runtime"], results["raw llama-cpp-python"]
    # What the runtime does before llama.cpp sees the prompt (validate, neutralize, template, tokenize,
    # trim), timed alone: it is pure Python, so its figure holds even when the machine is busy.
    overhead = []
    for _ in range(20):
        t = time.perf_counter()
        service.engine.encode_chat(service.build_messages(MESSAGE, [], SYSTEM))
        overhead.append(time.perf_counter() - t)
    print(f"# runtime's own work before the first token: {1000 * statistics.median(overhead):.1f} ms (median of 20)")
    print(f"# load average at end: {benchlib.load()}")
    benchlib.ratio("runtime/raw decode tok/s", ours["decode_tok_s"] / theirs["decode_tok_s"], 0.95)
    benchlib.ratio("raw/runtime time to first token", theirs["ttft_s"] / ours["ttft_s"], 0.95)


def _deltas(replies):
    """ChatService yields the reply so far; the timer wants the new text of each step."""
    seen = ""
    for reply in replies:
        yield reply.text[len(seen) :]
        seen = reply.text


if __name__ == "__main__":
    main()
