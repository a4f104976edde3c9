"""The small interface every engine implements. Engines know nothing about Gradio or chat
history: they turn messages into a prompt and stream text for it. For the local engines a prompt
is token ids by the model's template; for the server engine it is the messages themselves (the
server applies the template) with their token count as `len()`, which is all trimming needs."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence, Sized
from typing import Protocol

from ..params import GenerationParams
from ..templating import Message


class Engine(Protocol):
    """A loaded model that can format a chat and stream a reply."""

    name: str  # "transformers", "llamacpp", "llama-server" or "server"
    max_concurrent: int  # replies it generates at once unless FINCH_MAX_CONCURRENT says otherwise
    label: str  # what the page shows: model, adapter, engine, device
    context_tokens: int  # prompt + reply must fit in this many tokens
    special_texts: frozenset[str]  # control-token strings a user's text must not be able to forge
    system_role: str  # "native" or "fold" (chat_runtime.families): how the model takes a system prompt

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> Sized:
        """The prompt for a conversation (`len()` is its length in tokens)."""
        ...

    def stream(self, prompt: Sized, params: GenerationParams, cancel: threading.Event) -> Iterator[str]:
        """The reply's text in pieces; stop at EOS, at max_new_tokens, or soon after `cancel` is set.
        May raise before returning (a server that is down); closing the pieces ends generation.
        With `params.grammar` (GBNF) the reply follows that grammar, by the engine's own constrained
        decoding; an engine (or server) that has none sends free text, which the caller must expect."""
        ...
