"""People's votes on replies, saved as preference rows for preference training.

One JSON object per line (the vote-row contract):
  compare page:  {"kind": "compare", "prompt": [...], "left": {"model", "reply"}, "right": {"model", "reply"},
                  "choice": "left" | "right" | "tie", "settings": {...}, "time": "<ISO 8601 UTC>"}
  like buttons:  {"kind": "like" | "dislike", "prompt": [...], "reply": "...", "model": "...",
                  "settings": {...}, "time": "..."}
`prompt` is the conversation up to and including the user's turn that was answered, with the
system prompt first when one was set.

Where they go (environment variables, as a Space sets them):
  FINCH_VOTES_FILE     local JSONL file (default `votes.jsonl` in the working folder)
  FINCH_VOTES_DATASET  a Hub dataset (`you/finch-votes`): votes are also written to a folder that
                       huggingface_hub's CommitScheduler uploads in the background
  FINCH_VOTES_EVERY    minutes between those uploads (default 5)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from .params import RANGES, GenerationParams
from .templating import Message, normalize_history

log = logging.getLogger(__name__)


def settings_of(params: GenerationParams) -> dict:
    """The sampling settings a person chose (the sliders), as a vote row keeps them."""
    return {name: value for name, value in asdict(params).items() if name in RANGES}


CHOICES = ("left", "right", "tie")
UPLOAD_DIR = "votes_upload"  # the folder the scheduler uploads, beside the local votes file
PATH_IN_REPO = "data"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def compare_row(
    prompt: list[Message], left: tuple[str, str], right: tuple[str, str], choice: str, params: GenerationParams
) -> dict:
    """A compare vote: `left` and `right` are (model label, reply)."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    return {
        "kind": "compare",
        "prompt": list(prompt),
        "left": {"model": left[0], "reply": left[1]},
        "right": {"model": right[0], "reply": right[1]},
        "choice": choice,
        "settings": settings_of(params),
        "time": _now(),
    }


def like_row(prompt: list[Message], reply: str, model: str, liked: bool, params: GenerationParams) -> dict:
    """A like or dislike of one reply."""
    return {
        "kind": "like" if liked else "dislike",
        "prompt": list(prompt),
        "reply": reply,
        "model": model,
        "settings": settings_of(params),
        "time": _now(),
    }


def liked_turn(history: object, index: int, system_prompt: str | None) -> tuple[list[Message], str]:
    """(the prompt, the reply) for a like on the chat's message at `index`: the conversation before
    that reply, system prompt first, and the reply's text."""
    if not isinstance(history, list) or not 0 <= index < len(history):
        raise ValueError(f"no message at index {index} of the chat")
    prompt = [m for m in normalize_history(history[:index]) if m["role"] != "system"]
    while prompt and prompt[-1]["role"] != "user":  # a reply split over several messages: start at its turn
        prompt.pop()
    system = (system_prompt or "").strip()
    reply = normalize_history([history[index]])
    return ([{"role": "system", "content": system}] if system else []) + prompt, reply[0]["content"] if reply else ""


class VoteStore:
    """Appends vote rows to a local JSONL file and, with a Hub dataset, to the scheduler's folder."""

    def __init__(self, path: str | Path, dataset: str | None = None, every_minutes: float = 5.0):
        self.path = Path(path).expanduser().resolve()
        self.dataset = dataset
        self.scheduler = None
        self.upload_file: Path | None = None
        self._lock = threading.Lock()
        if dataset:
            # One file per replica, so two Space replicas never write to the same file in the repo.
            folder = self.path.parent / UPLOAD_DIR
            folder.mkdir(parents=True, exist_ok=True)
            self.upload_file = folder / f"votes-{uuid.uuid4().hex}.jsonl"
            self.scheduler = self._schedule(folder, dataset, every_minutes)

    @staticmethod
    def _schedule(folder: Path, dataset: str, every_minutes: float):
        """huggingface_hub's CommitScheduler on `folder`; None (votes stay local) when the Hub is out of reach."""
        from huggingface_hub import CommitScheduler

        from .hub import describe_error

        try:
            return CommitScheduler(
                repo_id=dataset,
                repo_type="dataset",
                folder_path=folder,
                path_in_repo=PATH_IN_REPO,
                every=every_minutes,
                private=True,
                allow_patterns=["*.jsonl"],
            )
        except Exception as err:  # offline, no token, no write access: the local file still has every vote
            log.warning(
                "votes will not be uploaded to the dataset %s (%s); they are kept in %s",
                dataset,
                describe_error(err, os.environ.get("HF_TOKEN")),
                folder,
            )
            return None

    @classmethod
    def from_env(cls) -> "VoteStore":
        every = float(os.environ.get("FINCH_VOTES_EVERY") or 5)
        return cls(
            os.environ.get("FINCH_VOTES_FILE") or "votes.jsonl",
            (os.environ.get("FINCH_VOTES_DATASET") or "").strip() or None,
            every,
        )

    @property
    def notice(self) -> str:
        """The line the page shows so people know their votes are kept."""
        where = f"the Hub dataset {self.dataset}" if self.scheduler else "this app's server"
        return f"Your votes and likes are collected (saved on {where}) to improve the model."

    def add(self, row: dict) -> None:
        """Append one row to every destination (a whole line, flushed: a crash loses at most this vote)."""
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line)
            if self.upload_file:
                # The scheduler's lock: never upload a half-written line.
                lock = self.scheduler.lock if self.scheduler else threading.Lock()
                with lock, open(self.upload_file, "a") as f:
                    f.write(line)
