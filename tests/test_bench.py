"""Smoke test of the benchmarks: every bench/ script runs in its quick mode and prints its result
lines. The numbers are not checked here (speed targets live in the scripts and docs/BENCHMARKS.md).
They are not in the default run (about 15 minutes on 2 cores): `pytest -m bench -n 0` runs them, one at a time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(ratio|result) .+: -?[\d,.]+", re.M)

# script -> the result lines it must print (one per measurement)
SCRIPTS = {
    "chat_engine.py": 2,
    "roofline.py": 2,
    "data_prep.py": 2,
    "gradio_ttft.py": 3,
    "gguf_vs_transformers.py": 2,
    "export_cost.py": 2,
    "train_speed.py": 4,
    "story_grammar.py": 4,
    "story_rubric.py": 1,
    "judge_speed.py": 2,
    "compare_ttft.py": 3,
    "dpo_speed.py": 3,
    "long_chat.py": 2,
    "concurrent_users.py": 2,
    "portable_build.py": 1,
}


@pytest.mark.e2e
@pytest.mark.bench  # ~15 min together (each side of a comparison is a subprocess): `pytest -m bench -n 0`
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bench_script_runs_quick_and_prints_its_results(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = LINE.findall(proc.stdout)
    assert len(lines) == SCRIPTS[script], proc.stdout
    assert "# load average at start:" in proc.stdout  # every run records the machine's load
