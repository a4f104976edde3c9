"""What a run leaves behind, in one folder (`adapter/`, written atomically): the adapter and
tokenizer (with its chat template), the resolved recipe, metrics, a loss plot, base vs fine-tuned
samples and a model card. Also the upload of that folder."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from chat_runtime.errors import UserError
from chat_runtime.templating import render

from .run import save_recipe

log = logging.getLogger(__name__)

CARD = """
# {name}

A LoRA adapter for [{base}]({base_link}) trained with Finch (`python training/train.py`).

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
## Use it
In a Finch Space or locally: `FINCH_ADAPTER={repo} python chatbot_app/app.py` (the base is read from
`adapter_config.json`).

With peft:
```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```

On your CPU through llama.cpp: `python gguf/export.py --adapter {repo} --quant q4_k_m`, then
`python gguf/chat.py --gguf <the .gguf file>`.
"""


def eval_metrics(loss: float | None, pairs: bool = False) -> dict:
    """Eval loss, and for SFT its perplexity (a preference loss has none)."""
    if loss is None:
        return {}
    return (
        {"loss": round(loss, 4)} if pairs else {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3)}
    )


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Greedy replies of the base (adapter disabled) and the fine-tune to the same prompts."""
    import torch

    rows = []
    model.eval()
    for prompt in prompts:
        text = render(
            tokenizer.chat_template,
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            special_tokens=tokenizer.special_tokens_map,
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
        replies = {}
        for name, adapter_off in (("base", model.disable_adapter()), ("fine_tuned", contextlib.nullcontext())):
            with torch.inference_mode(), adapter_off:
                out = model.generate(
                    **ids,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            replies[name] = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        rows.append({"prompt": prompt, **replies})
    return rows


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
    """gguf/verify.py's report on the adapter in `folder` (card section, JSON), or why it could not run.

    The fidelity check follows hours of training: whatever goes wrong in it, the adapter is kept
    and the card says how to run the check again."""
    from gguf_export.verify import verify_adapter

    try:
        report = verify_adapter(folder, quants=quants, work_dir=work_dir)
    except Exception as err:  # noqa: BLE001 - never lose a trained adapter to a failed check
        log.warning("fidelity check failed (%s: %s); the adapter is kept", type(err).__name__, err)
        return ("## Fidelity\n\nNot checked in this run. Run `python gguf/verify.py --adapter <this folder>`.\n", None)
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
    keys = (
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "max_seq_length",
        "load_in_4bit",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "optim",
        "weight_decay",
        "num_train_epochs",
        "max_steps",
        "seed",
        "backend",
        "processes",
        "global_batch_size",
    )
    shown = {k: recipe[k] for k in keys if k in recipe}
    results = {
        "base eval loss": metrics.get("base_eval", {}).get("loss"),
        "fine-tuned eval loss": metrics.get("eval", {}).get("loss"),
        "fine-tuned eval perplexity": metrics.get("eval", {}).get("perplexity"),
        "final train loss": metrics.get("final_train_loss"),
        "steps": metrics.get("global_step"),
        "train tokens/s": metrics.get("tokens_per_second"),
        "device": metrics.get("device"),
        **preference_rows(metrics.get("preference", {})),
    }
    sample_md = "\n".join(f"**{s['prompt']}**\n- base: {s['base']}\n- fine-tuned: {s['fine_tuned']}\n" for s in samples)
    local = Path(base).exists()
    card_data = ModelCardData(
        base_model=None if local else base,
        library_name="peft",
        datasets=datasets or None,
        tags=["finch", "lora", recipe.get("method", "sft")],
        license=None,
    )
    body = CARD.format(
        name=repo.split("/")[-1],
        base=base,
        base_link=Path(base).as_uri() if local else f"https://huggingface.co/{base}",
        repo=repo,
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
    """Write `run_dir/adapter` whole or not at all (a temp folder renamed into place).

    With `verify_quants`, the fidelity check runs on the saved adapter before the folder is final,
    so the card that arrives already holds its report. `state_dict`: the gathered weights when
    they were sharded across processes (peft keeps the adapter's)."""
    final = run_dir / "adapter"
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=run_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        fidelity, fidelity_json = check_fidelity(tmp, verify_quants, run_dir) if verify_quants else ("", None)
        if fidelity_json:
            (tmp / "fidelity.json").write_text(json.dumps(fidelity_json, indent=1, ensure_ascii=False))
            metrics["fidelity"] = fidelity_json["summary"]
        save_recipe(tmp, recipe)  # the same file, by the same name, as in the run folder
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False))
        plot_losses(log_history, tmp / "loss.png")
        model_card(recipe, metrics, samples, repo_hint, fidelity).save(tmp / "README.md")
        if final.exists():
            old = run_dir / ".adapter-old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the adapter folder; on failure the local run stays whole and the message says why."""
    from huggingface_hub import HfApi

    from chat_runtime.hub import describe_error, hub_token

    token = hub_token()
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload Finch LoRA adapter")
    except Exception as err:
        raise UserError(
            f"Push to {repo_id} failed ({describe_error(err, token)}). The run is complete at {folder}; "
            f"run the same command again to push it (nothing is retrained)"
        ) from None
    return f"https://huggingface.co/{repo_id}"
