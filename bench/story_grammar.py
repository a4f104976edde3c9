"""The storymaker's turn grammar on the llama.cpp engine: time to the first scene token,
per-turn time and decode speed with the grammar vs without it (target: the grammar keeps >= 0.90x
of the free decode speed).

    .venv/bin/python bench/story_grammar.py               # embedded SmolLM2 Q4_1, 5 rounds of 4 titles
    .venv/bin/python bench/story_grammar.py --quick       # smoke run

Both sides send the storymaker's own request (its system prompt, an opening request) through the
runtime (ChatService + LlamaCppEngine), greedily, from an empty KV cache; the only difference is
the GBNF grammar in the generation request, which the engine checks each sampled token against
(and applies to the whole vocabulary only when that token breaks it, as llama.cpp's own sampler does),
and the DRY penalty a story turn is asked with. Free text ends where the model stops, the grammar's where the turn shape is complete, so the
per-turn times differ in length too: decode tokens/s is the like-for-like figure.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parents[1]
TITLES = benchlib.story_titles()[:4]


def timed_turn(service, system_prompt: str, request: str, params, count_tokens) -> dict[str, float]:
    """Time to the first scene text, the whole turn's time and decode tokens/s after the first token."""
    from chat_runtime.story import scene_so_far

    start = time.perf_counter()
    first = None
    text = ""
    for reply in service.reply(request, [], system_prompt, params):
        text = reply.text
        if first is None and scene_so_far(text).strip():
            first = time.perf_counter()
    end = time.perf_counter()
    tokens = count_tokens(text)
    return {
        "first_scene_token_s": first - start,
        "turn_s": end - start,
        "decode_tok_s": (tokens - 1) / (end - first),
        "tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="GGUF to run (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument(
        "--reps", type=int, default=5, help="rounds; each tells every title once per side, order alternating"
    )
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 titles, 96 tokens")
    args = parser.parse_args()
    titles = TITLES
    if args.quick:
        args.reps, args.max_new_tokens, titles = 1, 96, TITLES[:2]

    from chat_runtime import ChatService, ModelSpec, embedded, validate
    from chat_runtime.story import DRY_MULTIPLIER, Story, turn_grammar

    gguf = args.gguf or str(embedded.gguf_path())
    benchlib.header(f"story grammar: turns with vs without the turn-shape grammar on {os.path.basename(gguf)}")
    service = ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=gguf))
    llm = service.engine.llm
    system_prompt = (ROOT / "storymaker_app" / "system_prompt.md").read_text(encoding="utf-8").strip()
    free = validate(temperature=0, max_new_tokens=args.max_new_tokens)  # the app's default repetition penalty
    # A turn as the storyteller asks it: the turn-shape grammar and llama.cpp's DRY penalty.
    constrained = replace(free, grammar=turn_grammar(args.max_new_tokens), dry_multiplier=DRY_MULTIPLIER)
    requests = [Story.new(*title).opening_request() for title in titles]
    count = lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=True))  # noqa: E731
    print(
        f"# {len(titles)} titles x {args.reps} rounds, up to {args.max_new_tokens} new tokens, greedy, "
        f"threads {llm.n_threads}"
    )

    def side(params):
        def run() -> dict[str, float]:
            turns = [timed_turn(service, system_prompt, request, params, count) for request in requests]
            return {metric: sum(t[metric] for t in turns) / len(turns) for metric in turns[0]}

        return run

    side(free)()  # warm-up: the first calls page the weights in
    results = benchlib.interleaved({"free text": side(free), "turn grammar": side(constrained)}, args.reps)
    benchlib.table(results, "{:.3f}")
    print(f"# load average at end: {benchlib.load()}")
    grammar, plain = results["turn grammar"], results["free text"]
    benchlib.result("per-turn time with the grammar", 1000 * grammar["turn_s"], "ms")
    benchlib.result("per-turn time without", 1000 * plain["turn_s"], "ms")
    benchlib.ratio(
        "grammar/free time to first scene token",
        grammar["first_scene_token_s"] / plain["first_scene_token_s"],
        1.10,
        higher_is_better=False,
    )
    benchlib.ratio("grammar/free decode tok/s", grammar["decode_tok_s"] / plain["decode_tok_s"], 0.90)


if __name__ == "__main__":
    main()
