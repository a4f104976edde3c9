"""Item 5: `training/train.py` training tokens/s vs a minimal plain trl SFTTrainer script
(bench/trl_plain.py) with trl's defaults, on the same data, model and LoRA (target >= 1.3x, final
loss equal within 1%).

    .venv/bin/python bench/train_speed.py              # 128 sample conversations, 1 epoch = 32 steps each
    .venv/bin/python bench/train_speed.py --quick      # 8 conversations (2 steps), smoke run

Three runs, each a subprocess, repeated for --rounds rounds in alternating order (medians reported): Finch (the CPU recipe), trl with its defaults
(it tokenizes the conversations itself and computes the loss on every token), and trl with its
defaults fed Finch's tokenized rows and assistant-only labels (the same objective and order, so
its loss must equal Finch's). tokens/s = the real (unpadded) tokens of the epoch, counted from
Finch's tokenization and identical for all three, over the trainer's own train_runtime.
Finch trains with its recipe's `precision: auto` (bf16 autocast on a CPU with native bf16, as trl's
default bf16 does), so the precision each side used is printed beside the speeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib


def epoch_tokens(data: Path, model: str) -> int:
    sys.path.insert(0, str(benchlib.BENCH))
    from trl_plain import finch_rows

    return sum(len(ids) for ids in finch_rows(str(data), model)["input_ids"])


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=benchlib.ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def finch(data: Path, out: Path) -> dict:
    run(
        [
            sys.executable,
            "training/train.py",
            "--config",
            "training/recipes/cpu-smollm2-sample.yaml",
            "--dataset",
            str(data),
            "--eval_fraction",
            "0",
            "--logging_steps",
            "1",
            "--save_steps",
            "100000",
            "--output_dir",
            str(out),
            "--sample_prompts",
            "Hi",
            "--sample_max_new_tokens",
            "1",
            "--verify",
            "false",
            "--overwrite",
            "true",
        ]
    )
    metrics = json.loads((out / "adapter" / "metrics.json").read_text())
    history = metrics["log_history"]
    summary = history[-1]
    return {
        "train_runtime": summary["train_runtime"],
        "train_loss": summary["train_loss"],
        "losses": [e["loss"] for e in history if "loss" in e],
        "precision": metrics["device"],
    }


def trl(data: Path, out: Path, model: str, finch_labels: bool) -> dict:
    cmd = [
        sys.executable,
        str(benchlib.BENCH / "trl_plain.py"),
        "--data",
        str(data),
        "--model",
        model,
        "--out",
        str(out),
    ]
    return json.loads(run(cmd + (["--finch_labels"] if finch_labels else [])).strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="sample conversations to train on (one epoch)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the three runs, in alternating order (medians)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 rows (2 steps), one round")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds = 8, 1

    from chat_runtime import embedded

    benchlib.header("training throughput: training/train.py vs plain trl SFTTrainer (defaults)")
    model = str(embedded.hf_dir())
    with tempfile.TemporaryDirectory(prefix="finch-train-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "rows.jsonl"
        lines = (benchlib.ROOT / "training" / "data" / "sample_sharegpt.jsonl").read_text().splitlines()[: args.rows]
        data.write_text("\n".join(lines) + "\n")
        tokens = epoch_tokens(data, model)
        precision = {}  # what each run trained in

        def measured(name: str, result: dict) -> dict[str, float]:
            precision[name] = result.get("precision") or (
                f"bf16 {result['bf16']}, gradient checkpointing {result['gradient_checkpointing']}"
            )
            return {
                "runtime_s": result["train_runtime"],
                "tok_s": tokens / result["train_runtime"],
                "mean_loss": result["train_loss"],
                "last_loss": result["losses"][-1],
            }

        sides = {
            "finch train.py": lambda: measured("finch train.py", finch(data, tmp / "finch")),
            "trl defaults": lambda: measured("trl defaults", trl(data, tmp / "trl", model, finch_labels=False)),
            "trl defaults, finch labels": lambda: measured(
                "trl defaults, finch labels", trl(data, tmp / "trl-labels", model, finch_labels=True)
            ),
        }
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
    benchlib.ratio("finch/trl-defaults train tokens/s", ours["tok_s"] / plain["tok_s"], 1.3)
    benchlib.ratio("finch/trl-defaults (finch labels) train tokens/s", ours["tok_s"] / same["tok_s"], 1.3)
    # The "final loss": the last step's, the same batch in both runs (same rows, order and seed).
    benchlib.ratio(
        "final train loss |finch - trl(finch labels)| / finch",
        abs(ours["last_loss"] - same["last_loss"]) / ours["last_loss"],
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
