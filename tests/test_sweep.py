"""training/sweep.py on the embedded model: a 2x2 grid of tiny runs, killed mid-trial and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *("--max_rows", "16", "--eval_fraction", "0.25", "--max_steps", "2", "--save_steps", "1", "--eval_steps", "2"),
    *("--logging_steps", "1", "--max_seq_length", "64", "--verify", "false", "--sample_every_eval", "0"),
    *("--sample_prompts", "Hi", "--sample_max_new_tokens", "2"),
]


def sweep_cmd(out: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "training" / "sweep.py"),
        *("--config", str(ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml"), "--output_dir", str(out)),
        *("--grid", "learning_rate=1e-3,3e-3", "lr_scheduler_type=linear,cosine"),
        *TINY,
    ]


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(1800)
def test_a_grid_sweep_killed_mid_trial_resumes_and_names_the_best_trial(tmp_path):
    out = tmp_path / "sweep"
    third = out / "trials" / "learning_rate=3e-3,lr_scheduler_type=linear"  # the grid's order: 1e-3 first
    proc = subprocess.Popen(sweep_cmd(out), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not (third / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before its third trial's checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its trial's train.py
    proc.wait()
    assert not (third / "adapter").exists()

    done = subprocess.run(sweep_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "sweep.json").read_text())
    losses = {t["name"]: t["eval_loss"] for t in result["trials"]}
    assert len(losses) == 4 and all(v is not None for v in losses.values())
    assert result["best"] == min(losses, key=losses.get) and f"best: {result['best']}" in done.stdout
    assert all(t["global_step"] == 2 for t in result["trials"])
    for finished in ("learning_rate=1e-3,lr_scheduler_type=linear", "learning_rate=1e-3,lr_scheduler_type=cosine"):
        log = (out / "trials" / f"{finished}.log").read_text()
        assert log.count("Finch training run complete") == 1  # finished before the kill: read back, not rerun
    assert "resuming from" in (third.parent / f"{third.name}.log").read_text()  # the killed trial went on
    table = (out / "sweep.md").read_text()
    assert f"`{result['best']}` (best)" in table and table.count("| `learning_rate=") == 4
    for plot in ("train_loss_per_epoch", "eval_loss", "final_vs_learning_rate"):
        assert (out / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot


def test_a_malformed_grid_or_an_unknown_setting_fails_with_the_fix(tmp_path):
    base = [sys.executable, str(ROOT / "training" / "sweep.py"), "--config", "training/recipes/cpu-smollm2-sample.yaml"]
    for grid, says in (("learning_rate", "is not key=value1,value2"), ("lora_rank=4,8", "does not have: lora_rank")):
        proc = subprocess.run(
            [*base, "--output_dir", str(tmp_path / "s"), "--grid", grid], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-1000:]


def test_the_table_names_the_lowest_eval_loss_and_falls_back_to_train_loss(tmp_path):
    from finetune import sweep

    grid = sweep.parse_grid(["learning_rate=1e-4,2e-4", "weight_decay=0.005"])
    assert grid == {"learning_rate": ["1e-4", "2e-4"], "weight_decay": ["0.005"]}
    trials = [
        sweep.Trial(sweep.trial_name(p), p, str(tmp_path / "t"), eval_loss=loss, final_train_loss=1.0, done=True)
        for p, loss in zip(sweep.combinations(grid), (0.9, 0.7))
    ]
    result = sweep.summary(trials, grid)
    assert (
        result["best"] == "learning_rate=2e-4,weight_decay=0.005" and result["best_params"]["learning_rate"] == "2e-4"
    )
    assert "`learning_rate=2e-4,weight_decay=0.005` (best) | 2e-4 | 0.005 | 0.7000" in sweep.table(result)
    # no eval split: the final training loss decides
    assert sweep.objective(sweep.Trial("x", {}, "", eval_loss=None, final_train_loss=1.5, done=True)) == 1.5
    history = [{"loss": 2.0, "epoch": 0.5}, {"loss": 1.0, "epoch": 1.0}, {"loss": 0.5, "epoch": 1.5}]
    assert sweep.loss_per_epoch(history) == {1: 1.5, 2: 0.5}
