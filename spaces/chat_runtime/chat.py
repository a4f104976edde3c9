"""ChatService: one reply to one conversation, validated, trimmed to the context, streamed,
bounded in concurrency and cancellable. Apps call `reply`; they never touch the engine."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from . import limits
from .engines import Engine, load_engine
from .families import fold_system, system_note
from .params import GenerationParams
from .spec import ModelSpec, from_env
from .templating import Message, neutralize, normalize_history, trim_to_budget

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """The reply so far, how many earlier messages were left out to fit the context, and what the
    engine had to do first that the user should know of (its server restarted), if anything."""

    text: str
    dropped_messages: int = 0
    notice: str = ""


class ChatService:
    """Formats, trims and streams replies from one engine."""

    def __init__(self, engine: Engine, max_concurrent: int | None = None):
        self.engine = engine
        # Replies generated at once (the apps' queue lets this many through): FINCH_MAX_CONCURRENT,
        # else the engine's own number (llama.cpp's server: its slots), else 1.
        self.max_concurrent = max_concurrent or limits.MAX_CONCURRENT_GENERATIONS or engine.max_concurrent
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        self._active = 0
        self._active_lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ModelSpec | None = None) -> "ChatService":
        """Load the model a spec (default: the FINCH_* environment) describes."""
        return cls(load_engine(spec or from_env()))

    @property
    def system_note(self) -> str:
        """How a system prompt reaches this model, for the page."""
        return system_note(self.engine.system_role)

    @property
    def active(self) -> int:
        """Generations running right now (a cancelled one leaves within a token)."""
        return self._active

    def check_message(self, message: object) -> str:
        """The message, stripped, or ValueError saying what to change (empty, too long)."""
        if not isinstance(message, str):
            raise ValueError("message must be text")
        message = message.strip()
        if not message:
            raise ValueError("Type a message first: an empty message has nothing to answer.")
        if len(message) > limits.MAX_MESSAGE_CHARS:
            raise ValueError(
                f"Your message has {len(message):,} characters; the limit is {limits.MAX_MESSAGE_CHARS:,}. "
                "Shorten it or split it over several messages."
            )
        return message

    def build_messages(self, message: str, history: object, system_prompt: str | None) -> list[Message]:
        """The conversation to send: system prompt, earlier turns, the new user message."""
        message = self.check_message(message)
        turns = [m for m in normalize_history(history) if m["role"] != "system"]
        system = (system_prompt or "").strip()
        messages = (
            ([{"role": "system", "content": system}] if system else []) + turns + [{"role": "user", "content": message}]
        )
        # Text from the page or the API is content, never template markup.
        specials = self.engine.special_texts
        return [{"role": m["role"], "content": neutralize(m["content"], specials)} for m in messages]

    def reply(
        self, message: str, history: object, system_prompt: str | None, params: GenerationParams
    ) -> Iterator[Reply]:
        """Stream the reply to `message`. Raises ValueError (before any text) for bad input, or for an
        inference server that cannot answer (the server engine).

        Closing the iterator (a Stop button, a closed tab) cancels generation within one token.
        """
        messages = self.build_messages(message, history, system_prompt)
        budget = self.engine.context_tokens - params.max_new_tokens
        if budget < 1:
            raise ValueError(
                f"max new tokens ({params.max_new_tokens}) leaves no room for the prompt in this model's "
                f"{self.engine.context_tokens}-token context; lower it."
            )
        encoded = []  # the last prompt counted: token ids, or the server engine's ChatPrompt

        def count(candidate: list[Message]) -> int:
            # Trimming sees the system prompt as its own message (always kept); the model sees it as
            # its family takes it.
            encoded[:] = [
                self.engine.encode_chat(fold_system(candidate, self.engine.system_role))
            ]  # the last count is of the kept messages
            return len(encoded[0])

        messages, dropped = trim_to_budget(messages, count, budget)
        if dropped:
            log.info("trimmed %d earlier messages to fit the context", dropped)
        prompt = encoded[0]  # not rendered and tokenized twice: it adds to the time to first token
        cancel = threading.Event()
        with self._slots:
            with self._active_lock:
                self._active += 1
            text, pieces = "", None
            try:
                # Called before the first update: the server engine connects here, so a down server
                # is reported where apps show bad input (the local engines start on the first piece).
                pieces = self.engine.stream(prompt, params, cancel)
                yield Reply("", dropped, getattr(pieces, "notice", ""))
                for piece in pieces:
                    text += piece
                    yield Reply(text, dropped)
            finally:
                cancel.set()
                if pieces is not None:
                    pieces.close()
                with self._active_lock:
                    self._active -= 1
