"""Tokenize preference pairs for DPO / ORPO exactly as SFT tokenizes conversations.

Each side (the prompt followed by the chosen or the rejected reply) is cut into segments by the
runtime's one chat renderer (`chat_runtime.templating.segments`) and encoded segment by segment
with the same exact encoder as SFT (finetune.masking), so the prompt ids are those a Space sends
and the completion is the reply plus the end-of-turn token the template writes after it: the loss
falls on the reply only, and the model learns where a preferred reply stops. trl's own
tokenization would render the template its own way, so its trainers get these ids ready-made.
"""

from __future__ import annotations

from collections import Counter

from datasets import Dataset

from .masking import TemplateError, _segments, encoder


def _side(prompt: list[dict], reply: str, template: str, special: dict):
    """(segments before the reply, the reply segment), or (None, reason)."""
    parts, reason = _segments(prompt + [{"role": "assistant", "content": reply}], template, special)
    if reason:
        return None, reason
    last = max((i for i, p in enumerate(parts) if p.reply), default=None)
    if last is None:
        return None, "template wrote no reply"
    return (parts[:last], parts[last]), ""


def _tokenize_batch(batch: dict, template: str, special: dict, encode, max_length: int | None) -> dict:
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "bad_reason": []}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        (c, reason_c), (r, reason_r) = (
            _side(prompt, chosen, template, special),
            _side(prompt, rejected, template, special),
        )
        reason = reason_c or reason_r
        ids = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
        if not reason:
            texts = [p.text for p in c[0]] + [c[1].text] + [p.text for p in r[0]] + [r[1].text]
            pieces = encode(texts)
            n = len(c[0])
            prompt_c, prompt_r = sum(pieces[:n], []), sum(pieces[n + 1 : -1], [])
            if prompt_c != prompt_r:
                reason = "prompt differs between the two sides"
            ids = {"prompt_ids": prompt_c, "chosen_ids": pieces[n], "rejected_ids": pieces[-1]}
        if not reason and max_length:
            room = max_length - len(ids["prompt_ids"])
            if room <= 0:
                reason = "prompt fills max_seq_length"
            ids["chosen_ids"], ids["rejected_ids"] = (
                ids["chosen_ids"][: max(room, 0)],
                ids["rejected_ids"][: max(room, 0)],
            )
        for key, value in ids.items():
            out[key].append(value)
        out["bad_reason"].append(reason)
    return out


def tokenize(
    dataset: Dataset, tokenizer, max_length: int | None, num_proc: int | None = None
) -> tuple[Dataset, Counter]:
    """`prompt` / `chosen` / `rejected` -> `prompt_ids` / `chosen_ids` / `rejected_ids` (trl's
    pre-tokenized preference columns); pairs with nothing to learn are dropped and counted."""
    if not tokenizer.chat_template:
        raise TemplateError("the tokenizer has no chat template: train from an instruct model, or set one")
    special = tokenizer.special_tokens_map
    head = dataset.select(range(min(len(dataset), 50)))
    sample = [
        part.text
        for prompt, chosen in zip(head["prompt"], head["chosen"])
        for part in _segments(prompt + [{"role": "assistant", "content": chosen}], tokenizer.chat_template, special)[0]
    ]
    encode = encoder(tokenizer, sample)
    tokenized = dataset.map(
        _tokenize_batch,
        fn_kwargs={"template": tokenizer.chat_template, "special": special, "encode": encode, "max_length": max_length},
        batched=True,
        batch_size=1000,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Tokenizing pairs (reply-only completions)",
    )
    reasons = Counter(r for r in tokenized["bad_reason"] if r)
    clean = tokenized.filter(
        lambda rs: [not r for r in rs], input_columns="bad_reason", batched=True, batch_size=10_000
    )
    return clean.remove_columns("bad_reason"), reasons
