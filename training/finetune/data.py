"""Instruction data: load (Hub id or local file), detect the format, convert every row to chat
messages, drop and count bad rows, mix sources by weight, split off an eval set.

Formats (detected from the columns, or declared per source):
  sharegpt         `conversations`: [{"from": "human"|"gpt"|"system", "value": ...}]
  messages         `messages`: [{"role": "user"|"assistant"|"system", "content": ...}]
  alpaca           `instruction`, `output` (+ optional `input`)
  prompt_response  `prompt` + `response` (or `completion`)
A preference set (finetune.preference's formats) trains its chosen side: each prompt and the reply
people preferred.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, concatenate_datasets, load_dataset

log = logging.getLogger(__name__)

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
# format -> the columns that identify it; the first format whose columns are all present wins.
SIGNATURES = {
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_response": ("prompt",),
}
LOCAL_LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class BadRow(ValueError):
    """A row that cannot become a conversation; the message is its reason (counted, not fatal)."""


@dataclass
class Prepared:
    """Clean conversations for training and eval, and what was dropped, by reason."""

    train: Dataset
    eval: Dataset | None
    dropped: Counter = field(default_factory=Counter)
    sources: list[dict] = field(default_factory=list)


def load_source(path: str, split: str = "train") -> Dataset:
    """A Hub dataset id or a local json/jsonl/parquet/csv file, as one split."""
    local = Path(path).expanduser()
    if local.suffix.lower() in LOCAL_LOADERS:
        if not local.is_file():
            raise FileNotFoundError(f"dataset file {path} does not exist")
        return load_dataset(LOCAL_LOADERS[local.suffix.lower()], data_files=str(local), split="train")
    try:
        return load_dataset(path, split=split)
    except Exception as err:
        raise RuntimeError(
            f"could not load dataset {path!r} (split {split!r}) from the Hub: {type(err).__name__}. Check the id "
            f"and your network, log in for a gated set (HF_TOKEN), or give a local .jsonl/.json/.parquet/.csv file."
        ) from None


def _expected() -> str:
    return "; ".join(f"{name} ({' + '.join(cols)})" for name, cols in SIGNATURES.items())


def detect_format(columns: list[str]) -> str:
    """The format whose signature columns are present, or a ValueError naming what was found."""
    for name, needed in SIGNATURES.items():
        if all(c in columns for c in needed):
            return name
    raise ValueError(f"no known format: columns found: {sorted(columns)}; expected one of: {_expected()}")


def _text(value: object, what: str) -> str:
    if value is None:
        raise BadRow(f"missing {what}")
    if not isinstance(value, str):
        raise BadRow(f"{what} is not text")
    if not value.strip():
        raise BadRow(f"empty {what}")
    return value


def _turns(items: object, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise BadRow("no turns")
    messages = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRow("turn is not an object")
        raw_role = item.get(role_key)
        if raw_role not in roles:
            raise BadRow(f"unknown role {raw_role!r}" if raw_role is not None else f"missing {role_key}")
        messages.append({"role": roles[raw_role], "content": _text(item.get(text_key), "turn")})
    return messages


def to_messages(row: dict, fmt: str) -> list[dict]:
    """One row as chat messages, or BadRow saying why it cannot be one."""
    if fmt == "sharegpt":
        messages = _turns(row.get("conversations"), "from", "value", SHAREGPT_ROLES)
    elif fmt == "messages":
        messages = _turns(row.get("messages"), "role", "content", MESSAGE_ROLES)
    elif fmt == "alpaca":
        prompt = _text(row.get("instruction"), "instruction")
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise BadRow("input is not text")
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(row.get("output"), "output")},
        ]
    elif fmt == "prompt_response":
        answer = row.get("response", row.get("completion"))
        messages = [
            {"role": "user", "content": _text(row.get("prompt"), "prompt")},
            {"role": "assistant", "content": _text(answer, "response")},
        ]
    else:
        raise ValueError(f"unknown format {fmt!r}: use auto or one of {', '.join(SIGNATURES)}")
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise BadRow("system turn after the start")
    if "user" not in roles:
        raise BadRow("no user turn")
    if roles[-1] != "assistant":
        raise BadRow("does not end with the assistant")
    return messages


def _convert_batch(batch: dict, fmt: str) -> dict:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    out = {"messages": [], "bad_reason": []}
    for row in rows:
        try:
            out["messages"].append(to_messages(row, fmt))
            out["bad_reason"].append("")
        except BadRow as bad:
            out["messages"].append([])
            out["bad_reason"].append(str(bad))
    return out


def convert(dataset: Dataset, fmt: str, num_proc: int | None = None) -> tuple[Dataset, Counter]:
    """Rows -> `messages`, with bad rows dropped and counted by reason."""
    from . import preference  # it builds on this module's row checks

    if fmt in preference.FORMATS or (fmt == "auto" and preference.detect(dataset.column_names)):
        return preference.chosen_transcripts(dataset, fmt, num_proc)
    if fmt == "auto":
        fmt = detect_format(dataset.column_names)
    converted = dataset.map(
        _convert_batch,
        fn_kwargs={"fmt": fmt},
        batched=True,
        batch_size=2000,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=f"Converting ({fmt})",
    )
    reasons = Counter(r for r in converted["bad_reason"] if r)
    clean = converted.filter(
        lambda rs: [not r for r in rs], input_columns="bad_reason", batched=True, batch_size=10_000, num_proc=num_proc
    )
    return clean.remove_columns("bad_reason"), reasons


def prepare(
    paths: list[str],
    formats: list[str],
    weights: list[float],
    eval_fraction: float,
    seed: int,
    max_rows: int | None = None,
    split: str = "train",
    num_proc: int | None = None,
    converter: Callable[..., tuple[Dataset, Counter]] = convert,
    expected: Callable[[], str] = _expected,
    eval_max_rows: int = 0,
) -> Prepared:
    """Load, convert, mix and split; fail before any model is loaded if nothing usable is left.
    `converter` / `expected`: the row conversion and its formats (instruction rows by default).
    `eval_max_rows`: evaluate on at most this many held-out rows (the rest stay held out, unused)."""
    formats = formats or ["auto"]
    weights = weights or [1.0]
    if len(formats) == 1:
        formats = formats * len(paths)
    if len(weights) == 1:
        weights = weights * len(paths)
    if len(formats) != len(paths) or len(weights) != len(paths):
        raise ValueError(
            f"{len(paths)} datasets but {len(formats)} formats and {len(weights)} weights: give one each (or one for all)"
        )
    parts, dropped, sources = [], Counter(), []
    for path, fmt, weight in zip(paths, formats, weights):
        if weight <= 0:
            raise ValueError(f"dataset weight for {path} must be positive, got {weight}")
        raw = load_source(path, split)
        try:
            clean, reasons = converter(raw, fmt, num_proc)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        dropped.update(reasons)
        take = round(len(clean) * weight)
        if take and take != len(clean):  # weight < 1 subsamples, > 1 repeats
            order = [i % len(clean) for i in range(take)]
            clean = clean.shuffle(seed=seed).select(order)
        sources.append(
            {"dataset": path, "rows": len(raw), "usable": len(clean), "weight": weight, "dropped": dict(reasons)}
        )
        if len(clean):
            parts.append(clean)
    if not parts:
        columns = sorted(load_source(paths[0], split).column_names)
        raise ValueError(
            f"no usable rows in {', '.join(paths)} (dropped: {dict(dropped) or 'none'}); columns found: {columns}. "
            f"Expected one of: {expected()}."
        )
    mixed = concatenate_datasets(parts).shuffle(seed=seed)
    if max_rows:
        mixed = mixed.select(range(min(max_rows, len(mixed))))
    if eval_fraction and len(mixed) >= 2:
        split_sets = mixed.train_test_split(test_size=eval_fraction, seed=seed)
        held_out = split_sets["test"]  # already in a seeded random order: its first rows are a fixed sample
        if eval_max_rows and len(held_out) > eval_max_rows:
            held_out = held_out.select(range(eval_max_rows))
        return Prepared(split_sets["train"], held_out, dropped, sources)
    return Prepared(mixed, None, dropped, sources)
