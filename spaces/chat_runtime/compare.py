"""Two models answering the same prompt side by side, streamed together (the chatbot's compare mode).

FINCH_COMPARE names the second model, shown on the right of the served one (left):
  base              the served adapter's base model (or the served GGUF without its LoRA GGUF)
  path/file.gguf    a GGUF file (or `owner/repo/file.gguf`), on llama.cpp
  anything else     a LoRA adapter or a model (Hub id or folder), on transformers

Each side streams in its own thread; one side failing ends only that side, with its message.
Closing the stream (Stop, a closed tab) stops both within a token.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .chat import ChatService
from .engines import load_engine
from .params import GenerationParams
from .spec import ModelSpec

SIDES = ("left", "right")
_DONE = object()  # a side's last update


def compare_spec(served: ModelSpec, value: str) -> ModelSpec:
    """The spec FINCH_COMPARE describes, next to the served model's spec."""
    value = value.strip()
    served = served.resolved()
    if value == "base":
        if served.adapter:
            return ModelSpec(
                base=served.base, load_in_4bit=served.load_in_4bit, trust_remote_code=served.trust_remote_code
            )
        if served.gguf and served.gguf_lora:
            return ModelSpec(gguf=served.gguf)
        raise ValueError(
            "FINCH_COMPARE=base compares a fine-tune with its base, but the served model has no adapter "
            "(FINCH_ADAPTER or FINCH_GGUF_LORA): name the model to compare with instead"
        )
    if value.lower().endswith(".gguf"):
        return ModelSpec(gguf=value)
    if (Path(value).expanduser() / "adapter_config.json").is_file() or not Path(value).expanduser().exists():
        return ModelSpec(adapter=value, trust_remote_code=served.trust_remote_code)
    return ModelSpec(base=value, trust_remote_code=served.trust_remote_code)


def services_from_env(served: ChatService, served_spec: ModelSpec) -> dict[str, ChatService] | None:
    """{left: the served model, right: FINCH_COMPARE's}, or None when compare mode is off."""
    value = (os.environ.get("FINCH_COMPARE") or "").strip()
    if not value:
        return None
    return {"left": served, "right": ChatService(load_engine(compare_spec(served_spec, value)))}


@dataclass
class Side:
    """One side's reply so far; `error` is its failure message, `done` once it has finished."""

    text: str = ""
    error: str | None = None
    done: bool = False


@dataclass
class Pair:
    left: Side = field(default_factory=Side)
    right: Side = field(default_factory=Side)

    @property
    def done(self) -> bool:
        return self.left.done and self.right.done


def stream_pair(
    services: dict[str, ChatService], message: str, system_prompt: str | None, params: GenerationParams
) -> Iterator[Pair]:
    """Both replies to one prompt (no earlier turns: each comparison stands alone), as they grow."""
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()
    pair = Pair()

    def run(name: str) -> None:
        stream = None
        try:
            stream = services[name].reply(message, [], system_prompt, params)
            for reply in stream:
                if stop.is_set():
                    break
                updates.put((name, reply.text, None))
        except Exception as err:  # noqa: BLE001 - one side's failure is shown on that side only
            updates.put((name, None, str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"))
        finally:
            if stream is not None:
                stream.close()  # cancels generation in the engine
            updates.put((name, None, _DONE))

    workers = [threading.Thread(target=run, args=(name,), name=f"finch-compare-{name}", daemon=True) for name in SIDES]
    for worker in workers:
        worker.start()
    try:
        while not pair.done:
            name, text, status = updates.get()
            side = getattr(pair, name)
            if status is _DONE:
                side.done = True
            elif status is not None:
                side.error = status
            else:
                side.text = text
            if updates.empty():  # yield the newest state, not every piece, when the page is behind
                yield replace(pair, left=replace(pair.left), right=replace(pair.right))
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)  # each leaves within a token; a hung server is not waited on forever
