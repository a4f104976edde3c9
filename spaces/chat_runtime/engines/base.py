"""The small interface every engine implements. Engines know nothing about Gradio or chat
history: they turn messages into token ids with the model's template, and stream text for ids."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from ..params import GenerationParams
from ..templating import Message


class Engine(Protocol):
    """A loaded model that can format a chat and stream a reply."""

    name: str  # "transformers" or "llamacpp"
    label: str  # what the page shows: model, adapter, engine, device
    context_tokens: int  # prompt + reply must fit in this many tokens
    special_texts: frozenset[str]  # control-token strings a user's text must not be able to forge

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation, rendered by the model's own chat template."""
        ...

    def stream(self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event) -> Iterator[str]:
        """Yield the reply's text in pieces; stop at EOS, at max_new_tokens, or soon after `cancel` is set."""
        ...
