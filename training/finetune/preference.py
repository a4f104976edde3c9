"""Preference data: rows of a prompt with a chosen and a rejected reply, from several formats, as
`prompt` (chat messages up to the user's turn) + `chosen` + `rejected` (reply texts). Bad rows are
dropped and counted by reason; nothing here needs a tokenizer or a model.

Formats (detected from the columns, or declared with --dataset_format):
  votes          the chatbot's vote rows (`kind` compare | like | dislike, `prompt` messages, ...):
                 compare rows by their choice; a liked and a disliked reply to the same prompt pair up
  ultrafeedback  UltraFeedback-binarized: `chosen` / `rejected` conversations + `score_chosen` / `score_rejected`
  preference     `prompt` + `chosen` + `rejected`, each text or chat messages (trl's own preference format)
  hh             Anthropic HH: `chosen` / `rejected` transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...")
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import NamedTuple

from datasets import Dataset

from .data import MESSAGE_ROLES, BadRow, _text, _turns

SIGNATURES = {  # checked in this order: the first whose columns are all present wins
    "votes": ("kind", "prompt"),
    "ultrafeedback": ("chosen", "rejected", "score_chosen", "score_rejected"),
    "preference": ("prompt", "chosen", "rejected"),
    "hh": ("chosen", "rejected"),
}
FORMATS = tuple(SIGNATURES)
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
VOTE_SIDES = {"left": ("left", "right"), "right": ("right", "left")}


class Pair(NamedTuple):
    """One preference: the conversation so far, and the reply preferred over the other."""

    prompt: list[dict]
    chosen: str
    rejected: str


def detect(columns: list[str]) -> str | None:
    """The preference format these columns hold, or None when they hold no preference data."""
    for name, needed in SIGNATURES.items():
        if all(c in columns for c in needed):
            return name
    return None


def expected() -> str:
    return "; ".join(f"{name} ({' + '.join(cols)})" for name, cols in SIGNATURES.items())


def _messages(value: object) -> list[dict]:
    return _turns(value, "role", "content", MESSAGE_ROLES)


def _prompt(value: object) -> list[dict]:
    """A prompt given as text (one user turn) or as chat messages ending with the user."""
    if isinstance(value, str) or value is None:
        return [{"role": "user", "content": _text(value, "prompt")}]
    messages = _messages(value)
    if messages[-1]["role"] != "user":
        raise BadRow("prompt does not end with the user")
    return messages


def _reply(side: object, prompt: list[dict], name: str) -> str:
    """A side's reply: text, one assistant message, or the whole conversation (which must begin with
    the prompt and end with one assistant turn)."""
    if isinstance(side, str) or side is None:
        return _text(side, name)
    if isinstance(side, list) and not side:
        raise BadRow(f"empty {name}")
    messages = _messages(side)
    if len(messages) > 1 and messages[:-1] != prompt:
        raise BadRow("prompt differs between the two sides")
    if messages[-1]["role"] != "assistant":
        raise BadRow(f"{name} does not end with the assistant")
    return messages[-1]["content"]


def _split_conversation(side: object, name: str) -> tuple[list[dict], str]:
    """A whole conversation (prompt turns + the reply) as (prompt, reply)."""
    if isinstance(side, list) and not side:
        raise BadRow(f"empty {name}")
    messages = _messages(side)
    if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
        raise BadRow(f"{name} is not a conversation ending with a user turn and a reply")
    return messages[:-1], _text(messages[-1]["content"], name)


def _hh_turns(transcript: object, name: str) -> list[dict]:
    text = _text(transcript, name)
    pieces = HH_TURN.split("\n\n" + text.lstrip("\n"))  # some transcripts lose their leading blank line
    if pieces[0].strip() or len(pieces) < 3:
        raise BadRow(f"{name} is not a Human/Assistant transcript")
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(pieces[1::2], pieces[2::2])]


def _from_hh(row: dict) -> Pair:
    sides = {}
    for name in ("chosen", "rejected"):
        turns = _hh_turns(row.get(name), name)
        if turns[-1]["role"] != "assistant":
            raise BadRow(f"{name} does not end with the assistant")
        if not turns[-1]["content"]:
            raise BadRow(f"empty {name}")
        sides[name] = turns
    if sides["chosen"][:-1] != sides["rejected"][:-1]:
        raise BadRow("prompt differs between the two sides")
    prompt = sides["chosen"][:-1]
    if not prompt or prompt[-1]["role"] != "user" or any(not t["content"] for t in prompt):
        raise BadRow("prompt does not end with the user")
    return Pair(prompt, sides["chosen"][-1]["content"], sides["rejected"][-1]["content"])


def _from_ultrafeedback(row: dict) -> Pair:
    if row.get("score_chosen") is not None and row.get("score_chosen") == row.get("score_rejected"):
        raise BadRow("tie")
    prompt, chosen = _split_conversation(row.get("chosen"), "chosen")
    other, rejected = _split_conversation(row.get("rejected"), "rejected")
    if other != prompt or (
        isinstance(row.get("prompt"), str) and row["prompt"].strip() != prompt[-1]["content"].strip()
    ):
        raise BadRow("prompt differs between the two sides")
    return Pair(prompt, chosen, rejected)


def _from_preference(row: dict) -> Pair:
    if row.get("prompt") is None and isinstance(row.get("chosen"), list):  # the prompt implicit in both sides
        prompt, chosen = _split_conversation(row.get("chosen"), "chosen")
        other, rejected = _split_conversation(row.get("rejected"), "rejected")
        if other != prompt:
            raise BadRow("prompt differs between the two sides")
        return Pair(prompt, chosen, rejected)
    prompt = _prompt(row.get("prompt"))
    return Pair(prompt, _reply(row.get("chosen"), prompt, "chosen"), _reply(row.get("rejected"), prompt, "rejected"))


def _from_compare(row: dict) -> Pair:
    choice = row.get("choice")
    if choice == "tie":
        raise BadRow("tie")
    if choice not in VOTE_SIDES:
        raise BadRow(f"unknown choice {choice!r}")
    win, lose = VOTE_SIDES[choice]
    prompt = _prompt(row.get("prompt"))
    sides = {
        name: (row.get(side) or {}).get("reply") if isinstance(row.get(side), dict) else None
        for name, side in (("chosen", win), ("rejected", lose))
    }
    return Pair(prompt, _text(sides["chosen"], "chosen"), _text(sides["rejected"], "rejected"))


ROW_READERS = {"ultrafeedback": _from_ultrafeedback, "preference": _from_preference, "hh": _from_hh}


def check(pair: Pair) -> Pair:
    """Refuse a pair that teaches nothing."""
    for name, reply in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not reply.strip():
            raise BadRow(f"empty {name}")
    if pair.chosen.strip() == pair.rejected.strip():
        raise BadRow("identical chosen and rejected")
    if "system" in [m["role"] for m in pair.prompt[1:]]:
        raise BadRow("system turn after the start")
    return pair


def votes_to_pairs(rows: list[dict]) -> tuple[list[Pair], Counter]:
    """Vote rows as pairs: compare rows by their choice; likes and dislikes of replies to the same
    prompt paired one to one, in the order they were given (the rest counted as unpaired)."""
    pairs, dropped = [], Counter()
    likes: dict[str, dict[str, list]] = {}
    for row in rows:
        kind = row.get("kind")
        try:
            if kind == "compare":
                pairs.append(check(_from_compare(row)))
            elif kind in ("like", "dislike"):
                prompt = _prompt(row.get("prompt"))
                reply = _text(row.get("reply"), "reply")
                key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
                likes.setdefault(key, {"like": [], "dislike": []})[kind].append((prompt, reply))
            else:
                raise BadRow(f"unknown vote kind {kind!r}")
        except BadRow as bad:
            dropped[str(bad)] += 1
    for votes in likes.values():
        for (prompt, chosen), (_, rejected) in zip(votes["like"], votes["dislike"]):
            try:
                pairs.append(check(Pair(prompt, chosen, rejected)))
            except BadRow as bad:
                dropped[str(bad)] += 1
        unpaired = abs(len(votes["like"]) - len(votes["dislike"]))
        if unpaired:
            dropped["unpaired like/dislike"] += unpaired
    return pairs, dropped


def to_pairs(rows: list[dict], fmt: str) -> tuple[list[Pair], Counter]:
    """Rows of one format as pairs, with the bad ones counted by reason."""
    if fmt == "votes":
        return votes_to_pairs(rows)
    if fmt not in ROW_READERS:
        raise ValueError(f"unknown preference format {fmt!r}: use auto or one of {', '.join(FORMATS)}")
    pairs, dropped = [], Counter()
    for row in rows:
        try:
            pairs.append(check(ROW_READERS[fmt](row)))
        except BadRow as bad:
            dropped[str(bad)] += 1
    return pairs, dropped


def _resolve(dataset: Dataset, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = detect(dataset.column_names)
    if found is None:
        raise ValueError(
            f"no preference format: columns found: {sorted(dataset.column_names)}; expected one of: {expected()}"
        )
    return found


def convert(dataset: Dataset, fmt: str, num_proc: int | None = None) -> tuple[Dataset, Counter]:
    """Rows -> `prompt` (messages) + `chosen` + `rejected` (texts), bad rows dropped and counted.
    (Preference sets are small next to instruction sets: one pass in Python; num_proc is unused.)"""
    pairs, dropped = to_pairs(dataset.to_list(), _resolve(dataset, fmt))
    rows = {
        "prompt": [p.prompt for p in pairs],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
    }
    return Dataset.from_dict(rows), dropped


def chosen_transcripts(dataset: Dataset, fmt: str, num_proc: int | None = None) -> tuple[Dataset, Counter]:
    """A preference set as SFT conversations: each prompt followed by its chosen reply."""
    pairs, dropped = convert(dataset, fmt, num_proc)
    messages = [
        prompt + [{"role": "assistant", "content": chosen}] for prompt, chosen in zip(pairs["prompt"], pairs["chosen"])
    ]
    return Dataset.from_dict({"messages": messages}), dropped
