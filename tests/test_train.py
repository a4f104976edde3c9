"""training/train.py for real on the embedded model: real steps, real checkpoints, real kills."""

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

# Real training runs on 2 cores. The tests that train are marked `trains`; the rest (options, recipes,
# the checks before training) also run on requirements-gpu.txt's versions.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500), pytest.mark.gpu_set]

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml"
# A short run for the fault tests: 64 rows, 12 steps.
QUICK = [
    "--config",
    str(CPU_RECIPE),
    "--max_rows",
    "64",
    "--max_steps",
    "12",
    "--logging_steps",
    "1",
    "--save_steps",
    "4",
    "--eval_steps",
    "4",
    "--max_seq_length",
    "128",
    "--sample_max_new_tokens",
    "8",
    "--verify",
    "false",
]


@pytest.fixture
def train(train_script):
    """`python training/train.py ARGS` as a user runs it, its output captured (conftest's run_train)."""
    return train_script[0]


@pytest.mark.trains
def test_the_cpu_recipe_learns_and_leaves_a_complete_run_folder(trained_run):
    run_dir, proc = trained_run
    adapter = run_dir / "adapter"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "recipe.yaml",
        "metrics.json",
        "loss.png",
        "samples.json",
        "README.md",
    ):
        assert (adapter / name).is_file(), name
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))
    metrics = json.loads((adapter / "metrics.json").read_text())
    # Measured on this run (32 steps; Zen 4 with bf16, 3 Dec; the same to the last digit in a quiet and
    # in a loaded run): train loss 1.927 -> 0.292 (0.15x), held-out loss 2.186 -> 0.458. The bars are
    # "learned" and "below the base", far from both values.
    assert metrics["final_train_loss"] < metrics["first_train_loss"] * 0.5
    assert metrics["eval"]["loss"] < metrics["base_eval"]["loss"]  # held-out loss below the base's
    assert metrics["dropped"] == {} and metrics["rows"]["train"] > 200
    recipe = yaml.safe_load((adapter / "recipe.yaml").read_text())
    assert recipe["lora_r"] == 16 and recipe["base_model_id"].endswith("SmolLM2-135M-Instruct-hf")
    from finetune.backends import cpu_has_bf16

    # precision auto: bf16 autocast where the CPU computes bf16 natively, fp32 elsewhere; the run says which
    assert recipe["precision"] == "auto"
    assert metrics["device"] == ("CPU, bf16 mixed precision" if cpu_has_bf16() else "CPU, fp32")
    assert "Finch training run complete" in proc.stdout and "tokens/s" in proc.stdout


@pytest.mark.trains
def test_the_plan_matches_the_run_and_its_eta_its_time(trained_run):
    run_dir, proc = trained_run
    plan = json.loads((run_dir / "plan.json").read_text())
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert proc.stdout.lstrip().startswith("Plan (counted from the settings")  # the run's first lines
    assert plan["steps"] == metrics["global_step"] and plan["eval_rows"] == metrics["rows"]["eval"]
    evaluated = {e["step"] for e in metrics["log_history"] if "eval_loss" in e}
    assert 1 + len(evaluated) == plan["evaluations"]  # the base's, and every logged one
    # the ETA given after the first steps, against the training loop's real time
    said = float(proc.stderr.split("ETA after the first steps")[1].split("training loop ")[1].split(" s")[0])
    # the run's summary entry (the loss entries carry the time so far too)
    took = next(e["train_runtime"] for e in reversed(metrics["log_history"]) if "train_loss" in e)
    # The ETA extrapolates the first steps' wall-clock rate. Alone, this run said 83 s and took 86 s
    # (3 Dec, Zen 4), and 63 s for 70 s once the recipe trained padding-free (4 Dec): the 30% users
    # are promised. In the suite another test process runs beside it,
    # and when that process moves from loading to training, this run slows: 114 s said, 178 s taken
    # in one fresh-clone run. So the suite's bar is a factor of 2: it catches an ETA that is wrong by a
    # factor (the steps of one epoch for the run's, say), not one that is off by a third; that is
    # measured alone.
    assert took / 2 <= said <= took * 2, (said, took)


