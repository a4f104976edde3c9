"""Tokenize conversations for SFT with the loss on assistant turns only.

The runtime's one chat renderer cuts each conversation at the edges of its replies
(`chat_runtime.templating.segments`), and training tokenizes those segments exactly as the
engines do, so the model is trained on the very ids a Space or a GGUF sends. Reply segments (each
reply plus the EOS the template writes after it) are trained; everything else is -100. This works
for any template that renders turn by turn (ChatML, Llama 3, ...), needs no `{% generation %}`
markers, and keeps the EOS in the labels even when pad == eos, so the model learns to stop.
The segments are encoded by tiktoken where it gives the tokenizer's very ids (fastbpe), which is
about three times faster per core, and then by one worker process per core on a large set.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

from datasets import Dataset

from chat_runtime import families
from chat_runtime.templating import segments

from . import fastbpe

IGNORE = -100
PARALLEL_ROWS = 50_000  # below this, one process: starting workers costs about as much as they save


class TemplateError(ValueError):
    """The tokenizer has no chat template, or one that does not render turn by turn."""


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added: what `tokenizer(texts, add_special_tokens=False)`
    gives, straight from the Rust tokenizer when there is one (without offsets, masks and the
    per-encoding conversion, about a quarter less time on large sets)."""
    backend = fastbpe.plain_backend(tokenizer)
    if backend is None:  # keep transformers' handling of truncation and padding
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


class RustBatch:
    """`encode_batch` bound to its tokenizer: the encoder where tiktoken cannot stand in."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return encode_batch(self.tokenizer, texts)


def encoder(tokenizer, sample: list[str] = ()) -> Callable[[list[str]], list[list[int]]]:
    """The fastest exact encoder for this tokenizer: tiktoken where it gives the same ids (checked
    also on `sample`, see fastbpe), else the Rust tokenizer."""
    return fastbpe.exact_encoder(tokenizer, sample) or RustBatch(tokenizer)


def prepare_tokenizer(tokenizer):
    """The tokenizer as its family trains (and ships): the family's template prelude set, and a pad
    token that is not the end-of-turn token, so padding can never stand in for the reply's end."""
    if tokenizer.chat_template:
        tokenizer.chat_template = families.training_template(tokenizer.chat_template)
        pad = families.pad_token(tokenizer.chat_template, tokenizer.get_vocab(), tokenizer.pad_token)
        if pad != tokenizer.pad_token:
            tokenizer.pad_token = pad
    return tokenizer


def _segments(messages: list[dict], template: str, special: dict) -> tuple[list, str]:
    """The conversation's segments (a system prompt placed as the family takes one), or none and why
    the template refused it."""
    try:
        messages = families.fold_system(messages, families.system_role(template))
        return segments(template, messages, add_generation_prompt=False, special_tokens=special), ""
    except ValueError as err:
        if "turn by turn" in str(err):
            raise TemplateError(str(err)) from None
        return [], f"template refused the conversation: {str(err)[:80]}"
    except Exception as err:  # a template's raise_exception (e.g. roles not alternating)
        return [], f"template refused the conversation: {str(err)[:80]}"


def _tokenize_batch(batch: dict, template: str, special: dict, encode, max_length: int | None) -> dict:
    rendered = [_segments(messages, template, special) for messages in batch["messages"]]
    per_row, reasons = [parts for parts, _ in rendered], [reason for _, reason in rendered]
    # One call to the encoder for every segment of every row.
    flat = [part.text for parts in per_row for part in parts]
    encoded = iter(encode(flat) if flat else [])
    out = {"input_ids": [], "labels": [], "bad_reason": []}
    for parts, reason in zip(per_row, reasons):
        ids, labels = [], []
        first_reply = None  # where the first trained token sits, to see if truncation keeps any
        for part in parts:
            piece = next(encoded)
            if part.reply and piece and first_reply is None:
                first_reply = len(ids)
            ids += piece
            labels += piece if part.reply else [IGNORE] * len(piece)
        if max_length:
            ids, labels = ids[:max_length], labels[:max_length]
        if not reason and (first_reply is None or first_reply >= len(ids)):
            reason = "no assistant tokens within max_seq_length"
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["bad_reason"].append(reason)
    return out


def processes(requested: int | None, rows: int, encode) -> int | None:
    """Worker processes for tokenizing: as asked; else one per core for a large set through tiktoken,
    which runs on one core per process; else one (the Rust tokenizer already uses every core, and
    on a small set starting workers costs more than it saves)."""
    if requested or not isinstance(encode, fastbpe.TiktokenBPE) or rows < PARALLEL_ROWS:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if cores > 1 else None


def tokenize(
    dataset: Dataset, tokenizer, max_length: int | None, num_proc: int | None = None
) -> tuple[Dataset, Counter]:
    """`messages` -> `input_ids` + `labels`; rows with nothing to learn are dropped and counted."""
    if not tokenizer.chat_template:
        raise TemplateError("the tokenizer has no chat template: train from an instruct model, or set one")
    prepare_tokenizer(tokenizer)
    special = tokenizer.special_tokens_map
    sample = [
        part.text
        for messages in dataset.select(range(min(len(dataset), 50)))["messages"]
        for part in _segments(messages, tokenizer.chat_template, special)[0]
    ]
    encode = encoder(tokenizer, sample)
    tokenized = dataset.map(
        _tokenize_batch,
        fn_kwargs={"template": tokenizer.chat_template, "special": special, "encode": encode, "max_length": max_length},
        batched=True,
        batch_size=1000,
        remove_columns=dataset.column_names,
        num_proc=processes(num_proc, len(dataset), encode),
        desc="Tokenizing (assistant-only labels)",
    )
    reasons = Counter(r for r in tokenized["bad_reason"] if r)
    # One column of short strings: a single process is quicker than starting workers.
    clean = tokenized.filter(
        lambda rs: [not r for r in rs], input_columns="bad_reason", batched=True, batch_size=10_000
    )
    return clean.remove_columns("bad_reason"), reasons


def check_ids_fit(
    dataset: Dataset, model_path: str, trust_remote_code: bool = False, columns: tuple[str, ...] = ("input_ids",)
) -> None:
    """Refuse token ids the model has no embedding row for (its folder holds another model's
    tokenizer), which would otherwise stop the first step with an IndexError."""
    import pyarrow.compute as pc
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).get_text_config()
    rows = getattr(config, "vocab_size", None)
    maxima = [pc.max(pc.list_flatten(dataset.data.column(c))).as_py() for c in columns] if len(dataset) else []
    largest = max((m for m in maxima if m is not None), default=None)
    if rows and largest is not None and largest >= rows:
        raise ValueError(
            f"the tokenizer gives token id {largest}, but the model's embedding has {rows} rows: the "
            f"tokenizer in {model_path} is not the model's own. Use a model folder whose tokenizer "
            "files came with its weights."
        )
