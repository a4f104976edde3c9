"""Preference tuning through training/train.py for real on the embedded model: DPO learns the
shipped preference set's style in a run that is killed with SIGKILL and resumed, trains on the
chatbot's vote rows from an adapter; ORPO takes real steps."""

import json
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # real training runs on 2 cores

ROOT = Path(__file__).resolve().parents[1]
DPO_RECIPE = ROOT / "training" / "recipes" / "cpu-smollm2-dpo.yaml"
# The recipe with fewer steps, evaluated before and after training only; the effect shows within them.
QUICK_DPO = [
    "--config",
    str(DPO_RECIPE),
    "--max_steps",
    "16",
    "--save_steps",
    "4",
    "--eval_steps",
    "100",
    "--logging_steps",
    "1",
    "--verify",
    "false",
    "--sample_max_new_tokens",
    "24",
]
USER = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="session")
def dpo_run(tmp_path_factory, train_script):
    """The quick DPO run, killed with SIGKILL after checkpoint-8 and resumed from checkpoint-4 (see
    kill_then_resume): (run folder, the resumed process, its metrics, the killed run's {step: loss})."""
    run_dir = tmp_path_factory.mktemp("runs") / "dpo"
    proc, killed = train_script[1](QUICK_DPO, run_dir, checkpoint=8, resume_from=4, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc, json.loads((run_dir / "adapter" / "metrics.json").read_text()), killed


def test_dpo_raises_held_out_reward_accuracy_well_above_chance(dpo_run):
    _, proc, metrics, _ = dpo_run
    pref = metrics["preference"]
    # The base is the reference: its rewards are zero by definition, so it ranks no pair right.
    assert pref["base_eval"]["rewards/accuracies"] == 0 and pref["base_eval"]["rewards/margins"] == 0
    # Measured on the 16 held-out pairs (3 Dec, Zen 4, bf16): reward accuracy 1.0, margin 4.41, chosen
    # log-prob -4.1 against rejected -119 (2 Dec, an earlier EPYC: 1.0 and 4.35). Chance is 0.5.
    assert pref["eval"]["rewards/accuracies"] >= 0.85, pref
    assert pref["eval"]["rewards/margins"] > 0.5 and pref["eval"]["logps/chosen"] > pref["eval"]["logps/rejected"]
    # The loss is DPO's (ln 2 for the base, the reference) plus the chosen replies' NLL (the recipe's
    # sft_weight): measured 2.177 for the base, 0.309 after 16 steps.
    assert metrics["eval"]["loss"] < metrics["base_eval"]["loss"] * 0.75
    assert metrics["method"] == "dpo" and metrics["rows"] == {"train": 295, "eval": 16} and metrics["dropped"] == {}
    assert "reward accuracy base" in proc.stdout


def test_dpo_shifts_the_sample_replies_toward_the_chosen_style(dpo_run):
    samples = json.loads((dpo_run[0] / "adapter" / "samples.json").read_text())
    assert not any(s["base"].startswith("In short") for s in samples)
    # Measured 4 of 5 (2 Dec and 3 Dec): at this bar, which lets one reply keep the base's opening.
    assert sum(s["fine_tuned"].startswith("In short") for s in samples) >= len(samples) - 1, samples


def test_the_dpo_card_and_plot_show_the_reward_metrics_next_to_the_bases(dpo_run):
    adapter = dpo_run[0] / "adapter"
    card = (adapter / "README.md").read_text()
    for text in (
        "- dpo",
        "reward accuracy (base eval)",
        "reward accuracy (fine-tuned eval)",
        "reward margin",
        "chosen log-prob (fine-tuned eval)",
        "rejected log-prob (base eval)",
        "![train and eval loss](loss.png)",
    ):
        assert text in card, text
    assert (adapter / "loss.png").stat().st_size > 10_000
    recipe = yaml.safe_load((adapter / "recipe.yaml").read_text())
    assert recipe["method"] == "dpo" and recipe["beta"] == 0.1


def test_a_dpo_run_killed_with_sigkill_resumes_to_the_same_losses(dpo_run):
    _, proc, metrics, killed = dpo_run
    assert "resuming from" in proc.stderr and "checkpoint-4" in proc.stderr
    got = {e["step"]: e["loss"] for e in metrics["log_history"] if "loss" in e}
    assert sorted(killed) == list(range(1, 9)) and sorted(got) == list(range(1, 17))
    for step in (5, 6, 7, 8):  # taken by the killed run uninterrupted, and again by the resumed one
        assert abs(got[step] - killed[step]) < 1e-4, (step, got[step], killed[step])


def vote(kind: str, reply: str, prompt=USER) -> dict:
    """A like/dislike row as the chatbot writes it (see the README's vote row)."""
    return {
        "kind": kind,
        "prompt": prompt,
        "reply": reply,
        "model": "finch",
        "settings": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "repetition_penalty": 1.1},
        "time": "2026-12-02T06:00:00Z",
    }