@pytest.mark.trains
def test_the_adapter_holds_the_checkpoint_with_the_lowest_logged_eval_loss(tmp_path, train):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    proc = train(
        *QUICK,
        *("--max_steps", "6", "--eval_steps", "2", "--save_steps", "3", "--learning_rate", "3e-2"),
        *("--lr_scheduler_type", "cosine_with_min_lr", "--min_lr_ratio", "0.5", "--warmup_ratio", "0.3"),
        *("--output_dir", str(run_dir)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    losses = {e["step"]: e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e and e["step"] > 0}
    assert sorted(losses) == [2, 4, 6]  # every 2 steps (the end is one of them), each with its checkpoint
    best = min(losses, key=losses.get)
    assert metrics["adapter_checkpoint"]["kept"] == "best" and metrics["adapter_checkpoint"]["step"] == best
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    kept = load_file(run_dir / "checkpoints" / f"checkpoint-{best}" / "adapter_model.safetensors")
    assert adapter.keys() == kept.keys() and all((adapter[k] == kept[k]).all() for k in adapter)
    assert metrics["eval"]["loss"] == round(losses[best], 4)
    assert f"the best checkpoint: step {best} of 6" in (run_dir / "adapter" / "README.md").read_text()
    # warm-up over 30% of the steps from 0, then cosine down to no less than half the peak
    rates = [e["learning_rate"] for e in metrics["log_history"] if "learning_rate" in e]
    assert rates[0] == 0 and max(rates) == pytest.approx(3e-2) and min(rates[2:]) >= 1.5e-2 * 0.999
    assert "sample at step 2:" in proc.stderr and "ETA after the first steps" in proc.stderr
    assert json.loads((run_dir / "plan.json").read_text())["evaluations"] == 1 + 3


@pytest.mark.trains
def test_the_fine_tune_visibly_changes_the_replies(trained_run):
    samples = json.loads((trained_run[0] / "adapter" / "samples.json").read_text())
    tuned = [s["fine_tuned"].startswith("Finch here") for s in samples]
    assert sum(tuned) >= len(samples) - 1, samples  # measured: 5 of 5 (3 Dec); one may keep the base's habit
    assert not any(s["base"].startswith("Finch here") for s in samples)


@pytest.mark.trains
def test_the_model_card_tells_how_to_use_the_adapter(trained_run):
    card = (trained_run[0] / "adapter" / "README.md").read_text()
    for text in (
        "library_name: peft",
        "SmolLM2-135M-Instruct",
        "| lora_r | 16 |",
        "fine-tuned eval loss",
        "FINCH_ADAPTER=",
        "AutoPeftModelForCausalLM",
        "gguf/export.py",
        "![train and eval loss](loss.png)",
    ):
        assert text in card, text


@pytest.mark.trains
def test_the_adapter_loads_with_peft_and_through_the_chatbot_runtime(trained_run):
    from peft import AutoPeftModelForCausalLM

    from chat_runtime import ChatService, GenerationParams, ModelSpec

    adapter = trained_run[0] / "adapter"
    model = AutoPeftModelForCausalLM.from_pretrained(adapter)
    assert type(model).__name__.startswith("Peft")
    service = ChatService.from_spec(ModelSpec(adapter=str(adapter)))
    replies = list(
        service.reply("What is the capital of Peru?", [], None, GenerationParams(temperature=0, max_new_tokens=60))
    )
    text = replies[-1].text
    assert text.startswith("Finch here") and "Lima" in text
    ids = service.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < 40  # it stopped on its own (EOS), well before the cap


@pytest.mark.trains
def test_the_fine_tune_answers_the_same_merged_and_as_gguf(trained_run):
    """The bar for export fidelity on the CPU recipe: the run's own fidelity check (gguf/verify.py), in its card."""
    run_dir, proc = trained_run
    report = json.loads((run_dir / "adapter" / "fidelity.json").read_text())
    rows = {r["hop"]: r for r in report["summary"]}
    assert list(rows) == ["peft", "merged", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"], report["skipped"]
    # Every bar below is one prompt (of ten) under the lowest value measured for this run (32 steps)
    # over the recipe's seed 3407 (three runs: the same to the last digit on one machine) and seeds 1,
    # 2 and 3 (scripts/fidelity_spread.py, Zen 4, 3 Dec 2026). A seed stands in for another CPU kind:
    # bf16 training on CPU rounds differently on AVX-512 BF16, AMX and AVX2, and the merge, the
    # conversion and llama.cpp's decode repeat exactly (verify.py run again on one adapter gave the same
    # table), so the spread is the trained weights'.
    # The fine-tune learned to stop: greedy replies end with EOS on at least 8 of the 10 prompts (on a CPU
    # with bf16 this 135M model may repeat "a beach chair, a beach towel, ..." on the packing-list
    # prompt until the token limit: a greedy repetition loop, not a missing EOS label).
    assert all(r["ended_with_eos"] >= 0.7 for r in rows.values())
    # Near ties counted, each hop agrees with peft on all ten prompts in every run: a flip at a near
    # tie (the two best tokens within a few hundredths of a logit) is rounding, not a changed model.
    # That is the promise. Strictly, merged agreed 0.9-1.0, f16 0.9-1.0 with merged, and q8_0 0.6-0.7:
    # q8_0 rounds weights and activations, so its strict rate is printed, not asserted.
    for hop in ("merged", "gguf-f16", "gguf-q8_0"):
        assert rows[hop]["vs_reference_but_near_ties"] >= 0.9, (hop, rows[hop])
    assert rows["gguf-f16"]["previous"] == "merged" and rows["gguf-f16"]["vs_previous"] >= 0.8
    assert all(r["same_prompt_ids"] for r in rows.values())  # no template drift on the way to llama.cpp
    assert len(report["prompts"]) == 10 and report["agree_tokens"] == 32
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "## Fidelity (`python gguf/verify.py`)" in card and "| gguf-q8_0 |" in card
    assert "fidelity" in proc.stdout and not list(run_dir.glob(".finch-verify-*"))  # scratch removed
    print(
        "\n"
        + "\n".join(
            f"{h}: vs previous {r['vs_previous']}, vs peft {r['vs_reference']}, EOS {r['ended_with_eos']}"
            for h, r in rows.items()
        )
    )


def test_help_documents_every_option(train):
    from finetune.config import ARG_CLASSES

    proc = train("--help")
    assert proc.returncode == 0
    for cls in ARG_CLASSES:
        for f in fields(cls):
            assert f"--{f.name}" in proc.stdout, f.name
            assert f.metadata.get("help"), f.name


def test_the_production_recipe_is_the_default():
    from finetune.config import ARG_CLASSES

    recipe = yaml.safe_load((ROOT / "training" / "recipes" / "llama32-1b-finetome-qlora.yaml").read_text())
    defaults = {
        f.name: (f.default_factory() if callable(f.default_factory) else f.default)
        for cls in ARG_CLASSES
        for f in fields(cls)
    }
    assert {k: defaults[k] for k in recipe} == recipe


@pytest.mark.parametrize("recipe", sorted((ROOT / "training" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses_and_names_its_command(recipe):
    from trl import TrlParser

    from finetune.config import ARG_CLASSES, check

    parsed = TrlParser(ARG_CLASSES).parse_args_and_config(["--config", str(recipe)])
    check(*parsed)
    assert (
        f"python training/train.py --config training/recipes/{recipe.name}" in recipe.read_text()
        or recipe.name == "llama32-1b-finetome-qlora.yaml"
        and "python training/train.py" in recipe.read_text()
    )


def test_an_unknown_key_fails_at_start(tmp_path, train):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CPU_RECIPE.read_text() + "lora_rank: 8\n")
    proc = train("--config", str(bad), "--output_dir", str(tmp_path / "run"))
    assert proc.returncode != 0 and "lora_rank" in proc.stderr
    proc = train(
        "--config", str(CPU_RECIPE), "--learning-rat", "1", "--output_dir", str(tmp_path / "run2"), timeout=120
    )
    assert proc.returncode != 0 and "learning-rat" in proc.stderr  # no silent abbreviation


def test_a_precision_the_device_cannot_run_fails_at_start(tmp_path, train):
    proc = train("--config", str(CPU_RECIPE), "--precision", "fp16", "--output_dir", str(tmp_path / "run"), timeout=120)
    assert (
        proc.returncode != 0
        and "fp16 training needs a CUDA GPU; on a CPU use --precision auto, bf16 or fp32" in proc.stderr
    )
    assert "Converting" not in proc.stderr and "Traceback" not in proc.stderr
    proc = train("--config", str(CPU_RECIPE), "--precision", "half", "--output_dir", str(tmp_path / "run"), timeout=120)
    assert proc.returncode != 0 and "precision 'half' is not one of auto, fp32, bf16, fp16" in proc.stderr


def test_a_dataset_without_usable_rows_fails_before_the_model_loads(tmp_path, train):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    proc = train(
        "--config",
        str(CPU_RECIPE),
        "--dataset",
        str(data),
        "--dataset_format",
        "auto",
        "--output_dir",
        str(tmp_path / "run"),
    )
    assert proc.returncode != 0
    assert "columns found: ['answer', 'question']" in proc.stderr and "sharegpt (conversations)" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_tokenizer_that_is_not_the_models_own_fails_before_the_model_loads(tmp_path, embedded_hf, meta_llama3, train):
    """The embedded weights (49,152 embedding rows) beside Llama 3's tokenizer (ids up to 128,255)."""
    model = tmp_path / "mismatched"
    model.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (model / name).symlink_to(embedded_hf / name)
    meta_llama3.save_pretrained(model)
    proc = train(*QUICK, "--model", str(model), "--output_dir", str(tmp_path / "run"))
    assert proc.returncode != 0
    assert "Data preparation failed, nothing was trained" in proc.stderr
    assert "embedding has 49152 rows" in proc.stderr and "not the model's own" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.trains
def test_a_model_with_llama3s_tokenizer_trains_on_ids_from_tiktoken(tmp_path, train):
    """A tiny random Llama with Llama 3's real tokenizer (the llama3 stand-in): data goes through
    tiktoken (fastbpe), and the steps that follow are real."""
    from finetune import standin

    model = standin.build("llama3", tmp_path / "tiny-llama3")
    proc = train(*QUICK, "--model", str(model), "--max_steps", "4", "--output_dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokenizing with tiktoken (the same ids as the tokenizer, checked)" in proc.stderr
    metrics = json.loads((tmp_path / "run" / "adapter" / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and 0 < metrics["final_train_loss"] < 20


def test_an_unwritable_output_folder_fails_before_training(tmp_path, train):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = train("--config", str(CPU_RECIPE), "--output_dir", str(blocker / "run"))
    assert proc.returncode != 0 and "Cannot write to the output folder" in proc.stderr
    assert "Converting" not in proc.stderr


@pytest.mark.cuda
@pytest.mark.trains
@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_qlora_trains_on_a_cuda_gpu_through_each_backend(tmp_path, backend, train):
    """The GPU recipe's 4-bit base and 8-bit AdamW, a few real steps on a tiny random Llama."""
    from finetune import standin

    if backend == "unsloth":
        pytest.importorskip("unsloth", reason="Unsloth is not installed: pip install -r requirements-gpu.txt")
    model = standin.build("smollm2", tmp_path / "tiny")
    proc = train(
        *QUICK,
        "--model",
        str(model),
        "--backend",
        backend,
        "--finetuning",
        "qlora",
        "--optim",
        "adamw_8bit",
        "--gradient_checkpointing",
        "true",
        "--max_steps",
        "4",
        "--output_dir",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "adapter" / "metrics.json").read_text())
    assert metrics["backend"] == backend and metrics["global_step"] == 4 and 0 < metrics["final_train_loss"] < 20
    assert metrics["peak_memory_mb"] > 0 and "sm_" in metrics["device"]


@pytest.mark.trains
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, train):
    run_dir = tmp_path / "run"
    proc = train(*QUICK, "--learning_rate", "1e30", "--save_steps", "1", "--output_dir", str(run_dir))
    assert proc.returncode != 0 and "became NaN/inf at step" in proc.stderr, proc.stderr[-2000:]
    kept = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert kept, "the last good checkpoint is kept"
    bad_step = int(proc.stderr.split("at step ")[1].split(";")[0])
    assert all(int(p.name.split("-")[1]) < bad_step for p in kept)
    assert not (run_dir / "adapter").exists()


@pytest.mark.trains
def test_early_stopping_ends_a_run_whose_eval_loss_stops_improving(tmp_path, train):
    # learning rate 0: the eval loss never improves, so patience 1 ends the run at the second eval.
    run_dir = tmp_path / "run"
    proc = train(
        *QUICK,
        "--learning_rate",
        "0",
        "--early_stopping_patience",
        "1",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--precision",
        "fp32",
        "--output_dir",
        str(run_dir),
    )  # the fp32 path, on any CPU
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert metrics["device"] == "CPU, fp32"
    assert metrics["global_step"] == 4  # not the 12 max_steps asks for
    assert sorted({e["step"] for e in metrics["log_history"] if "eval_loss" in e}) == [2, 4]  # + the final eval at 4


@pytest.mark.trains
def test_a_run_killed_with_sigkill_resumes_to_the_same_final_step_and_losses(tmp_path, train_script):
    # Checkpoints at 4 and 8; the kill comes after checkpoint-8, which goes with it, so the resume
    # starts at checkpoint-4 and retakes steps 5-8 that the killed run took uninterrupted.
    short = [*QUICK, "--max_steps", "10"]
    run_dir = tmp_path / "killed"
    resumed, killed = train_script[1](short, run_dir, checkpoint=8, resume_from=4)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "checkpoint-4" in resumed.stderr
    final = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert final["global_step"] == 10
    got = {e["step"]: e["loss"] for e in final["log_history"] if "loss" in e}
    assert sorted(killed) == list(range(1, 9)) and sorted(got) == list(range(1, 11))
    for step in (5, 6, 7, 8):
        assert abs(got[step] - killed[step]) < 1e-4, (step, got[step], killed[step])


@pytest.mark.trains
def test_push_without_network_fails_clearly_keeps_the_run_and_never_shows_the_token(trained_run, tmp_path, train):
    run_dir = trained_run[0]
    token = "hf_" + "PlantedTestToken" * 2
    env = {"HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    proc = train(
        "--config", str(CPU_RECIPE), "--output_dir", str(run_dir), "--push_to_hub", "someone/finch-test", env=env
    )
    assert proc.returncode != 0 and "Push to someone/finch-test failed" in proc.stderr
    assert "run the same command again to push it" in proc.stderr
    assert "Loading weights" not in proc.stderr  # a finished run is not retrained
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    written = "".join(
        p.read_text(errors="ignore")
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in (".json", ".yaml", ".md", ".txt")
    )
    assert token not in proc.stdout + proc.stderr + written
