"""Fine-tune an instruct model with LoRA / QLoRA on instruction data (SFT) or on preference pairs
(DPO, ORPO); evaluate; save one run folder (adapter, tokenizer + chat template, recipe, metrics,
loss plot, samples, model card).

    python training/train.py                                              # production recipe (GPU, Hub)
    python training/train.py --config training/recipes/cpu-smollm2-sample.yaml   # 3 minutes on a CPU
    python training/train.py --config training/recipes/cpu-smollm2-dpo.yaml      # DPO, a few minutes on a CPU
    python training/train.py --method dpo --dataset votes.jsonl --adapter runs/NAME/adapter   # the chatbot's votes
    python training/train.py --config training/recipes/llama32-3b-kannada.yaml --push_to_hub you/name
    accelerate launch --config_file training/accelerate_configs/multi-gpu.yaml training/train.py   # several GPUs

Defaults < YAML recipe (--config) < command line; `--help` lists every option. An interrupted
run resumes from its newest checkpoint when the same command runs again.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trl import TrlParser

from chat_runtime.errors import UserError, run_main
from finetune import config as cfg
from finetune import distributed, evaluation, masking, report, run
from finetune.backends import BACKENDS, Device, cpu_substitutions, detect_device, pick_backend
from finetune.loop import newest_checkpoint, trainer_kwargs
from finetune.methods import METHODS, drop_reference_copy, preference_metrics

log = logging.getLogger("finch.train")


@dataclass
class Plan:
    """What this run will do, settled before any data or model is loaded (and saved with the run)."""

    run_dir: Path
    device: Device
    dist: distributed.Dist
    method: object  # a finetune.methods entry: how this method prepares, trains and evaluates
    model_path: str
    backend: str
    optim: str
    recipe: dict  # every setting, resolved: what travels with the adapter
    resume: str | None  # the checkpoint an interrupted run goes on from


@dataclass
class Training:
    """The model, its tokenizer, the method's trainer with its NaN guard, and the base's eval."""

    model: object
    tokenizer: object
    trainer: object
    guard: object
    base_eval: dict


def main(
    model_args: cfg.ModelArgs,
    lora_args: cfg.LoraArgs,
    data_args: cfg.DataArgs,
    train_args: cfg.TrainArgs,
    output_args: cfg.OutputArgs,
    method_args: cfg.MethodArgs,
) -> None:
    """The stages of a run: plan, data, model, train, save, push."""
    started = time.time()
    args = (model_args, lora_args, data_args, train_args, output_args, method_args)
    plan = make_plan(*args)
    if plan is None:
        return  # a finished run, pushed as asked
    with plan.dist.main_first():  # prepared once; the other processes read the datasets cache
        prepared, train_ds, eval_ds, dropped = prepare_data(
            plan.method, model_args, data_args, train_args.seed, plan.model_path
        )
    training = build_model_and_trainer(plan, *args, train_ds, eval_ds)
    result, final_eval = train(plan, training, has_eval=eval_ds is not None)
    state_dict = distributed.full_state_dict(training.trainer, plan.dist)  # every process takes part in gathering
    if not plan.dist.is_main:
        return
    metrics = run_metrics(plan, training, result, final_eval, prepared, train_ds, eval_ds, dropped, train_args)
    adapter_dir = save(plan, training, metrics, output_args, state_dict)
    if output_args.evaluate:
        evaluation.evaluate_run(adapter_dir, plan.run_dir, output_args.evaluate_config)
    pushed = report.push(adapter_dir, output_args.push_to_hub, output_args.private) if output_args.push_to_hub else None
    run.print_summary(metrics, adapter_dir, plan.run_dir, time.time() - started, pushed)


def make_plan(
    model_args: cfg.ModelArgs,
    lora_args: cfg.LoraArgs,
    data_args: cfg.DataArgs,
    train_args: cfg.TrainArgs,
    output_args: cfg.OutputArgs,
    method_args: cfg.MethodArgs,
) -> Plan | None:
    """Check the settings, pick device, backend and processes, and save the resolved recipe; None when
    the output folder holds a finished run that only needed pushing."""
    cfg.check(model_args, lora_args, data_args, train_args, output_args, method_args)
    run_dir = Path(output_args.output_dir).expanduser().resolve()
    run.ensure_writable(run_dir)
    device = detect_device(model_args.precision)
    dist = distributed.setup(cpu=device.kind == "cpu")  # one process, or one of several (accelerate launch)
    optim, substitutions = apply_substitutions(model_args, train_args.optim, device, dist)
    model_path = resolve_model(model_args.model)
    backend = pick_backend(model_args.backend, device, dist.processes)
    distributed.check(dist, backend, model_args.load_in_4bit)
    global_batch = dist.global_batch(train_args.per_device_train_batch_size, train_args.gradient_accumulation_steps)
    recipe = {
        **cfg.as_dict(model_args, lora_args, data_args, train_args, output_args, method_args),
        "optim": optim,
        "backend": backend,
        "base_model_id": model_path,
        "device": device.name,
        "substitutions": substitutions,
        "processes": dist.processes,
        "strategy": dist.strategy,
        "global_batch_size": global_batch,
    }

    # A finished run is not retrained; the same command only pushes it (or refuses).
    if (run_dir / "adapter" / "adapter_config.json").is_file() and not output_args.overwrite:
        if output_args.push_to_hub:
            if dist.is_main:
                print(f"Pushed: {report.push(run_dir / 'adapter', output_args.push_to_hub, output_args.private)}")
            return None
        raise UserError(f"{run_dir} already holds a finished run. Use --overwrite true or another --output_dir.")
    resume = None if output_args.overwrite else newest_checkpoint(run_dir)
    if dist.is_main:  # the others wait for it in data preparation; if it stops here, the launcher stops them
        if resume:
            drift = run.recipe_drift(run.saved_recipe(run_dir) or {}, recipe)
            if drift:
                raise UserError(
                    f"{run_dir} holds an interrupted run with other settings ({', '.join(drift)}): "
                    "run the original command to resume it, or use another --output_dir."
                )
            log.info("resuming from %s", resume)
        run.save_recipe(run_dir, recipe)
    return Plan(run_dir, device, dist, METHODS[method_args.method], model_path, backend, optim, recipe, resume)


def apply_substitutions(
    model_args: cfg.ModelArgs, optim: str, device: Device, dist: distributed.Dist
) -> tuple[str, dict[str, list]]:
    """Settings this device or process layout cannot run, replaced (and logged): the optimizer to use,
    and every change as {setting: [before, after]} for the recipe."""
    cpu_changes, dist_changes = cpu_substitutions(model_args, optim, device), distributed.substitutions(dist, optim)
    for where, found in ((f"on {device.name}", cpu_changes), (f"with {dist.strategy}", dist_changes)):
        for key, (before, after) in found.items():
            log.warning("%s: %s %s -> %s", where, key, before, after)
    changes = {**cpu_changes, **dist_changes}
    model_args.load_in_4bit = changes.get("load_in_4bit", (0, model_args.load_in_4bit))[1]
    model_args.gradient_checkpointing = changes.get("gradient_checkpointing", (0, model_args.gradient_checkpointing))[1]
    return changes.get("optim", (0, optim))[1], {k: list(v) for k, v in changes.items()}


def resolve_model(name: str) -> str:
    """A model id or folder; `embedded` is the embedded SmolLM2's HF folder (converted once, cached)."""
    if name == "embedded":
        from chat_runtime import embedded

        return str(embedded.hf_dir())
    return name


