"""Item 5: `training/train.py` training tokens/s vs a minimal plain trl SFTTrainer script
(bench/trl_plain.py) with trl's defaults, on the same data, model and LoRA (target >= 2x, final
loss equal within 1%); and the recipe with its batches padded instead of padding-free (its final
loss within 1% of the padding-free run's).

    .venv/bin/python bench/train_speed.py              # 128 sample conversations, 1 epoch = 32 steps each
    .venv/bin/python bench/train_speed.py --quick      # 8 conversations (2 steps), smoke run

Four runs, each a subprocess, repeated for --rounds rounds in alternating order (medians reported): Finch (the CPU recipe, padding-free), trl with its defaults
(it tokenizes the conversations itself and computes the loss on every token), Finch with
`--padding_free false` (each batch padded to its longest row), and trl with its
defaults fed Finch's tokenized rows and assistant-only labels (the same objective and order, so
its loss must equal Finch's). tokens/s = the real (unpadded) tokens of the epoch, counted from
Finch's tokenization and identical for all four, over the trainer's own train_runtime.
Finch trains with its recipe's `precision: auto` (bf16 autocast on a CPU with native bf16, as trl's
default bf16 does), so the precision each side used is printed beside the speeds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import benchlib

RECIPE = "training/recipes/cpu-smollm2-sample.yaml"


def epoch_tokens(data: Path, model: str) -> int:
    sys.path.insert(0, str(benchlib.BENCH))
    from trl_plain import finch_rows

    return sum(len(ids) for ids in finch_rows(str(data), model)["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="sample conversations to train on (one epoch)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four runs, in alternating order (medians)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 rows (2 steps), one round")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds = 8, 1

    from chat_runtime import embedded

    benchlib.header("training throughput: training/train.py vs plain trl SFTTrainer (defaults)")
    model = str(embedded.hf_dir())
    with tempfile.TemporaryDirectory(prefix="finch-train-bench-") as tmp:
        tmp = Path(tmp)
        data = benchlib.sample_rows(
            benchlib.ROOT / "training" / "data" / "sample_sharegpt.jsonl", args.rows, tmp / "rows.jsonl"
        )
        tokens, precision = epoch_tokens(data, model), {}  # precision: what each run trained in

        def trl(out: str, *options: str) -> dict:
            return benchlib.plain_training("trl_plain.py", data, tmp / out, model, *options)

        runs = {
            "finch train.py": lambda: benchlib.finch_training(RECIPE, data, tmp / "finch"),
            "finch, padded": lambda: benchlib.finch_training(
                RECIPE, data, tmp / "finch-padded", "--padding_free", "false"
            ),
            "trl defaults": lambda: trl("trl"),
            "trl defaults, finch labels": lambda: trl("trl-labels", "--finch_labels"),
        }
        sides = benchlib.training_sides(runs, tokens, precision)
        runs = benchlib.interleaved(sides, args.rounds)
    print(
        f"# {args.rows} conversations, {tokens} real tokens per epoch, medians of {args.rounds} round(s); "
        f"load average at end: {benchlib.load()}"
    )
    print(f"{'run':28} {'runtime s':>10} {'tokens/s':>9} {'mean loss':>10} {'last loss':>10}  precision")
    for name, r in runs.items():
        print(
            f"{name:28} {r['runtime_s']:10.1f} {r['tok_s']:9.1f} {r['mean_loss']:10.4f} {r['last_loss']:10.4f}  "
            f"{precision[name]}"
        )
    ours, plain, same = runs["finch train.py"], runs["trl defaults"], runs["trl defaults, finch labels"]
    benchlib.ratio("finch/trl-defaults train tokens/s", ours["tok_s"] / plain["tok_s"], 2.0)
    benchlib.ratio("finch/trl-defaults (finch labels) train tokens/s", ours["tok_s"] / same["tok_s"], 2.0)
    # The "final loss": the last step's, the same batch in both runs (same rows, order and seed).
    benchlib.ratio(
        "final train loss |finch - trl(finch labels)| / finch",
        abs(ours["last_loss"] - same["last_loss"]) / ours["last_loss"],
        0.01,
        higher_is_better=False,
    )
    padded = runs["finch, padded"]
    benchlib.result("finch padded/trl-defaults train tokens/s", padded["tok_s"] / plain["tok_s"], "x")
    benchlib.ratio(
        "final train loss |padded - padding-free| / padding-free",
        abs(padded["last_loss"] - ours["last_loss"]) / ours["last_loss"],
        0.01,
        higher_is_better=False,
    )
    benchlib.result(
        "mean train loss |finch - trl(finch labels)| / finch",
        100 * abs(ours["mean_loss"] - same["mean_loss"]) / ours["mean_loss"],
        "%",
    )


if __name__ == "__main__":
    main()
