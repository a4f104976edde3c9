"""--finetuning full / prefix / ptuning through training/train.py for real on the embedded model (each
run killed with SIGKILL at its first checkpoint and resumed), its output served by the chatbot runtime
and refused or taken by the GGUF export; the settings a method cannot take, refused at start; and the
Python API, which runs the CPU recipe exactly as the command line does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chat_runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "training" / "recipes"
# A short run: 32 rows (3 held out), 4 steps, a checkpoint every 2 (the SIGKILL comes after the first).
SHORT = [
    "--max_rows",
    "32",
    "--max_steps",
    "4",
    "--logging_steps",
    "1",
    "--save_steps",
    "2",
    "--eval_steps",
    "4",
    "--max_seq_length",
    "128",
    "--sample_max_new_tokens",
    "8",
    "--verify",
    "false",
]
# method -> (recipe args, the artifact folder)
METHODS = {
    "full": (["--config", str(RECIPES / "cpu-smollm2-full.yaml")], "model"),
    "prefix": (["--config", str(RECIPES / "cpu-smollm2-prefix.yaml")], "adapter"),
    "ptuning": (["--config", str(RECIPES / "cpu-smollm2-prefix.yaml"), "--finetuning", "ptuning"], "adapter"),
}


@pytest.fixture(scope="module", params=list(METHODS))
def method_run(request, tmp_path_factory, train_script):
    """One run per method, killed with SIGKILL once checkpoint-2 is on disk and resumed by the same
    command: (method, run folder, artifact folder, the resumed process)."""
    name = request.param
    args, folder = METHODS[name]
    run_dir = tmp_path_factory.mktemp(f"method-{name}") / "run"
    resumed, _ = train_script[1]([*args, *SHORT], run_dir, checkpoint=2, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return name, run_dir, run_dir / folder, resumed


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(2400)
def test_each_method_resumes_after_sigkill_and_lowers_held_out_loss_below_the_base(method_run):
    name, run_dir, artifact, resumed = method_run
    assert "resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    metrics = json.loads((artifact / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    # Measured after 4 steps and a resume (3 Dec, Zen 4, bf16), base 2.079: full 1.370, prefix 1.882,
    # p-tuning 1.962 (the smallest gap, 6%; in fp32 it read 2.017 against 2.08). Below the base is the bar.
    assert metrics["eval"]["loss"] < metrics["base_eval"]["loss"], (name, metrics["eval"], metrics["base_eval"])
    steps = sorted(e["step"] for e in metrics["log_history"] if "loss" in e)
    assert steps == [1, 2, 3, 4]  # the steps before the kill come back from the checkpoint
    if name == "ptuning":  # its encoder whole, which peft's own save leaves out
        assert (run_dir / "checkpoints" / "checkpoint-2" / "prompt_encoder.safetensors").is_file()
    recipe = yaml.safe_load((artifact / "recipe.yaml").read_text())
    assert recipe["finetuning"] == name and recipe["substitutions"].get("finetuning") is None
    weights = "model.safetensors" if name == "full" else "adapter_model.safetensors"
    assert (artifact / weights).is_file() and (artifact / "chat_template.jinja").is_file()
    samples = json.loads((artifact / "samples.json").read_text())
    assert len(samples) == 5 and all(s["base"] for s in samples)  # the base's replies, for every method
    if name != "full":
        config = json.loads((artifact / "adapter_config.json").read_text())
        assert config["peft_type"] == {"prefix": "PREFIX_TUNING", "ptuning": "P_TUNING"}[name]
        assert config["num_virtual_tokens"] == 20
    assert f"{artifact.name:<15} {artifact}" in resumed.stdout  # the summary names the artifact


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(2400)
def test_the_chatbot_runtime_serves_each_methods_output(method_run):
    from chat_runtime import ChatService, GenerationParams, ModelSpec

    name, _, artifact, _ = method_run
    spec = ModelSpec(base=str(artifact)) if name == "full" else ModelSpec(adapter=str(artifact))
    service = ChatService.from_spec(spec)
    assert service.engine.name == "transformers"
    if name != "full":
        assert type(service.engine.model).__name__.startswith("Peft")
    replies = list(service.reply("What is 12 + 30?", [], None, GenerationParams(temperature=0, max_new_tokens=12)))
    assert replies[-1].text.strip()


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(2400)
def test_each_card_says_what_was_trained_and_how_to_serve_it(method_run):
    name, _, artifact, _ = method_run
    card = (artifact / "README.md").read_text()
    assert f"--finetuning {name}" in card and f"tags:\n- finch\n- {name}" in card
    assert "| lora_r |" not in card  # LoRA settings are not this run's
    if name == "full":
        assert "library_name: transformers" in card and "FINCH_MODEL=" in card
        assert "gguf/export.py --model" in card
    else:
        assert "library_name: peft" in card and "FINCH_ADAPTER=" in card and "| num_virtual_tokens | 20 |" in card
        assert "**No GGUF form.**" in card and "gguf/export.py" not in card


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(2400)
def test_the_gguf_export_takes_a_full_fine_tune_and_refuses_virtual_token_adapters_at_once(method_run, tmp_path):
    name, _, artifact, _ = method_run
    out = tmp_path / "gguf"
    if name != "full":
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "gguf" / "export.py"), "--adapter", str(artifact), "--output_dir", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2 and "has no GGUF form" in proc.stderr, proc.stderr[-2000:]
        assert "--finetuning lora or full" in proc.stderr and "Traceback" not in proc.stderr
        assert not list(out.glob("*.gguf")) and time.monotonic() - started < 120
        return
    proc = subprocess.run(
        [sys.executable, str(ROOT / "gguf" / "export.py"), "--model", str(artifact)]
        + ["--quant", "q8_0", "--name", "full", "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The file answers like the model (through the runtime's llama.cpp engine): gguf/verify.py on a whole model
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 12 + 30?\nWhat is the capital of France?\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "gguf" / "verify.py"), "--model", str(artifact), "--gguf_dir", str(out)]
        + ["--quant", "q8_0", "--prompts_file", str(prompts), "--max_new_tokens", "16", "--agree_tokens", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a reply ran past 16 tokens (a short cap here)
    assert "| model | - |" in proc.stdout and "| gguf-q8_0 | " in proc.stdout
    assert "NO: template drift" not in proc.stdout  # the GGUF is prompted with the ids the model trained on


# Settings a method cannot take fail at start, each saying what to use instead (no model loads).


def _problems(**settings) -> str:
    from finetune import config

    with pytest.raises(UserError) as err:
        config.check(*config.load_config(str(RECIPES / "cpu-smollm2-sample.yaml"), **settings).parts())
    return str(err.value)


def test_lora_settings_with_prefix_or_ptuning_or_full_are_refused_with_the_fix():
    message = _problems(finetuning="prefix")  # the CPU recipe sets lora_alpha 32
    assert (
        "finetuning prefix does not read lora_alpha: drop them (prefix tuning's size is num_virtual_tokens)" in message
    )
    assert "does not read lora_r, lora_alpha: drop them" in _problems(finetuning="ptuning", lora_r=8)
    assert "full fine-tuning trains every weight and has no adapter shape" in _problems(finetuning="full")
    assert "finetuning lora does not read num_virtual_tokens" in _problems(num_virtual_tokens=8)


def test_methods_that_cannot_run_together_are_refused_with_the_fix():
    from finetune import config

    prefix = {"lora_alpha": 16, "finetuning": "prefix"}
    assert "Unsloth trains lora and qlora here, not prefix: use --backend peft" in _problems(
        backend="unsloth", **prefix
    )
    assert "dpo trains a LoRA here" in _problems(method="dpo", **prefix)
    full = {"lora_alpha": 16, "finetuning": "full"}
    assert "to go on from a full fine-tune, pass its folder as --model" in _problems(adapter="runs/x/adapter", **full)
    assert "finetuning 'adapter' is not one of lora, qlora, full, prefix, ptuning" in _problems(finetuning="adapter")
    assert "padding_free batches sft rows on lora, qlora or full" in _problems(padding_free=True, **prefix)
    assert "padding_free batches sft rows" in _problems(padding_free=True, method="dpo")
    # there is no 4-bit full fine-tune to ask for: 4-bit is qlora, one value of the same setting
    assert config.ModelArgs(finetuning="full").load_in_4bit is False
    assert config.ModelArgs(finetuning="qlora").load_in_4bit is True


@pytest.mark.e2e
@pytest.mark.trains
def test_a_padding_free_batch_gives_the_loss_of_the_same_rows_padded(embedded_hf, tmp_path):
    """Finch's SFT trainer with padding_free: four sample rows of different lengths laid end to end
    (one row, no padding token) give the loss the same rows padded to the longest give, and that is
    trl's own loss (Finch computes it at the labelled positions only on a CPU)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from finetune import data, masking
    from finetune.loop import sft_trainer

    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    masking.prepare_tokenizer(tokenizer)
    prepared = data.prepare([str(ROOT / "training/data/sample_sharegpt.jsonl")], ["sharegpt"], [1.0], 0.0, 3407)
    rows, _ = masking.tokenize(prepared.train.select(range(4)), tokenizer, 256)
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert len(set(lengths)) > 1, lengths  # padding to the longest would add tokens
    model = AutoModelForCausalLM.from_pretrained(embedded_hf, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).eval()
    losses = {}
    for free in (False, True):
        config = SFTConfig(
            output_dir=str(tmp_path / f"free-{free}"),
            padding_free=free,
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
            use_cpu=True,
            report_to=[],
        )
        trainer = sft_trainer()(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
        batch = trainer.data_collator(list(rows))
        assert batch["input_ids"].shape == ((1, sum(lengths)) if free else (4, max(lengths)))
        with torch.no_grad():
            losses[free] = trainer.compute_loss(model, batch).item()
            if not free:
                losses["trl"] = SFTTrainer.compute_loss(trainer, model, batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5), losses
    assert losses[False] == pytest.approx(losses["trl"], rel=1e-5), losses


@pytest.mark.e2e  # a subprocess that imports trl: seconds, not milliseconds
def test_an_impossible_method_fails_at_start_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--config", str(RECIPES / "cpu-smollm2-sample.yaml")]
        + ["--finetuning", "prefix", "--output_dir", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "finetuning prefix does not read lora_alpha" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Traceback" not in proc.stderr


# The Python API: the command line's function, called from a notebook.

API_RUN = """
import sys
from finetune import load_config, train
config = load_config(sys.argv[1], output_dir=sys.argv[2], max_rows=16, max_steps=2, save_steps=2, eval_steps=2,
                     max_seq_length=96, sample_max_new_tokens=4, verify=False, logging_steps=1)
print("returned", train(config))
"""


@pytest.mark.e2e
@pytest.mark.trains
@pytest.mark.timeout(2400)
def test_the_python_api_runs_the_cpu_recipe_exactly_as_the_command_line(tmp_path, train_script):
    recipe = RECIPES / "cpu-smollm2-sample.yaml"
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    cli = train_script[0](
        *["--config", str(recipe), "--output_dir", str(cli_dir), "--max_rows", "16", "--max_steps", "2"],
        *["--save_steps", "2", "--eval_steps", "2", "--max_seq_length", "96", "--sample_max_new_tokens", "4"],
        *["--verify", "false", "--logging_steps", "1"],
        timeout=1200,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    api = subprocess.run(
        [sys.executable, "-c", API_RUN, str(recipe), str(api_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert api.returncode == 0, api.stderr[-3000:]
    assert f"returned {api_dir / 'adapter'}" in api.stdout

    def files(run_dir: Path) -> list[str]:
        # TensorBoard names its file by time, host and process: its folder and count must match
        names = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()]
        return sorted(n if "tfevents" not in n else n.split("events.out")[0] + "events" for n in names)

    assert files(api_dir) == files(cli_dir)
    for name in ("recipe.yaml", "adapter/recipe.yaml"):
        cli_recipe, api_recipe = (yaml.safe_load((d / name).read_text()) for d in (cli_dir, api_dir))
        assert cli_recipe.pop("output_dir") == str(cli_dir) and api_recipe.pop("output_dir") == str(api_dir)
        assert api_recipe == cli_recipe
