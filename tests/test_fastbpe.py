"""tiktoken stands in for the Rust tokenizer only where it gives the very same ids: Llama 3's real
tokenizer (converted from tiktoken) takes the fast path and matches it on hard texts; the embedded
SmolLM2 tokenizer (trained with `tokenizers`) keeps the Rust tokenizer; worker processes change
nothing in the rows."""

import random

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from finetune import fastbpe, masking

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions

# Characters from the scripts, digits, spaces and symbols byte-level tokenizers treat differently.
ALPHABET = (
    "abcXYZ ಕನ್ನಡ ಮಾತು हिन्दी 中文字 ́é ß 0123456789 \n\n\t\r '’\".,;:!?-_*#@<>/\\()[]{} 😀👍🏽 \u200b\u00a0"
    "<|eot_id|> <|start_header_id|> 's 'LL 're "
)


def _fuzz(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces = ALPHABET.split(" ") + list(ALPHABET)
    return [
        "".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randint(1, 40)))
        for _ in range(count)
    ]


def test_llama3s_real_tokenizer_is_encoded_by_tiktoken_with_the_same_ids(meta_llama3, repo_root):
    encoder = fastbpe.exact_encoder(meta_llama3)
    assert isinstance(encoder, fastbpe.TiktokenBPE)
    sample = (repo_root / "training" / "data" / "sample_sharegpt.jsonl").read_text()
    texts = _fuzz(3000) + sample.splitlines() + [sample] + fastbpe.PROBES
    reference = [e.ids for e in meta_llama3.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    assert encoder(texts) == reference
    # The special tokens in the text became their ids, as the Rust tokenizer's added vocabulary does.
    eot = meta_llama3.convert_tokens_to_ids("<|eot_id|>")
    assert sum(ids.count(eot) for ids in reference) > 100


def test_a_tokenizer_tiktoken_cannot_reproduce_keeps_the_rust_tokenizer(embedded_hf, caplog):
    tok = AutoTokenizer.from_pretrained(embedded_hf)  # SmolLM2: trained merges, ignore_merges off
    with caplog.at_level("INFO", logger="finetune.fastbpe"):
        assert fastbpe.exact_encoder(tok) is None
    assert "Rust tokenizer" in caplog.text and "ignore_merges" in caplog.text
    assert isinstance(masking.encoder(tok), masking.RustBatch)


def test_worker_processes_give_the_rows_of_one_process(meta_llama3, repo_root):
    import json

    from finetune.data import to_messages

    lines = (repo_root / "training" / "data" / "sample_sharegpt.jsonl").read_text().splitlines()
    rows = Dataset.from_dict({"messages": [to_messages(json.loads(line), "sharegpt") for line in lines]})
    alone, dropped_alone = masking.tokenize(rows, meta_llama3, max_length=96)
    workers, dropped_workers = masking.tokenize(rows, meta_llama3, max_length=96, num_proc=2)
    assert len(alone) > 100 and dropped_alone == dropped_workers
    assert alone["input_ids"] == workers["input_ids"] and alone["labels"] == workers["labels"]


@pytest.mark.parametrize(
    "rows, fast, asked, expected",
    [
        (390_000, True, None, "cores"),  # a large set through tiktoken: a process per core
        (390_000, False, None, None),  # the Rust tokenizer uses every core from one process
        (1_000, True, None, None),  # too small to pay for starting workers
        (1_000, False, 3, 3),  # what the user asked for wins
    ],
)
def test_data_processes_default_to_one_per_core_only_where_that_pays(
    meta_llama3, embedded_hf, rows, fast, asked, expected
):
    import os

    encode = masking.encoder(meta_llama3 if fast else AutoTokenizer.from_pretrained(embedded_hf))
    cores = len(os.sched_getaffinity(0))
    want = (cores if cores > 1 else None) if expected == "cores" else expected
    assert masking.processes(asked, rows, encode) == want
