"""--report_to wandb trackio: offline, files under the run's logs, and no key in any file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"HF_TOKEN": "hf_" + "k" * 34, "WANDB_API_KEY": "w" * 40}


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(1200)
def test_wandb_and_trackio_write_their_files_offline_and_no_key_lands_in_a_file(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "training" / "train.py"),
            *("--config", str(ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml")),
            *("--max_rows", "16", "--eval_fraction", "0.25", "--max_steps", "2", "--eval_steps", "2"),
            *("--save_steps", "2", "--logging_steps", "1", "--max_seq_length", "64", "--verify", "false"),
            *("--sample_prompts", "Hi", "--sample_max_new_tokens", "2", "--sample_every_eval", "0"),
            *("--report_to", "wandb", "trackio", "--output_dir", str(run_dir)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, **KEYS},
        timeout=1100,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wandb_runs = list((run_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wandb_runs and wandb_runs[0].stat().st_size > 0  # `wandb sync` uploads it later
    trackio_db = list((run_dir / "logs" / "trackio").rglob("finch*.db"))
    assert trackio_db, sorted(p.name for p in (run_dir / "logs" / "trackio").rglob("*"))
    assert json.loads((run_dir / "adapter" / "metrics.json").read_text())["global_step"] == 2
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(key.encode() in data for key in KEYS.values()), path
