"""What a run leaves behind, in one folder (`adapter/`, written atomically): the adapter and
tokenizer (with its chat template), the resolved recipe, metrics, a loss plot, base vs fine-tuned
samples and a model card. Also the upload of that folder."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from chat_runtime.errors import UserError
from chat_runtime.templating import render

from .config import FINETUNING
from .run import save_recipe

log = logging.getLogger(__name__)

CARD = """
# {name}

{what} of [{base}]({base_link}) trained with Finch (`python training/train.py`, `--finetuning {finetuning}`).

## Data
{data}

## Hyperparameters
| setting | value |
|---|---|
{hparams}

## Results
| metric | value |
|---|---|
{metrics}

![train and eval loss](loss.png)

## Base vs fine-tuned (greedy)
{samples}

{fidelity}
{use}"""


USE_ADAPTER = """## Use it
In a Finch Space or locally: `FINCH_ADAPTER={repo} python chatbot_app/app.py` (the base is read from
`adapter_config.json`).

With peft:
```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```
"""
USE_MODEL = """## Use it
A whole model (safetensors, with its tokenizer and chat template): in a Finch Space or locally
`FINCH_MODEL={repo} python chatbot_app/app.py`; an inference server takes the folder as it is
(`vllm serve {repo}`).

With transformers:
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```
"""
GGUF_FROM_ADAPTER = """
On your CPU through llama.cpp: `python gguf/export.py --adapter {repo} --quant q4_k_m`, then
`python gguf/chat.py --gguf <the .gguf file>`.
"""
GGUF_FROM_MODEL = """
On your CPU through llama.cpp: `python gguf/export.py --model {repo} --quant q4_k_m`, then
`python gguf/chat.py --gguf <the .gguf file>`.
"""
NO_GGUF = """
**No GGUF form.** llama.cpp has no {what}: its virtual tokens live in every attention layer (prefix
tuning) or before the input embeddings (p-tuning), outside the weights a GGUF holds, and they cannot be
merged into them. Serve it with transformers (above: a Finch Space, or `FINCH_ADAPTER` on a CPU); for
llama.cpp, train with `--finetuning lora` or `full`.
"""


def use_section(finetuning: str, repo: str) -> str:
    """How to load and serve the artifact, by what the run trained."""
    kind = FINETUNING[finetuning]
    use = (USE_MODEL if kind.folder == "model" else USE_ADAPTER).format(repo=repo)
    if not kind.gguf:
        return use + NO_GGUF.format(what=kind.what.removeprefix("a "))
    return use + (GGUF_FROM_MODEL if kind.folder == "model" else GGUF_FROM_ADAPTER).format(repo=repo)


def eval_metrics(loss: float | None, pairs: bool = False) -> dict:
    """Eval loss, and for SFT its perplexity (a preference loss has none)."""
    if loss is None:
        return {}
    return (
        {"loss": round(loss, 4)} if pairs else {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3)}
    )


def replies(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy replies of the model as it stands, all prompts in one batch (leaves it in eval mode)."""
    from gguf_export.verify import eos_ids, greedy_batch

    model.eval()
    prompt_ids = [
        tokenizer(
            render(
                tokenizer.chat_template,
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                special_tokens=tokenizer.special_tokens_map,
            ),
            add_special_tokens=False,
        )["input_ids"]
        for prompt in prompts
    ]
    made, _ = greedy_batch(model, prompt_ids, max_new_tokens, eos_ids(tokenizer, model), tokenizer.pad_token_id)
    return [tokenizer.decode(reply, skip_special_tokens=True).strip() for reply in made]


def base_replies(run_dir: Path, model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The base's greedy replies, made before training (a full fine-tune has no adapter to switch
    off afterwards) and kept for resumes in base_samples.json."""
    path = run_dir / "base_samples.json"
    if path.is_file():
        return json.loads(path.read_text())
    made = replies(model, tokenizer, prompts, max_new_tokens)
    model.train()
    path.write_text(json.dumps(made, ensure_ascii=False))
    return made


def generate_samples(
    model, tokenizer, prompts: list[str], max_new_tokens: int, base: list[str] | None = None
) -> list[dict]:
    """Greedy replies of the base (adapter disabled, or `base`: replies made before training) and
    the fine-tune to the same prompts."""
    from .run import base_view

    if base is None:
        with base_view(model):
            base = replies(model, tokenizer, prompts, max_new_tokens)
    tuned = replies(model, tokenizer, prompts, max_new_tokens)
    return [{"prompt": p, "base": b, "fine_tuned": t} for p, b, t in zip(prompts, base, tuned)]


def plot_losses(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and math.isfinite(e["loss"])]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    pairs = any("rewards/accuracies" in e for e in log_history)
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(12 if pairs else 7, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    if pairs:
        plot_rewards(axes[0][1], log_history)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_rewards(ax, log_history: list[dict]) -> None:
    """Preference runs: reward accuracy and margin, train and eval, beside the loss."""
    for key, label in (("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin")):
        for prefix, style, part in (("", "-", "train"), ("eval_", "o-", "eval")):
            points = [(e["step"], e[prefix + key]) for e in log_history if prefix + key in e]
            if points:
                ax.plot(*zip(*points), style, label=f"{part} {label}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()


def preference_rows(preference: dict) -> dict:
    """Card rows: each reward metric for the base, after training (eval) and at the last train log."""
    from .methods import PREFERENCE_METRICS

    rows = {}
    for key, name in PREFERENCE_METRICS.items():
        for part, label in (("base_eval", "base eval"), ("eval", "fine-tuned eval"), ("train", "last train log")):
            if key in preference.get(part, {}):
                rows[f"{name} ({label})"] = preference[part][key]
    return rows


def _table(rows: dict) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def check_fidelity(folder: Path, quants: list[str], work_dir: Path) -> tuple[str, dict | None]:
    """gguf/verify.py's report on the adapter or model in `folder` (card section, JSON), or why it
    could not run.

    The fidelity check follows hours of training: whatever goes wrong in it, the adapter is kept
    and the card says how to run the check again."""
    from gguf_export.verify import verify_adapter, verify_model

    adapter = (folder / "adapter_config.json").is_file()
    try:
        report = (verify_adapter if adapter else verify_model)(folder, quants=quants, work_dir=work_dir)
    except Exception as err:  # noqa: BLE001 - never lose a trained adapter to a failed check
        log.warning("fidelity check failed (%s: %s); the run's output is kept", type(err).__name__, err)
        option = "--adapter" if adapter else "--model"
        return (f"## Fidelity\n\nNot checked in this run. Run `python gguf/verify.py {option} <this folder>`.\n", None)
    log.info("fidelity:\n%s", report.table())
    return report.markdown(), report.to_json()


def model_card(recipe: dict, metrics: dict, samples: list[dict], repo: str, fidelity: str = ""):
    """A huggingface_hub ModelCard: metadata for the Hub plus the run's story."""
    from huggingface_hub import ModelCard, ModelCardData

    from chat_runtime import embedded

    base = recipe["base_model_id"]
    if Path(base).exists():  # a local folder: name the Hub model it holds when we know it
        base = embedded.HUB_ID if Path(base) == embedded.cache_dir() / "models" / f"{embedded.MODEL_NAME}-hf" else base
    datasets = [d for d in recipe["dataset"] if not Path(d).suffix]
    data = "\n".join(
        f"- `{d}` ({s['usable']} usable of {s['rows']} rows, weight {s['weight']})"
        for d, s in zip(recipe["dataset"], metrics.get("sources", []))
    )
    finetuning = recipe.get("finetuning", "lora")
    keys = (
        "finetuning",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "max_seq_length",
        "num_virtual_tokens",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "warmup_ratio",
        "min_lr_ratio",
        "optim",
        "weight_decay",
        "num_train_epochs",
        "max_steps",
        "seed",
        "backend",
        "processes",
        "global_batch_size",
    )
    reads = FINETUNING[finetuning].reads
    shown = {k: recipe[k] for k in keys if k in recipe and (k in reads or not k.startswith(("lora_", "num_virtual")))}
    results = {
        "base eval loss": metrics.get("base_eval", {}).get("loss"),
        "fine-tuned eval loss": metrics.get("eval", {}).get("loss"),
        "fine-tuned eval perplexity": metrics.get("eval", {}).get("perplexity"),
        "final train loss": metrics.get("final_train_loss"),
        "steps": metrics.get("global_step"),
        "adapter holds": metrics.get("adapter_checkpoint", {}).get("text"),
        "train tokens/s": metrics.get("tokens_per_second"),
        "device": metrics.get("device"),
        **preference_rows(metrics.get("preference", {})),
    }
    sample_md = "\n".join(f"**{s['prompt']}**\n- base: {s['base']}\n- fine-tuned: {s['fine_tuned']}\n" for s in samples)
    local = Path(base).exists()
    card_data = ModelCardData(
        base_model=None if local else base,
        library_name="transformers" if FINETUNING[finetuning].folder == "model" else "peft",
        datasets=datasets or None,
        tags=["finch", finetuning, recipe.get("method", "sft")],
        license=None,
    )
    body = CARD.format(
        name=repo.split("/")[-1],
        what=FINETUNING[finetuning].what.capitalize(),
        finetuning=finetuning,
        use=use_section(finetuning, repo),
        base=base,
        base_link=Path(base).as_uri() if local else f"https://huggingface.co/{base}",
        data=data or "-",
        hparams=_table(shown),
        metrics=_table(results),
        samples=sample_md or "-",
        fidelity=fidelity,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def save_artifact(
    run_dir: Path,
    model,
    tokenizer,
    recipe: dict,
    metrics: dict,
    samples: list[dict],
    log_history: list[dict],
    repo_hint: str,
    verify_quants: list[str] | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write `run_dir/adapter` (or `run_dir/model`, a full fine-tune) whole or not at all (a temp
    folder renamed into place).

    With `verify_quants`, the fidelity check runs on the saved adapter or model before the folder is
    final, so the card that arrives already holds its report (a prefix or p-tuning adapter has no GGUF
    form to check). `state_dict`: the gathered weights when they were sharded across processes (peft
    keeps the adapter's)."""
    kind = FINETUNING[recipe.get("finetuning", "lora")]
    final = run_dir / kind.folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind.folder}-", dir=run_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        checked = verify_quants and kind.gguf
        fidelity, fidelity_json = check_fidelity(tmp, verify_quants, run_dir) if checked else ("", None)
        if fidelity_json:
            (tmp / "fidelity.json").write_text(json.dumps(fidelity_json, indent=1, ensure_ascii=False))
            metrics["fidelity"] = fidelity_json["summary"]
        save_recipe(tmp, recipe)  # the same file, by the same name, as in the run folder
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False))
        plot_losses(log_history, tmp / "loss.png")
        model_card(recipe, metrics, samples, repo_hint, fidelity).save(tmp / "README.md")
        if final.exists():
            old = run_dir / f".{kind.folder}-old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the run's adapter or model folder; on failure the local run stays whole and the message
    says why."""
    from huggingface_hub import HfApi

    from chat_runtime.hub import describe_error, hub_token

    token = hub_token()
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"Upload Finch {folder.name}")
    except Exception as err:
        raise UserError(
            f"Push to {repo_id} failed ({describe_error(err, token)}). The run is complete at {folder}; "
            f"run the same command again to push it (nothing is retrained)"
        ) from None
    return f"https://huggingface.co/{repo_id}"
