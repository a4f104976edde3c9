"""The terminal chat behind gguf/chat.py: read a line, stream the reply, keep the conversation.

It only talks to the runtime's ChatService (templating, context trimming, cancellation live
there), so the terminal chats exactly as the Space does with the same GGUF.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TextIO

from chat_runtime import ChatService, GenerationParams

HELP = "Type a message. /reset starts a new conversation, /exit or Ctrl-D leaves, Ctrl-C stops a reply (or leaves)."
USER_PROMPT = "you> "
BOT_PREFIX = "bot> "


class ChatSession:
    """One conversation with a loaded model: history, system prompt, sampling settings."""

    def __init__(self, service: ChatService, params: GenerationParams, system_prompt: str | None = None):
        self.service = service
        self.params = params
        self.system_prompt = system_prompt
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self.history = []

    def reply(self, message: str, write: Callable[[str], None]) -> str:
        """Stream the reply to `message` through `write`; return it. Ctrl-C stops it early and keeps
        what was said, so the conversation reads as the user saw it."""
        replies = self.service.reply(message, self.history, self.system_prompt, self.params)
        text, noted = "", False
        try:
            for reply in replies:
                if reply.dropped_messages and not noted:
                    write(f"({reply.dropped_messages} earlier messages left out to fit the context) ")
                    noted = True
                write(reply.text[len(text) :])
                text = reply.text
        except KeyboardInterrupt:
            write(" [stopped]")
        finally:
            replies.close()  # cancels the generation within a token
        self.history += [{"role": "user", "content": message.strip()}, {"role": "assistant", "content": text}]
        return text


def run(session: ChatSession, read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> int:
    """The read-reply loop; returns the exit code. Ctrl-D, Ctrl-C at the prompt and /exit leave cleanly."""

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    # A process started in the background by a shell (`cmd &`, CI runners) inherits SIGINT as
    # ignored, and Python then never raises KeyboardInterrupt: Ctrl-C would not stop a reply.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    write(f"{HELP}\n")
    while True:
        try:
            line = read(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            write("\nbye\n")
            return 0
        command = line.strip().lower()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            write("bye\n")
            return 0
        if command == "/reset":
            session.reset()
            write("(new conversation)\n")
            continue
        if command in ("/help", "/?"):
            write(f"{HELP}\n")
            continue
        write(BOT_PREFIX)
        try:
            session.reply(line, write)
        except ValueError as err:  # too long, too much for the context: say so, keep chatting
            write(f"error: {err}")
        write("\n")
