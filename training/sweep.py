"""Sweep train.py's settings: a grid of every combination, or a random / TPE search (Optuna) over the
same choices. Each trial is a normal run folder (output_dir/trials/NAME); the comparison table
(sweep.md, sweep.json naming the best) and plots (training loss per epoch, eval loss curves, final
eval loss vs each setting) land in output_dir. Run the same command again after a kill: finished
trials are read back and an interrupted one resumes from its newest checkpoint.

    python training/sweep.py --config training/recipes/cpu-smollm2-sample.yaml --output_dir runs/sweep \\
        --grid learning_rate=1e-4,2e-4,4e-4 lr_scheduler_type=linear,cosine --max_rows 1000
    python training/sweep.py --config RECIPE --output_dir runs/search --trials 8 --sampler tpe \\
        --grid learning_rate=1e-4,2e-4,4e-4 weight_decay=0.005,0.02 per_device_train_batch_size=2,4

Every option this script does not know passes through to each trial's train.py (--max_steps,
--max_rows, --eval_max_rows, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from chat_runtime.errors import UserError, run_main
from finetune import config as cfg
from finetune import sweep


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--config", required=True, help="the recipe every trial starts from")
    parser.add_argument("--output_dir", required=True, help="the sweep folder: trials/, sweep.md, sweep.json, plots")
    parser.add_argument("--grid", nargs="+", required=True, help="settings to vary: key=value1,value2 ...")
    parser.add_argument("--trials", type=int, default=0, help="search: this many trials (0 = the whole grid)")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="tpe", help="search: how Optuna picks")
    return parser


def main(args: argparse.Namespace, passthrough: list[str]) -> None:
    """Check, run (or resume) the trials, write the comparison."""
    grid = sweep.parse_grid(args.grid)
    sweep.check_keys(grid, {f.name for c in cfg.ARG_CLASSES for f in fields(c)})
    if "output_dir" in grid or any(a.startswith("--output_dir") for a in passthrough):
        raise UserError("each trial's output_dir is chosen by the sweep: give --output_dir for the sweep only")
    if not Path(args.config).is_file():
        raise UserError(f"recipe {args.config} does not exist")
    out = Path(args.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.trials:
        trials = sweep.search(grid, out, args.config, passthrough, args.trials, args.sampler)
    else:
        trials = [sweep.run_trial(p, out, args.config, passthrough) for p in sweep.combinations(grid)]
    result = sweep.write_results(trials, grid, out)
    print(f"{len(result['trials'])} trials; best: {result['best']}  ({out / 'sweep.md'})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_main(lambda: main(*make_parser().parse_known_args()))
