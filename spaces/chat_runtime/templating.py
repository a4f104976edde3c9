"""The one chat-formatting module: messages -> prompt text by the model's own chat template.

Both engines and the trainer render through `render`, which is transformers' own Jinja renderer
(the code behind `tokenizer.apply_chat_template`), so a conversation becomes the same text, and
the same token ids, in training, on a Space and in a GGUF. A model without a template is refused:
a silent fallback format is how fine-tunes drift between training and serving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from . import families

ROLES = ("system", "user", "assistant")
Message = dict[str, str]


def render(
    template: str | None,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """Render messages with a chat template exactly as `tokenizer.apply_chat_template` would."""
    if not template:
        raise ValueError(
            "this model carries no chat template (tokenizer_config / GGUF `tokenizer.chat_template`); "
            "use an instruct model, or export the GGUF with gguf/export.py, which writes the template in"
        )
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[list(messages)],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **(special_tokens or {}),
    )
    return rendered[0]


class Segment(NamedTuple):
    """A stretch of the rendered conversation; `reply` marks an assistant reply (+ its EOS)."""

    text: str
    reply: bool


def segments(
    template: str | None,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    special_tokens: dict[str, str] | None = None,
) -> list[Segment]:
    """The rendered conversation cut at the edges of every assistant reply.

    Engines and the trainer tokenize segment by segment, so a reply's first token never merges
    with the generation prompt before it: the prompt ids a Space sends are exactly the ids the
    model was trained on, whatever the tokenizer. A reply runs from the end of the generation
    prompt to the end of the end-of-turn token the template writes after it (the family's, see
    `families`, else the EOS; whitespace after it is scaffolding, in the next segment, except where
    the token eats it when tokenized: then in the reply's, where it gives no ids). Where the template writes an
    earlier turn's header differently from the generation prompt (Qwen3 drops the empty think block
    from past replies), that reply starts at its own text: what the template adds is never trained.
    """
    special_tokens = special_tokens or {}
    end_mark = families.end_of_turn(template) or special_tokens.get("eos_token") or ""
    eats_space = families.strips_after_end_of_turn(template)
    full = render(template, messages, add_generation_prompt=add_generation_prompt, special_tokens=special_tokens)
    cuts: list[Segment] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i == 0:
            continue
        before = render(template, messages[:i], add_generation_prompt=True, special_tokens=special_tokens)
        start = len(before) if full.startswith(before) and len(before) >= done else _find_reply(full, message, done)
        end = full.find(end_mark, start) + len(end_mark) if end_mark and end_mark in full[start:] else -1
        if end != -1 and eats_space:  # tokenized with the token, that whitespace gives no ids
            end += len(full[end:]) - len(full[end:].lstrip())
        if end == -1:  # no end-of-turn marker after the reply: it runs to where the next turn starts
            upto = render(template, messages[: i + 1], add_generation_prompt=False, special_tokens=special_tokens)
            if not full.startswith(upto):
                raise ValueError(NOT_TURN_BY_TURN)
            end = len(upto)
        cuts += [Segment(full[done:start], False), Segment(full[start:end], True)]
        done = end
    cuts.append(Segment(full[done:], False))
    return [c for c in cuts if c.text]


NOT_TURN_BY_TURN = (
    "this chat template does not render turn by turn (a conversation's text is not a prefix of its "
    "continuation), so replies cannot be located; use an instruct model's standard template"
)


def _find_reply(full: str, message: Message, done: int) -> int:
    """Where a reply's own text starts in the rendered conversation, after `done`."""
    text = (message.get("content") or "").strip()
    at = full.find(text, done) if text else -1
    if at == -1:
        raise ValueError(NOT_TURN_BY_TURN)
    return at


def encode(parts: Sequence[Segment], tokenize: Callable[[str], list[int]]) -> tuple[list[int], list[bool]]:
    """Token ids of the segments, tokenized one by one, and which ids belong to replies."""
    ids: list[int] = []
    mask: list[bool] = []
    for part in parts:
        piece = tokenize(part.text)
        ids += piece
        mask += [part.reply] * len(piece)
    return ids, mask


def neutralize(text: str, special_texts: frozenset[str] | set[str]) -> str:
    """Make a user's text unable to forge template markers: any special-token string in it (say
    `<|im_end|>` followed by a fake system turn) gets a zero-width space after its first
    character, so it tokenizes as plain text instead of as the control token."""
    for special in special_texts:
        if special and special in text:
            text = text.replace(special, special[0] + "\u200b" + special[1:])
    return text


def _text_of(content: object) -> str:
    """Text of a message's content: a string, or Gradio's list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, (list, tuple)):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type", "text") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict) and "text" not in block:
                continue  # a file or image block: this product's models read text only
            else:
                raise ValueError(f"unsupported message content block: {str(block)[:80]!r}")
        return "".join(parts)
    raise ValueError(f"message content must be text, got {type(content).__name__}")


def normalize_history(history: object) -> list[Message]:
    """Turn a chat history (Gradio 'messages' format, or role/content dicts) into plain messages.

    Raise ValueError, saying what is wrong, for anything that is not a list of role/content turns.
    """
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise ValueError("history must be a list of {'role': ..., 'content': ...} messages")
    messages: list[Message] = []
    for i, item in enumerate(history):
        if not isinstance(item, dict) or "role" not in item:
            raise ValueError(f"history item {i} must be a dict with 'role' and 'content', got {str(item)[:80]!r}")
        role = item["role"]
        if isinstance(item.get("metadata"), dict) and item["metadata"].get("title"):
            continue  # a UI notice or "thought" block shown beside the chat, not a turn of it
        if role not in ROLES:
            raise ValueError(f"history item {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        text = _text_of(item.get("content"))
        if messages and messages[-1]["role"] == role and role != "system":
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n" + text}  # Gradio splits long turns
        else:
            messages.append({"role": role, "content": text})
    return messages


def trim_to_budget(
    messages: list[Message], count_tokens: Callable[[list[Message]], int], budget: int
) -> tuple[list[Message], int]:
    """Drop the oldest whole turns until the prompt fits `budget` tokens.

    The system prompt and the last user message are always kept. Returns the trimmed messages and
    how many messages were dropped; raises ValueError when even system + last message do not fit.
    `count_tokens` is last called on the messages returned, so a caller may keep what it encoded.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    dropped = 0
    while True:
        candidate = system + turns
        used = count_tokens(candidate)
        if used <= budget:
            return candidate, dropped
        if len(turns) <= 1:
            raise ValueError(
                f"the message is too long for this model: the prompt needs {used} tokens and the context leaves "
                f"{budget} after the reply. Shorten the message or the system prompt, or lower max new tokens."
            )
        # Drop up to the next user turn so the conversation still starts with the user.
        cut = 1
        while cut < len(turns) - 1 and turns[cut]["role"] != "user":
            cut += 1
        dropped += cut
        turns = turns[cut:]
