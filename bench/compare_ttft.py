"""Time to first token of the chatbot's compare page (two models streaming side by side) against
the single chatbot, both through Gradio (gradio_client, the same message and settings).

    .venv/bin/python bench/compare_ttft.py            # embedded GGUF on both sides, 5 rounds
    .venv/bin/python bench/compare_ttft.py --quick    # smoke run: 2 rounds

Both apps run as `python chatbot_app/app.py`; the compare page with FINCH_COMPARE set to the
embedded GGUF, so both sides are the same model and the difference is the cost of running two.
Rounds alternate between the apps. Figures: first text on either side, and on both sides.
"""

from __future__ import annotations

import os
import time

import benchlib
from gradio_ttft import MESSAGE, SYSTEM, free_port, start_app


def has_reply(chat) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "assistant" and m.get("content") for m in chat or [])


def main() -> None:
    args = benchlib.ttft_arguments(__doc__, reps=5)

    from gradio_client import Client

    from chat_runtime import embedded

    benchlib.header("time to first token: compare page (two models) vs the single chatbot, through Gradio")
    single_port, compare_port = free_port(), free_port()
    apps = [start_app(single_port)]
    os.environ["FINCH_COMPARE"] = str(embedded.gguf_path())
    try:
        apps.append(start_app(compare_port))
    finally:
        del os.environ["FINCH_COMPARE"]
    try:
        single = Client(f"http://127.0.0.1:{single_port}/", verbose=False)
        pair = Client(f"http://127.0.0.1:{compare_port}/", verbose=False)

        def chatbot() -> dict[str, float]:
            single.reset_session()
            start = time.perf_counter()
            job = single.submit(
                message=MESSAGE,
                system_prompt=SYSTEM,
                temperature=0,
                max_new_tokens=args.max_new_tokens,
                api_name="/chat",
            )
            first = next(time.perf_counter() for partial in job if partial)
            job.result()
            return {"first_ms": 1000 * (first - start), "both_ms": 1000 * (first - start)}

        def compare() -> dict[str, float]:
            start = time.perf_counter()
            # message, system prompt, temperature, top-p, max new tokens, repetition penalty
            job = pair.submit(MESSAGE, SYSTEM, 0, 0.9, args.max_new_tokens, 1.1, api_name="/compare")
            first = both = None
            for left, right, *_ in job:
                now = time.perf_counter()
                if first is None and (has_reply(left) or has_reply(right)):
                    first = now
                if both is None and has_reply(left) and has_reply(right):
                    both = now
            if first is None or both is None:
                raise RuntimeError("the compare page streamed no reply on one side; see its log")
            return {"first_ms": 1000 * (first - start), "both_ms": 1000 * (both - start)}

        chatbot(), compare()  # warm-up
        results = benchlib.interleaved({"single chatbot": chatbot, "compare page": compare}, args.reps)
    finally:
        for app in apps:
            app.terminate()
            app.wait(10)
    benchlib.table(results, "{:.1f}")
    print(f"# load average at end: {benchlib.load()}")
    benchlib.result("single chatbot time to first token", results["single chatbot"]["first_ms"], "ms")
    benchlib.result("compare page time to first token (either side)", results["compare page"]["first_ms"], "ms")
    benchlib.result("compare page time to first token (both sides)", results["compare page"]["both_ms"], "ms")


if __name__ == "__main__":
    main()
