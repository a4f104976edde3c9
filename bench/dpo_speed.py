"""DPO throughput: `training/train.py --method dpo` tokens/s vs a minimal plain trl DPOTrainer
script (bench/dpo_plain.py) with trl's defaults, on the same preference rows, model and LoRA.

    .venv/bin/python bench/dpo_speed.py              # 64 pairs of the shipped preference set, 1 epoch = 16 steps each
    .venv/bin/python bench/dpo_speed.py --quick      # 8 pairs (2 steps), smoke run

Two runs, each a subprocess, repeated for --rounds rounds in alternating order (medians reported):
Finch (the CPU DPO recipe: pairs tokenized by Finch's template code, reference = adapter disabled)
and trl with its defaults (it applies the chat template itself; its reference is the adapter-disabled
model too). tokens/s = the real (unpadded) tokens of the epoch (prompt + chosen and prompt + rejected
of every pair, counted from Finch's tokenization, the same rows for both) over the trainer's own
train_runtime. Both train with bf16 autocast where the CPU has native bf16 (Finch's precision auto,
trl's default bf16); the precision each side used is printed beside the speeds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import benchlib

RECIPE = "training/recipes/cpu-smollm2-dpo.yaml"


def epoch_tokens(data: Path, model: str) -> int:
    """Real tokens one epoch feeds the model, as Finch tokenizes the pairs."""
    from transformers import AutoTokenizer

    from finetune import data as finch_data
    from finetune import preference, preference_tokens

    prepared = finch_data.prepare(
        [str(data)], ["auto"], [1.0], 0.0, 3407, converter=preference.convert, expected=preference.expected
    )
    rows, _ = preference_tokens.tokenize(prepared.train, AutoTokenizer.from_pretrained(model), 192)
    return sum(
        2 * len(p) + len(c) + len(r) for p, c, r in zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="preference pairs to train on (one epoch)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two runs, in alternating order (medians)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 pairs (2 steps), one round")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds = 8, 1

    from chat_runtime import embedded

    benchlib.header("DPO throughput: training/train.py --method dpo vs plain trl DPOTrainer (defaults)")
    model = str(embedded.hf_dir())
    with tempfile.TemporaryDirectory(prefix="finch-dpo-bench-") as tmp:
        tmp = Path(tmp)
        source = benchlib.ROOT / "training" / "data" / "sample_preferences.jsonl"
        data = benchlib.sample_rows(source, args.rows, tmp / "pairs.jsonl")
        tokens, precision = epoch_tokens(data, model), {}
        runs = {
            # --sft_weight 0: plain DPO, the loss trl's defaults compute.
            "finch train.py --method dpo": lambda: benchlib.finch_training(
                RECIPE, data, tmp / "finch", "--max_steps", "-1", "--sft_weight", "0"
            ),
            "trl DPOTrainer defaults": lambda: benchlib.plain_training("dpo_plain.py", data, tmp / "trl", model),
        }
        sides = benchlib.training_sides(runs, tokens, precision)
        runs = benchlib.interleaved(sides, args.rounds)
    print(
        f"# {args.rows} pairs, {tokens} real tokens per epoch, medians of {args.rounds} round(s); "
        f"load average at end: {benchlib.load()}"
    )
    print(f"{'run':30} {'runtime s':>10} {'tokens/s':>9} {'mean loss':>10}  precision")
    for name, r in runs.items():
        print(f"{name:30} {r['runtime_s']:10.1f} {r['tok_s']:9.1f} {r['mean_loss']:10.4f}  {precision[name]}")
    ours, plain = runs["finch train.py --method dpo"], runs["trl DPOTrainer defaults"]
    benchlib.result("finch DPO train tokens/s", ours["tok_s"], "tokens/s")
    benchlib.result("trl DPOTrainer (defaults) train tokens/s", plain["tok_s"], "tokens/s")
    benchlib.ratio("finch/trl-defaults DPO train tokens/s", ours["tok_s"] / plain["tok_s"], 1.0)


if __name__ == "__main__":
    main()