def compare(question: str, left: str, right: str, choice: str) -> dict:
    return {
        "kind": "compare",
        "prompt": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
        "left": {"model": "base", "reply": left},
        "right": {"model": "runs/dpo/adapter", "reply": right},
        "choice": choice,
        "settings": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "repetition_penalty": 1.1},
        "time": "2026-12-02T06:00:00Z",
    }


def test_the_chatbots_vote_rows_train_dpo_steps_on_top_of_an_adapter(dpo_run, train_script, tmp_path):
    rows = [
        compare(
            f"What is {n} + {n}?",
            f"Well, let me think. It is {2 * n}, I believe.",
            f"In short: {2 * n}.",
            "right" if n % 2 else "left",
        )
        for n in range(2, 10)
    ]
    rows += [
        vote("dislike", "Well, colours are a big subject. Blue."),
        vote("like", "In short: blue."),
        compare("Hi", "Hello!", "Hi there!", "tie"),
        vote("like", "In short: red.", prompt=[{"role": "user", "content": "Another colour?"}]),
    ]
    votes = tmp_path / "votes.jsonl"
    votes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "from-votes"
    proc = train_script[0](
        "--config",
        str(DPO_RECIPE),
        "--dataset",
        str(votes),
        "--adapter",
        str(dpo_run[0] / "adapter"),
        "--max_steps",
        "2",
        "--eval_fraction",
        "0",
        "--logging_steps",
        "1",
        "--verify",
        "false",
        "--sample_max_new_tokens",
        "4",
        "--sft_weight",
        "0",  # plain DPO: its loss at a zero margin is exactly ln 2 (the recipe's SFT term would add the NLL)
        "--output_dir",
        str(run_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["rows"]["train"] == 9
    assert metrics["dropped"] == {"tie": 1, "unpaired like/dislike": 1}
    first = next(e for e in metrics["log_history"] if "loss" in e)
    # The reference is the starting adapter itself (not the base): at the first step the rewards are exactly 0.
    assert first["rewards/margins"] == 0 and abs(first["loss"] - 0.6931) < 1e-3
    assert not (run_dir / "adapter" / "ref").exists()  # the saved adapter is the trained one alone


def test_orpo_takes_real_steps(train_script, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "orpo"
    proc = train_script[0](
        "--config",
        str(DPO_RECIPE),
        "--method",
        "orpo",
        "--max_rows",
        "16",
        "--max_steps",
        "2",
        "--eval_fraction",
        "0",
        "--logging_steps",
        "1",
        "--verify",
        "false",
        "--sample_max_new_tokens",
        "4",
        "--output_dir",
        str(run_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    logs = [e for e in metrics["log_history"] if "loss" in e]
    assert metrics["global_step"] == 2 and len(logs) == 2 and all(0 < e["loss"] < 20 for e in logs)
    assert "log_odds_ratio" in logs[0] and "rewards/accuracies" in metrics["preference"]["train"]
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)  # LoRA B starts at zero


def test_a_preference_set_without_usable_pairs_fails_before_the_model_loads(train_script, tmp_path):
    ties = tmp_path / "ties.jsonl"
    ties.write_text(json.dumps(compare("Hi", "Hello!", "Hi there!", "tie")) + "\n")
    proc = train_script[0](
        "--config", str(DPO_RECIPE), "--dataset", str(ties), "--output_dir", str(tmp_path / "run"), timeout=300
    )
    assert proc.returncode != 0 and "Data preparation failed, nothing was trained" in proc.stderr
    assert "no usable rows" in proc.stderr and "'tie': 1" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Traceback" not in proc.stderr
