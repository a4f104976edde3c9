"""Check that the installed llama.cpp decodes a quantized GGUF correctly on this CPU.

    .venv/bin/python scripts/check_llama_build.py [GGUF]

A prompt evaluated in one batch must give the same greedy reply as the same prompt fed one token at
a time: the two take different kernels (batched matrix products against single-row dot products),
and a build whose batched kernels are wrong on this CPU answers nonsense while loading and running
without an error. On AVX2 CPUs without AVX-VNNI (an AMD EPYC of the Zen 3 kind), llama.cpp 0.3.36's
AVX2 build evaluates a Q4_1 or Q4_K_M prompt wrongly in batches of 4 or more tokens; the build
without AVX2 is right there. scripts/setup.sh runs this after installing, and picks that build when
this check fails. Exit code 0: the two agree; 1: they differ (both replies are printed); 2: it
could not run. Runs in its own process, so a crashing build fails the check, not its caller.
"""

from __future__ import annotations

import argparse
import sys

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
REPLY_TOKENS = 16


def greedy_reply(llm, prompt: list[int], batch: int) -> list[int]:
    """Evaluate the prompt `batch` tokens at a time, then decode REPLY_TOKENS tokens greedily."""
    llm.reset()
    for start in range(0, len(prompt), batch):
        llm.eval(prompt[start : start + batch])
    reply = []
    for _ in range(REPLY_TOKENS):
        token = llm.sample(temp=0.0)
        if llm.token_eos() == token:
            break
        reply.append(token)
        llm.eval([token])
    return reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", help="a quantized GGUF (default: the embedded model, Q4_1)")
    args = parser.parse_args()
    try:
        from chat_runtime import ModelSpec
        from chat_runtime.engines.llamacpp_engine import LlamaCppEngine

        path = args.gguf
        if path is None:
            from chat_runtime import embedded

            path = str(embedded.gguf_path())
        # The runtime's own engine: its templating gives the prompt the chatbot sends, its Llama decodes.
        engine = LlamaCppEngine(ModelSpec(gguf=path))
        prompt, llm = engine.encode_chat(QUESTION), engine.llm
    except Exception as err:  # a missing package or file: say which
        print(f"could not run the check: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    batched, stepwise = greedy_reply(llm, prompt, len(prompt)), greedy_reply(llm, prompt, 1)
    if batched == stepwise:
        print(f"llama.cpp decodes {path} the same in one batch as token by token")
        return 0
    print(
        f"llama.cpp decodes {path} differently in one batch than token by token: its batched kernels "
        f"are wrong on this CPU.\n  batched:        {llm.detokenize(batched).decode(errors='replace')!r}\n"
        f"  token by token: {llm.detokenize(stepwise).decode(errors='replace')!r}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
