"""The plan (finetune.budget): counted from the settings alone, no model loaded and no data downloaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "training" / "recipes").glob("*.yaml"))


def recipe_settings(path: Path, *overrides: str) -> dict:
    from trl import TrlParser

    from finetune import config as cfg

    parsed = TrlParser(cfg.ARG_CLASSES).parse_args_and_config(["--config", str(path), *overrides])
    cfg.check(*parsed)
    return cfg.as_dict(*parsed)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_spends_at_most_a_tenth_of_its_compute_on_evaluation(recipe):
    from finetune import budget

    plan = budget.estimate(recipe_settings(recipe))
    assert plan.steps and plan.steps > 0 and plan.rows
    assert plan.eval_rows > 0 and plan.evaluations >= 2  # the base before training and the end at least
    assert 0 < plan.eval_share <= budget.EVAL_SHARE_LIMIT, budget.describe(plan)
    assert plan.trainable_params and plan.checkpoints_disk_mb and plan.t4_hours is not None


def test_the_old_default_cadence_is_the_waste_the_plan_shows():
    # every 50 steps on all 5% held out (5,000 rows of FineTome-100k): 3x the training compute
    from finetune import budget

    plan = budget.estimate(
        recipe_settings(
            RECIPES[0].parent / "llama32-1b-finetome-qlora.yaml", "--eval_steps", "50", "--eval_max_rows", "0"
        )
    )
    assert plan.eval_rows == 5000 and plan.steps == 11875 and plan.evaluations == 1 + 237 + 1
    assert plan.eval_share > 3


def test_counts_follow_the_trainer_arithmetic():
    from finetune import budget

    # 286 rows, 10% held out (29), 257 trained at 4 per step: 65 steps; evaluations at 40, the end (65) and the base
    plan = budget.estimate(recipe_settings(ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml"))
    assert (plan.rows, plan.train_rows, plan.eval_rows, plan.steps, plan.evaluations) == (286, 257, 24, 65, 3)
    assert plan.eval_share == pytest.approx(3 * 24 * 1 / (65 * 4 * 3), abs=1e-4)
    assert plan.checkpoints_saved == 4  # 20, 40, 60 and the end
    # LoRA r=16 on all 7 projections of SmolLM2-135M: the 4.9M trainable weights peft reports
    assert plan.trainable_params == 4_884_480


def test_a_dry_run_counts_a_hub_set_from_the_rows_the_user_gives_and_loads_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "training" / "train.py"),
            "--config",
            str(ROOT / "training" / "recipes" / "llama32-1b-finetome-qlora.yaml"),
            "--model",
            str(tmp_path / "no-such-model"),  # never loaded: a dry run reads no weights
            "--dataset",
            "someone/unknown-set",  # never downloaded: the row count comes from --dataset_rows
            "--dataset_rows",
            "20000",
            "--output_dir",
            str(out),
            "--dry_run",
            "true",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads((out / "plan.json").read_text())
    # 20,000 rows, 5% held out: 19,000 trained at 8 per step
    assert plan["steps"] == 2375 and plan["eval_rows"] == 200 and plan["evaluations"] == 1 + 11 + 1
    assert 0 < plan["eval_share"] < 0.1
    assert "eval share" in proc.stdout and "steps           2,375" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]  # no recipe, no checkpoints


def test_a_set_the_plan_cannot_count_says_how_to_give_its_rows():
    from finetune import budget

    settings = recipe_settings(ROOT / "training" / "recipes" / "llama32-1b-finetome-qlora.yaml")
    plan = budget.estimate({**settings, "dataset": ["someone/unknown-set"]})
    assert plan.steps is None and "--dataset_rows" in plan.rows_source
    assert "--dataset_rows" in budget.describe(plan)


def test_the_eval_sample_is_capped_and_the_same_rows_every_time():
    from finetune import data

    sample = str(ROOT / "training" / "data" / "sample_sharegpt.jsonl")
    first = data.prepare([sample], ["sharegpt"], [1.0], 0.1, 3407, eval_max_rows=10)
    again = data.prepare([sample], ["sharegpt"], [1.0], 0.1, 3407, eval_max_rows=10)
    assert len(first.eval) == 10 and first.eval["messages"] == again.eval["messages"]
    assert len(first.train) == 257  # the capped rows stay held out: training data is unchanged


def test_the_fidelity_check_after_training_is_in_the_plan_and_a_3b_reference_fits_a_16_gb_card():
    from finetune import budget

    kannada = recipe_settings(ROOT / "training" / "recipes" / "llama32-3b-kannada.yaml")
    plan = budget.estimate(kannada)
    # peft reference, merge, and the three GGUF files of verify_quants
    assert plan.fidelity_hops == 2 + len(kannada["verify_quants"]) == 5
    # 3.2B weights in 16 bits: 6.0 GiB, where fp32 would take 12.0 GiB beside the trained 4-bit model
    assert plan.fidelity_gpu_gib == pytest.approx(3.213e9 * 2 / 2**30, abs=0.1) and plan.fidelity_gpu_gib < 8
    assert plan.fidelity_disk_gib > plan.fidelity_gpu_gib and plan.fidelity_cpu_minutes > 0
    assert "fidelity check  5 hops" in budget.describe(plan)
    full = budget.estimate({**kannada, "finetuning": "full"})
    assert full.fidelity_hops == 4  # no merge: the model itself is the reference
    for off in ({"verify": False}, {"finetuning": "prefix"}):
        plan = budget.estimate({**kannada, **off})
        assert plan.fidelity_hops == 0 and "none after training" in budget.describe(plan)
