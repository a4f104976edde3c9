"""Item 6: data preparation of a synthetic 390k-row set shaped like
charanhu/kannada-instruct-dataset-390k (alpaca-like instruction/input/output, Kannada text) through
Finch's training data code: load, detect, convert, template, tokenize (target <= 2 minutes on 2 cores).

    .venv/bin/python bench/data_prep.py                  # 390,000 rows, as train.py runs by default
    .venv/bin/python bench/data_prep.py --rows 50000 --num_proc 2
    .venv/bin/python bench/data_prep.py --quick          # 4,000 rows

train.py's defaults apply: Llama 3's tokenizer is encoded by tiktoken (finetune/fastbpe.py, the same
ids, checked), and a set this large is tokenized by one worker process per core. The set is
generated once (seeded) into ~/.cache/finch/bench as parquet. Lengths: instructions of
4-30 words, a third with an input of 5-40 words, outputs of 10-120 words, words of 2-9 Kannada
letters. The tokenizer is Llama 3's (the Kannada recipe trains Llama 3.2 3B), built offline from the
vocabulary llama.cpp ships as a test file (bench/benchlib.py, llama3_tokenizer); `--tokenizer
embedded` takes the embedded SmolLM2's instead, whose English byte-level BPE makes 1.6x more tokens
of Kannada.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import benchlib

FULL_ROWS = 390_000
LETTERS = [chr(c) for c in range(0x0C85, 0x0CB9) if chr(c).isalpha()]  # Kannada vowels and consonants
SIGNS = [chr(c) for c in range(0x0CBE, 0x0CCC)]  # vowel signs


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(
        "".join(
            rng.choice(LETTERS) + (rng.choice(SIGNS) if rng.random() < 0.6 else "") for _ in range(rng.randint(1, 4))
        )
        for _ in range(rng.randint(low, high))
    )


def synthetic_set(rows: int):
    """The parquet file of `rows` synthetic alpaca-like Kannada rows, made once."""
    path = benchlib.cache() / f"kannada-like-{rows}.parquet"
    if not path.is_file():
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = random.Random(0)
        cols = {"instruction": [], "input": [], "output": []}
        for _ in range(rows):
            cols["instruction"].append(words(rng, 4, 30))
            cols["input"].append(words(rng, 5, 40) if rng.random() < 0.33 else "")
            cols["output"].append(words(rng, 10, 120))
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table(cols), tmp)
        os.replace(tmp, path)
    return path


def tokenizer_floor(tokenizer, path, rows: int = 20_000) -> float:
    """Seconds the Rust tokenizer alone (what tokenized before tiktoken) takes for 390k rows' text
    (projected from `rows`), in one batched call on every core. Measured first: a datasets map with num_proc set leaves
    TOKENIZERS_PARALLELISM=false in the process's C environment (it restores only os.environ), after
    which the tokenizer here would run on one thread."""
    import pyarrow.parquet as pq

    from finetune import masking

    table = pq.read_table(path).slice(0, rows).to_pydict()
    texts = [text for column in table.values() for text in column if text]
    start = time.perf_counter()
    masking.encode_batch(tokenizer, texts)
    return (time.perf_counter() - start) * FULL_ROWS / min(rows, len(table["output"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument(
        "--num_proc",
        type=int,
        default=None,
        help="data processes (default: train.py's: one per core for a large set through tiktoken, "
        "else one, whose Rust tokenizer uses every core)",
    )
    parser.add_argument("--max_seq_length", type=int, default=2048)
    parser.add_argument(
        "--tokenizer",
        choices=["llama3", "embedded"],
        default="llama3",
        help="llama3: the Kannada recipe's (Llama 3.2); embedded: SmolLM2's",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 4,000 rows")
    args = parser.parse_args()
    if args.quick:
        args.rows = 4000

    import datasets
    from transformers import AutoTokenizer

    from chat_runtime import embedded
    from finetune import data, fastbpe, masking

    benchlib.header(
        f"data preparation: {args.rows:,} Kannada-like alpaca rows, num_proc {args.num_proc or 'auto'}, "
        f"{args.tokenizer} tokenizer"
    )
    path = synthetic_set(args.rows)
    datasets.disable_caching()  # time the work, not a cache hit from an earlier run
    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(
        benchlib.llama3_tokenizer() if args.tokenizer == "llama3" else embedded.hf_dir()
    )
    floor = tokenizer_floor(tokenizer, path)
    start = time.perf_counter()
    prepared = data.prepare([str(path)], ["auto"], [1.0], 0.05, 3407, num_proc=args.num_proc)
    converted = time.perf_counter()
    train, dropped = masking.tokenize(prepared.train, tokenizer, args.max_seq_length, args.num_proc)
    evals, _ = masking.tokenize(prepared.eval, tokenizer, args.max_seq_length, args.num_proc)
    end = time.perf_counter()
    tokens = sum(len(ids) for ids in train["input_ids"])
    print(
        f"# load/detect/convert/split {converted - start:.1f} s; template+tokenize {end - converted:.1f} s; "
        f"{len(train):,} train + {len(evals):,} eval rows, {tokens:,} train tokens, dropped {dict(dropped) or 'none'}"
    )
    print(f"# {args.rows / (end - start):,.0f} rows/s; load average at end: {benchlib.load()}")
    encode = masking.encoder(tokenizer)
    print(
        f"# encoder: {'tiktoken' if isinstance(encode, fastbpe.TiktokenBPE) else 'the Rust tokenizer'}, "
        f"{masking.processes(args.num_proc, len(prepared.train), encode) or 1} process(es) for the train set"
    )
    print(
        f"# the Rust tokenizer alone on the same text (no template), every core, projected to 390k rows: {floor:.0f} s"
    )
    projected = (end - start) * FULL_ROWS / args.rows
    benchlib.ratio(
        f"data prep seconds for 390k rows ({'measured' if args.rows == FULL_ROWS else 'projected'})",
        projected,
        120,
        higher_is_better=False,
        unit=" s",
    )
    # The whole preparation (reading, converting, templating, masks, Arrow) against the Rust tokenizer's
    # share alone: below 1 since tiktoken and worker processes.
    benchlib.result("data prep time / Rust-tokenizer-alone time", projected / floor, "x")


if __name__ == "__main__":
    main()