def prepare_data(method, model_args: cfg.ModelArgs, data_args: cfg.DataArgs, seed: int, model_path: str):
    """Rows -> token ids for this method; a data set with nothing usable fails before any model loads."""
    from transformers import AutoTokenizer

    try:
        prepared = method.prepare(data_args, seed)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_args.trust_remote_code)
        train_ds, dropped_train = method.tokenize(
            prepared.train, tokenizer, model_args.max_seq_length, data_args.num_proc
        )
        eval_ds, dropped_eval = (
            method.tokenize(prepared.eval, tokenizer, model_args.max_seq_length, data_args.num_proc)
            if prepared.eval is not None
            else (None, Counter())
        )
        masking.check_ids_fit(train_ds, model_path, model_args.trust_remote_code, method.id_columns)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        raise UserError(f"Data preparation failed, nothing was trained: {err}") from None
    dropped = prepared.dropped + dropped_train + dropped_eval
    log.info("data: %d train / %d eval rows; dropped %s", len(train_ds), len(eval_ds or []), dict(dropped) or "none")
    if not len(train_ds):
        raise UserError(
            f"No trainable rows left after tokenization (dropped: {dict(dropped)}). "
            "Raise max_seq_length or check that conversations have assistant replies."
        )
    return prepared, train_ds, eval_ds, dropped


