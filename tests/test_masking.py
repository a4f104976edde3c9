"""Assistant-only labels: exactly the assistant tokens (EOS included) are trained, for ChatML
(the embedded model) and a Llama 3 template, and the prompt ids equal the runtime's."""

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from finetune import masking

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions

CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4, of course."},
    {"role": "user", "content": "ನಮಸ್ಕಾರ!"},
    {"role": "assistant", "content": "ನಮಸ್ಕಾರ! 🙂"},
]


@pytest.fixture(scope="module")
def chatml(embedded_hf):
    return AutoTokenizer.from_pretrained(embedded_hf)


@pytest.fixture(scope="module")
def llama3(llama3_tokenizer):
    return llama3_tokenizer


def _trained_text(tok, ids, labels):
    return tok.decode([i for i, label in zip(ids, labels) if label != masking.IGNORE])


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_exactly_the_assistant_tokens_are_trained_eos_included(request, name):
    tok = request.getfixturevalue(name)
    out, dropped = masking.tokenize(Dataset.from_dict({"messages": [CONVERSATION]}), tok, max_length=None)
    ids, labels = out[0]["input_ids"], out[0]["labels"]
    assert not dropped
    # The expected labels, built independently: the tokens of each reply + EOS, found by token search.
    expected = [masking.IGNORE] * len(ids)
    for reply in ("4, of course.", "ನಮಸ್ಕಾರ! 🙂"):
        span = tok(reply + tok.eos_token, add_special_tokens=False)["input_ids"]
        starts = [i for i in range(len(ids)) if ids[i : i + len(span)] == span]
        assert len(starts) == 1, (reply, name)
        for j in range(starts[0], starts[0] + len(span)):
            expected[j] = ids[j]
    assert labels == expected
    assert _trained_text(tok, ids, labels) == f"4, of course.{tok.eos_token}ನಮಸ್ಕಾರ! 🙂{tok.eos_token}"
    assert labels.count(tok.eos_token_id) == 2  # pad == eos on the embedded model: EOS still trained


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_training_and_runtime_see_the_same_prompt_ids(request, name):
    """The ids before the last reply are exactly what the runtime sends to generate that reply."""
    from chat_runtime.templating import encode, segments

    tok = request.getfixturevalue(name)
    out, _ = masking.tokenize(Dataset.from_dict({"messages": [CONVERSATION]}), tok, max_length=None)
    parts = segments(
        tok.chat_template, CONVERSATION[:-1], add_generation_prompt=True, special_tokens=tok.special_tokens_map
    )
    runtime_ids, _ = encode(parts, lambda text: tok(text, add_special_tokens=False)["input_ids"])
    assert out[0]["input_ids"][: len(runtime_ids)] == runtime_ids
    if name == "chatml":  # and the HF tokenizer's own apply_chat_template agrees
        hf = tok.apply_chat_template(CONVERSATION[:-1], add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(hf) == runtime_ids


def test_rows_with_nothing_to_learn_are_dropped_not_trained(chatml):
    long_prompt = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]
    out, dropped = masking.tokenize(Dataset.from_dict({"messages": [long_prompt, CONVERSATION]}), chatml, max_length=64)
    assert len(out) == 1 and dropped == {"no assistant tokens within max_seq_length": 1}
    assert all(len(r["input_ids"]) <= 64 for r in out)


def test_a_tokenizer_without_a_template_is_refused(embedded_hf):
    tok = AutoTokenizer.from_pretrained(embedded_hf)
    tok.chat_template = None
    with pytest.raises(masking.TemplateError, match="no chat template"):
        masking.tokenize(Dataset.from_dict({"messages": [CONVERSATION]}), tok, max_length=None)


@pytest.mark.parametrize("name", ["chatml", "llama3", "meta_llama3"])
def test_the_fast_batch_path_gives_the_ids_and_labels_of_one_by_one_tokenizing(request, name, repo_root):
    """masking.tokenize encodes in batches, straight through the Rust tokenizer or (Llama 3's real
    tokenizer) through tiktoken; its rows must equal the plain path: each segment rendered alone and
    tokenized by `tokenizer(text)`, as engines do."""
    import json

    from chat_runtime.templating import encode, segments
    from finetune.data import to_messages

    tok = request.getfixturevalue(name)
    lines = (repo_root / "training" / "data" / "sample_sharegpt.jsonl").read_text().splitlines()
    conversations = [to_messages(json.loads(line), "sharegpt") for line in lines[::7]] + [CONVERSATION]
    cut = 72  # long enough to keep most rows, short enough to truncate (and drop) some
    out, dropped = masking.tokenize(Dataset.from_dict({"messages": conversations}), tok, max_length=cut)
    kept, truncated = [], 0
    for messages in conversations:
        parts = segments(
            tok.chat_template, messages, add_generation_prompt=False, special_tokens=tok.special_tokens_map
        )
        ids, mask = encode(parts, lambda text: tok(text, add_special_tokens=False)["input_ids"])
        labels = [i if m else masking.IGNORE for i, m in zip(ids, mask)][:cut]
        truncated += len(ids) > cut
        if any(label != masking.IGNORE for label in labels):
            kept.append({"input_ids": ids[:cut], "labels": labels})
    assert len(kept) == len(out) > 30 and truncated and sum(dropped.values()) == len(conversations) - len(kept)
    assert [dict(row) for row in out] == kept
