"""Seconds per judged pair with the embedded judge (SmolLM2-135M on llama.cpp), as
training/evaluate.py judges: for each prompt, a 1-5 score of both replies and the pairwise verdict
asked in both orders (4 judge calls per pair).

    .venv/bin/python bench/judge_speed.py            # 20 prompts
    .venv/bin/python bench/judge_speed.py --quick    # smoke run: 2 prompts

The two replies per prompt come from the embedded model itself (greedy and sampled), made before
the clock starts; only the judging is timed.
"""

from __future__ import annotations

import argparse
import time

import benchlib

PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for learning a new language.",
    "What is 12 + 30?",
    "Write a haiku about the sea.",
    "Explain what a LoRA adapter is in one sentence.",
    "Name three primary colours.",
    "How many legs does a spider have?",
    "What does a thermometer measure?",
    "Suggest a name for a pet turtle.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Give me a synonym for 'happy'.",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis, briefly?",
    "Recommend one healthy breakfast.",
    "What is the largest planet in the solar system?",
    "How do I reverse a list in Python?",
    "What is a prime number?",
    "Describe a cat in five words.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--reply_tokens", type=int, default=64, help="length of the replies being judged")
    parser.add_argument("--judge_max_new_tokens", type=int, default=64, help="evaluate.py's default")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, short replies and judge answers")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.reply_tokens, args.judge_max_new_tokens = 2, 16, 8

    from chat_runtime import ChatService, ModelSpec, embedded, validate
    from finetune.judge import Judge, JudgeSpec, load_rubric

    benchlib.header("judging speed: the embedded judge on llama.cpp, seconds per judged pair")
    prompts = PROMPTS[: args.prompts]
    service = ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=str(embedded.gguf_path())))
    replies = []
    for prompt in prompts:
        pair = []
        for temperature in (0.0, 1.0):
            params = validate(temperature=temperature, max_new_tokens=args.reply_tokens)
            pair.append([r.text for r in service.reply(prompt, [], None, params)][-1])
        replies.append(pair)
    judge = Judge(JudgeSpec(gguf="embedded"), load_rubric(None), args.judge_max_new_tokens)
    parsed = calls = 0
    start = time.perf_counter()
    for prompt, (a, b) in zip(prompts, replies):
        conversation = [{"role": "user", "content": prompt}]
        answers = [
            judge.score(conversation, a)[0],
            judge.score(conversation, b)[0],
            judge.compare(conversation, a, b)[0],
            judge.compare(conversation, b, a)[0],
        ]
        calls += len(answers)
        parsed += sum(x is not None for x in answers)
    seconds = time.perf_counter() - start
    print(
        f"# {len(prompts)} pairs, {calls} judge calls, {parsed} answers parsed; load average at end: {benchlib.load()}"
    )
    benchlib.result("seconds per judged pair (2 scores + 2 orders)", seconds / len(prompts), "s")
    benchlib.result("seconds per judge call", seconds / calls, "s")


if __name__ == "__main__":
    main()