def build_model_and_trainer(
    plan: Plan,
    model_args: cfg.ModelArgs,
    lora_args: cfg.LoraArgs,
    data_args: cfg.DataArgs,
    train_args: cfg.TrainArgs,
    output_args: cfg.OutputArgs,
    method_args: cfg.MethodArgs,
    train_ds,
    eval_ds,
) -> Training:
    """The model with its adapter, the method's trainer, and the base's eval (measured before training)."""
    # The trainer config comes before the model: under DeepSpeed ZeRO-3 it tells from_pretrained to shard.
    common = trainer_kwargs(
        train_args,
        plan.run_dir,
        plan.device,
        plan.optim,
        eval_ds is not None,
        model_args.gradient_checkpointing,
        plan.dist.processes,
    )
    model, tokenizer = BACKENDS[plan.backend](
        plan.model_path,
        model_args,
        lora_args,
        plan.device,
        train_args.seed,
        adapter=method_args.adapter,
        shards_params=plan.dist.shards_params,
        local_rank=plan.dist.local_rank,
    )
    masking.prepare_tokenizer(tokenizer)  # the adapter ships the template and pad it was trained with
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run.ensure_space(plan.run_dir, trainable, train_args.save_total_limit)
    trainer, guard = plan.method.trainer(
        model,
        tokenizer,
        common,
        method_args,
        model_args.max_seq_length,
        train_ds,
        eval_ds,
        train_args.early_stopping_patience,
        plan.run_dir / "logs",
    )
    base_eval = plan.method.base_eval(plan.run_dir, trainer) if eval_ds is not None else {}
    return Training(model, tokenizer, trainer, guard, base_eval)


def train(plan: Plan, training: Training, has_eval: bool) -> tuple[object, dict]:
    """Train (from the newest checkpoint when resuming), stop on a non-finite loss, evaluate once more."""
    result = training.trainer.train(resume_from_checkpoint=plan.resume)
    if training.guard.bad_step is not None:
        last = newest_checkpoint(plan.run_dir)
        raise UserError(
            f"The loss became NaN/inf at step {training.guard.bad_step}; training stopped. Last good "
            f"checkpoint: {last or 'none yet'}. Lower learning_rate (or check the data), then rerun to resume."
        )
    final_eval = training.trainer.evaluate() if has_eval else {}
    drop_reference_copy(training.model)  # the adapter saved is the trained one alone
    return result, final_eval


def run_metrics(
    plan: Plan,
    training: Training,
    result,
    final_eval: dict,
    prepared,
    train_ds,
    eval_ds,
    dropped: Counter,
    train_args: cfg.TrainArgs,
) -> dict:
    """What the run measured, for metrics.json, the card and the summary."""
    state, seconds = training.trainer.state, result.metrics.get("train_runtime", 0)
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    metrics = {
        "global_step": state.global_step,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "first_train_loss": train_losses[0] if train_losses else None,
        "method": plan.recipe["method"],
        "base_eval": report.eval_metrics(training.base_eval.get("loss"), plan.method.pairs),
        "eval": report.eval_metrics(final_eval.get("eval_loss"), plan.method.pairs),
        "train_runtime_s": round(seconds, 1),
        # tokens seen by all processes together (None where the trainer's batches carry no input_ids: ORPO's)
        "tokens_per_second": round(state.num_input_tokens_seen / max(seconds or 1, 1e-9), 1) or None,
        "peak_memory_mb": round(run.peak_memory_mb(plan.device.kind)),
        "device": plan.device.name,
        "backend": plan.backend,
        "processes": plan.dist.processes,
        "strategy": plan.dist.strategy,
        "global_batch_size": plan.recipe["global_batch_size"],
        "batch_formula": f"{train_args.per_device_train_batch_size} per device x "
        f"{train_args.gradient_accumulation_steps} accumulation x {plan.dist.processes} process(es)",
        "rows": {"train": len(train_ds), "eval": len(eval_ds or [])},
        "dropped": dict(dropped),
        "sources": prepared.sources,
        "log_history": state.log_history,
    }
    if plan.method.pairs:
        metrics["preference"] = preference_metrics(state.log_history, training.base_eval, final_eval)
    return metrics


def save(plan: Plan, training: Training, metrics: dict, output_args: cfg.OutputArgs, state_dict) -> Path:
    """The adapter folder, whole or not at all: weights, tokenizer, recipe, metrics, plot, samples, card,
    and the fidelity check of its GGUF export."""
    # Sharded weights live in pieces across processes: no side-by-side samples there (chat with the adapter instead).
    samples = (
        []
        if plan.dist.shards_params
        else report.generate_samples(
            training.model, training.tokenizer, output_args.sample_prompts, output_args.sample_max_new_tokens
        )
    )
    return report.save_artifact(
        plan.run_dir,
        training.model,
        training.tokenizer,
        plan.recipe,
        metrics,
        samples,
        training.trainer.state.log_history,
        output_args.push_to_hub or f"you/{plan.run_dir.name}",
        output_args.verify_quants if output_args.verify else None,
        state_dict,
    )


def make_parser() -> TrlParser:
    # No abbreviations: a typo like --learning-rat must fail, not quietly set learning_rate.
    return TrlParser(cfg.ARG_CLASSES, allow_abbrev=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_main(lambda: main(*make_parser().parse_args_and_config()))
