"""How much the CPU recipe's fidelity table moves between runs, and what moves it.

    python scripts/fidelity_spread.py --output_dir runs/spread                    # seeds 3407 x3, 1, 2
    python scripts/fidelity_spread.py --output_dir runs/spread --seeds 3407 3407 --verify_repeats 1
    python scripts/fidelity_spread.py --output_dir runs/spread32 --max_steps 32   # the suite's run

Each run trains the CPU recipe (training/recipes/cpu-smollm2-sample.yaml) as a user does, whose
fidelity check writes adapter/fidelity.json. Runs of the same seed tell whether training repeats
(the adapter's bytes are hashed); re-running gguf/verify.py on one finished adapter tells whether
the merge, the conversion and llama.cpp's decode repeat. A run folder that already holds its
fidelity.json is read, not retrained, so a stopped measurement continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml"
MEASURES = ("vs_reference", "vs_reference_but_near_ties")


def train(run_dir: Path, seed: int, max_steps: int | None) -> None:
    if (run_dir / "adapter" / "fidelity.json").exists():
        return
    cmd = [sys.executable, str(ROOT / "training" / "train.py"), "--config", str(RECIPE), "--seed", str(seed)]
    cmd += ["--max_steps", str(max_steps)] if max_steps else []
    subprocess.run([*cmd, "--output_dir", str(run_dir)], cwd=ROOT, check=True)


def reverify(adapter: Path, report: Path) -> None:
    if not report.exists():
        cmd = [sys.executable, str(ROOT / "gguf" / "verify.py"), "--adapter", str(adapter), "--report", str(report)]
        subprocess.run(cmd, cwd=ROOT, check=True)


def summary(report: Path) -> dict[str, dict]:
    return {row["hop"]: row for row in json.loads(report.read_text())["summary"]}


def digest(adapter: Path) -> str:
    return hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="one run folder per run goes here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3407, 3407, 3407, 1, 2], help="one run per entry")
    parser.add_argument("--verify_repeats", type=int, default=2, help="re-runs of verify.py on the first adapter")
    parser.add_argument("--max_steps", type=int, default=None, help="stop each run here (default: the recipe's)")
    args = parser.parse_args()

    out = Path(args.output_dir)
    rows = []  # (label, adapter digest, hop summaries)
    for i, seed in enumerate(args.seeds):
        run_dir = out / f"run{i}-seed{seed}"
        train(run_dir, seed, args.max_steps)
        rows.append(
            (
                f"train seed {seed} (run {i})",
                digest(run_dir / "adapter"),
                summary(run_dir / "adapter" / "fidelity.json"),
            )
        )
    first = out / f"run0-seed{args.seeds[0]}" / "adapter"
    for k in range(args.verify_repeats):
        report = out / f"reverify{k}.json"
        reverify(first, report)
        rows.append((f"verify again, run 0 (#{k + 1})", digest(first), summary(report)))

    hops = [h for h in rows[0][2] if rows[0][2][h]["vs_reference"] is not None]
    print("| run | adapter sha256 | " + " | ".join(f"{h} strict / near ties" for h in hops) + " |")
    print("|---|---|" + "---|" * len(hops))
    for label, sha, hop_rows in rows:
        cells = [f"{hop_rows[h]['vs_reference']:.1f} / {hop_rows[h]['vs_reference_but_near_ties']:.1f}" for h in hops]
        print(f"| {label} | {sha} | " + " | ".join(cells) + " |")
    for h in hops:
        for m in MEASURES:
            values = [r[2][h][m] for r in rows]
            print(f"result {h} {m}: min {min(values):.2f} median {statistics.median(values):.2f} max {max(values):.2f}")


if __name__ == "__main__":
    main()
