"""Storyteller quality by a rubric: the opening turns of twenty titles (genres and tones mixed),
each scored on five checks, for the base model and for a fine-tune (e.g. the storyteller recipe's
adapter), on the transformers engine with the turn grammar.

    .venv/bin/python bench/story_rubric.py --adapter runs/cpu-smollm2-story/adapter
    .venv/bin/python bench/story_rubric.py --quick        # base only, 3 titles

The checks, each 0 or 1 per turn (the score is their mean over turns and checks):
  shape    the reply was in the turn shape (no fallback was needed)
  you      the scene speaks to the player ("you", "your")
  story    the scene tells, not talks about telling (no "story", "title", "scene", "genre", "tone",
           "choice", "narrator": the base model often writes "The story begins with...")
  distinct three or more different choices were offered
  actions  no choice was dropped as a copy of the scene
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parents[1]
TITLES = benchlib.story_titles()
META = re.compile(r"\b(story|stories|title|scene|genre|tone|choices?|narrator)\b", re.IGNORECASE)
YOU = re.compile(r"\byou(r|rs|rself)?\b", re.IGNORECASE)
CHECKS = ("shape", "you", "story", "distinct", "actions")


def rubric(turn, copies_dropped: int) -> dict[str, int]:
    """The five checks of one turn (1 = met)."""
    return {
        "shape": int(turn.choices_from == "model"),
        "you": int(bool(YOU.search(turn.scene))),
        "story": int(not META.search(turn.scene)),
        "distinct": int(len(set(turn.choices)) >= 3),
        "actions": int(copies_dropped == 0),
    }


def score(service, system_prompt: str, titles, max_new_tokens: int) -> dict[str, float]:
    """Mean of each check over the opening turns of `titles`, and the overall score."""
    from chat_runtime import GenerationParams
    from chat_runtime.story import FALLBACKS, Story, StoryTeller

    teller = StoryTeller(service, system_prompt)
    params = GenerationParams(temperature=0.0, max_new_tokens=max_new_tokens)
    totals = dict.fromkeys(CHECKS, 0)
    for title in titles:
        copied = FALLBACKS["copied"]
        *_, last = teller.tell(Story.new(*title), None, params)
        for check, met in rubric(last.turn, FALLBACKS["copied"] - copied).items():
            totals[check] += met
        print(f"# {title[0]}: {last.turn.scene[:90]!r} -> {last.turn.choices}", flush=True)
    means = {check: totals[check] / len(titles) for check in CHECKS}
    return {**means, "score": sum(means.values()) / len(CHECKS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder to compare with its base")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--quick", action="store_true", help="smoke run: the base model on 3 titles")
    args = parser.parse_args()
    titles = TITLES[:3] if args.quick else TITLES

    from chat_runtime import ChatService, ModelSpec, embedded
    from chat_runtime.spec import base_of_adapter

    system_prompt = (ROOT / "storymaker_app" / "system_prompt.md").read_text(encoding="utf-8").strip()
    base = base_of_adapter(args.adapter) if args.adapter else str(embedded.hf_dir())
    benchlib.header(
        f"story rubric: {len(titles)} opening turns, base {Path(base).name}"
        + (f" vs adapter {args.adapter}" if args.adapter else "")
    )
    rows = {"base": score(ChatService.from_spec(ModelSpec(base=base)), system_prompt, titles, args.max_new_tokens)}
    if args.adapter:
        adapted = ChatService.from_spec(ModelSpec(adapter=args.adapter))
        rows["adapter"] = score(adapted, system_prompt, titles, args.max_new_tokens)
    benchlib.table(rows)
    print(f"# load average at end: {benchlib.load()}")
    benchlib.result("rubric score, base", 100 * rows["base"]["score"], "%")
    if args.adapter:
        benchlib.result("rubric score, adapter", 100 * rows["adapter"]["score"], "%")


if __name__ == "__main__":
    main()
