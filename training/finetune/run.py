"""Run-folder bookkeeping: where things go, whether this is a fresh run, a resume or a finished
run, and whether the folder can hold what training will write."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import uuid
from pathlib import Path

import yaml

from chat_runtime.errors import UserError

RECIPE_FILE = "recipe.yaml"


def ensure_writable(run_dir: Path) -> None:
    """Create the run folder and prove it takes a file, before any data or model is loaded."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"Cannot write to the output folder {run_dir} ({err.strerror or err}). "
            "Choose another --output_dir or fix its permissions."
        ) from None


def ensure_space(run_dir: Path, trainable_params: int, checkpoints_kept: int) -> None:
    """Refuse to start when the disk cannot hold the adapter and its checkpoints (fp32 + Adam)."""
    need = trainable_params * 4 * (1 + 3 * (checkpoints_kept + 1)) + 64 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise UserError(
            f"Not enough disk for this run in {run_dir}: about {need / 2**20:.0f} MiB needed "
            f"(adapter + {checkpoints_kept} checkpoints), {free / 2**20:.0f} MiB free. "
            "Free some space, lower save_total_limit, or choose another --output_dir."
        )


def tracker_env(run_dir: Path, trackers: list[str]) -> None:
    """Trackers write under run_dir/logs and stay offline unless the environment says otherwise: wandb
    offline (`wandb sync` uploads later), trackio local (`trackio show` opens it). Keys stay in the
    environment, never in a file."""
    if "wandb" in trackers:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(run_dir / "logs"))
        os.environ.setdefault("WANDB_PROJECT", "finch")
    if "trackio" in trackers:
        os.environ.setdefault("TRACKIO_DIR", str(run_dir / "logs" / "trackio"))


def saved_recipe(run_dir: Path) -> dict | None:
    path = run_dir / RECIPE_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def save_recipe(run_dir: Path, recipe: dict) -> None:
    (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))


def recipe_drift(
    old: dict,
    new: dict,
    ignore: tuple[str, ...] = (
        "push_to_hub",
        "private",
        "overwrite",
        "verify",
        "verify_quants",
        "evaluate",
        "evaluate_config",
    ),
) -> list[str]:
    """Settings that differ between the run in the folder and this command."""
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def peak_memory_mb(device_kind: str) -> float:
    """Peak resident memory of this process (CPU) or peak allocated VRAM (CUDA), in MiB."""
    if device_kind == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def base_view(model):
    """A context in which `model` answers as its base: the adapter switched off, or (a full
    fine-tune, no adapter) the model as it is, which is the base only until training starts."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return contextlib.nullcontext()
    if model.active_peft_config.is_prompt_learning:
        return _prompt_learning_off(model)
    return model.disable_adapter()


@contextlib.contextmanager
def _prompt_learning_off(model):
    """peft switches prefix / p-tuning off by making the base model's bound `forward` the peft
    model's. With mixed precision, accelerate wraps the model's `forward` the first time it is
    evaluated and rebinds a bound method to the model it wraps, here the peft model, so trl's
    patched forward would run on the wrong model. A plain callable is wrapped as it is."""
    import functools

    with model.disable_adapter():
        model.forward = functools.partial(model.forward)
        yield


def base_eval(run_dir: Path, trainer) -> float:
    """Eval loss of the untouched base (LoRA starts as a no-op), measured once and kept for resumes.
    Every process evaluates its share; the main process keeps the file."""
    import json

    path = run_dir / "base_eval.json"
    if path.is_file():
        return json.loads(path.read_text())["eval_loss"]
    with base_view(trainer.model):  # before training, so a full fine-tune is its base here
        loss = trainer.evaluate(metric_key_prefix="base")["base_loss"]
    if trainer.is_world_process_zero():
        path.write_text(json.dumps({"eval_loss": loss}))
    return loss


def fidelity_line(rows: list[dict]) -> str:
    """'merged 100%, gguf-f16 100%, ... agree with peft; EOS 10/10' from gguf/verify.py's summary rows."""
    agree = ", ".join(f"{r['hop']} {100 * r['vs_reference']:.0f}%" for r in rows[1:])
    return f"{agree} of prompts agree with the adapter (first tokens); replies ending with EOS {100 * rows[0]['ended_with_eos']:.0f}%"


def chat_variable(artifact: Path) -> str:
    """The chatbot's variable for a run's artifact: FINCH_ADAPTER for an adapter, FINCH_MODEL for a model."""
    return "FINCH_ADAPTER" if (artifact / "adapter_config.json").is_file() else "FINCH_MODEL"


def print_summary(metrics: dict, adapter_dir: Path, run_dir: Path, seconds: float, pushed: str | None) -> None:
    """One screen at the end of a run."""
    base, final = metrics["base_eval"], metrics["eval"]
    lines = [
        "",
        "Finch training run complete",
        f"  time            {seconds / 60:.1f} min ({metrics['train_runtime_s']} s training) on {metrics['device']}, backend {metrics['backend']}",
        f"  steps           {metrics['global_step']}   train rows {metrics['rows']['train']}   eval rows {metrics['rows']['eval']}",
        f"  processes       {metrics['processes']} ({metrics['strategy']})   global batch {metrics['global_batch_size']} "
        f"= {metrics['batch_formula']}",
        f"  throughput      {metrics['tokens_per_second']} tokens/s   peak memory {metrics['peak_memory_mb']} MiB",
        f"  train loss      {metrics['first_train_loss']} -> {metrics['final_train_loss']}",
        f"  eval loss       base {base.get('loss', '-')} -> fine-tuned {final.get('loss', '-')} (perplexity {final.get('perplexity', '-')})",
        f"  reward accuracy base {pref['base_eval'].get('rewards/accuracies', '-')} -> fine-tuned "
        f"{pref['eval'].get('rewards/accuracies', '-')} (eval; margin {pref['eval'].get('rewards/margins', '-')})"
        if (pref := metrics.get("preference"))
        else "",
        f"  dropped rows    {metrics['dropped'] or 'none'}",
        f"  fidelity        {fidelity_line(metrics['fidelity'])}" if metrics.get("fidelity") else "",
        f"  {adapter_dir.name:<15} {adapter_dir}  (chat: {chat_variable(adapter_dir)}={adapter_dir} python chatbot_app/app.py)",
        f"  logs            {run_dir / 'logs'}  (tensorboard --logdir {run_dir / 'logs'})",
        f"  pushed          {pushed}" if pushed else "",
    ]
    print("\n".join(line for line in lines if line))
