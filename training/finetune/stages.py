"""A training run, stage by stage: plan, data, model, train, save, push. `training/train.py` parses the
command line into a `Config` and calls `train`; a notebook calls the same function:

    from finetune import load_config, train
    adapter_dir = train(load_config("training/recipes/cpu-smollm2-sample.yaml", max_steps=20))
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from chat_runtime.errors import UserError

from . import budget, distributed, evaluation, masking, report, run
from . import config as cfg
from .backends import BACKENDS, Device, cpu_substitutions, detect_device, pick_backend
from .loop import Eta, SamplesAtEval, newest_checkpoint, trainer_kwargs
from .methods import METHODS, drop_reference_copy, preference_metrics

log = logging.getLogger(__name__)


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
    budget: budget.Budget  # what the run will spend, counted from the settings (plan.json)


@dataclass
class Training:
    """The model, its tokenizer, the method's trainer with its NaN guard, and the base's eval (and,
    for a full fine-tune, whose base cannot be switched back on afterwards, the base's samples)."""

    model: object
    tokenizer: object
    trainer: object
    guard: object
    base_eval: dict
    base_samples: list[str] | None = None


def train(config: cfg.Config) -> Path | None:
    """The stages of a run: plan (and stop there on --dry_run), data, model, train, save, push. Returns the artifact folder (the
    adapter, or the model of a full fine-tune); None in the other processes of a multi-process run,
    for a dry run, and for a finished run that only needed pushing."""
    started = time.time()
    args = config.parts()
    model_args, lora_args, data_args, train_args, output_args, method_args = args
    plan = make_plan(*args)
    if plan is None:
        return None  # a dry run, or a finished run pushed as asked
    with plan.dist.main_first():  # prepared once; the other processes read the datasets cache
        prepared, train_ds, eval_ds, dropped = prepare_data(
            plan.method, model_args, data_args, train_args.seed, plan.model_path
        )
    training = build_model_and_trainer(plan, *args, train_ds, eval_ds)
    result, final_eval = run_trainer(plan, training, has_eval=eval_ds is not None)
    state_dict = distributed.full_state_dict(training.trainer, plan.dist)  # every process takes part in gathering
    if not plan.dist.is_main:
        return None
    metrics = run_metrics(plan, training, result, final_eval, prepared, train_ds, eval_ds, dropped, train_args)
    adapter_dir = save(plan, training, metrics, output_args, state_dict)
    if output_args.evaluate:
        evaluation.evaluate_run(adapter_dir, plan.run_dir, output_args.evaluate_config)
    pushed = report.push(adapter_dir, output_args.push_to_hub, output_args.private) if output_args.push_to_hub else None
    run.print_summary(metrics, adapter_dir, plan.run_dir, time.time() - started, pushed)
    return adapter_dir


def make_plan(
    model_args: cfg.ModelArgs,
    lora_args: cfg.AdapterArgs,
    data_args: cfg.DataArgs,
    train_args: cfg.TrainArgs,
    output_args: cfg.OutputArgs,
    method_args: cfg.MethodArgs,
) -> Plan | None:
    """Check the settings, pick device, backend and processes, print and save the plan and the resolved
    recipe; None for a dry run, or when the output folder holds a finished run that only needed pushing."""
    cfg.check(model_args, lora_args, data_args, train_args, output_args, method_args)
    run_dir = Path(output_args.output_dir).expanduser().resolve()
    run.ensure_writable(run_dir)
    run.tracker_env(run_dir, train_args.report_to)
    device = detect_device(model_args.precision)
    dist = distributed.setup(cpu=device.kind == "cpu")  # one process, or one of several (accelerate launch)
    args = (model_args, lora_args, data_args, train_args, output_args, method_args)
    as_written = cfg.as_dict(*args)  # a dry run plans the recipe for the hardware it was written for
    optim, substitutions = apply_substitutions(model_args, train_args.optim, device, dist)
    spend = plan_budget(run_dir, as_written if output_args.dry_run else cfg.as_dict(*args), dist)
    if output_args.dry_run:
        return None
    model_path = resolve_model(model_args.model)
    backend = pick_backend(model_args.backend, device, dist.processes, model_args.finetuning)
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
    artifact = run_dir / cfg.FINETUNING[model_args.finetuning].folder
    if (artifact / run.RECIPE_FILE).is_file() and not output_args.overwrite:
        if output_args.push_to_hub:
            if dist.is_main:
                print(f"Pushed: {report.push(artifact, output_args.push_to_hub, output_args.private)}")
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
    return Plan(run_dir, device, dist, METHODS[method_args.method], model_path, backend, optim, recipe, resume, spend)


def plan_budget(run_dir: Path, settings: dict, dist: distributed.Dist) -> budget.Budget:
    """Count what the run will spend (no model, no data), print it and write run_dir/plan.json."""
    spend = budget.estimate(settings, dist.processes)
    if dist.is_main:
        print(budget.describe(spend), flush=True)
        log.info("plan written to %s", budget.write(run_dir, spend))
    return spend


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
    model_args.finetuning = changes.get("finetuning", (0, model_args.finetuning))[1]
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
    lora_args: cfg.AdapterArgs,
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
    add_progress_callbacks(plan, trainer, tokenizer, train_args, output_args, eval_ds)
    base_eval = plan.method.base_eval(plan.run_dir, trainer) if eval_ds is not None else {}
    base_samples = None
    if model_args.finetuning == "full" and not plan.dist.shards_params:  # before training changes the weights
        base_samples = report.base_replies(
            plan.run_dir, model, tokenizer, output_args.sample_prompts, output_args.sample_max_new_tokens
        )
    return Training(model, tokenizer, trainer, guard, base_eval, base_samples)


def add_progress_callbacks(plan: Plan, trainer, tokenizer, train_args, output_args, eval_ds) -> None:
    """The ETA on the progress bar, and a sample reply at each evaluation."""
    from transformers import ProgressCallback

    b, evaluating = plan.budget, eval_ds is not None and train_args.eval_steps > 0
    eval_cost = len(eval_ds or []) * b.eval_forward_passes / (b.global_batch * b.train_forward_passes)
    eta = Eta(train_args.eval_steps if evaluating else 0, eval_cost, final_eval=eval_ds is not None)
    eta.progress = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)), None)
    trainer.add_callback(eta)
    if evaluating and train_args.sample_every_eval and not plan.dist.shards_params:
        prompts = output_args.sample_prompts[: train_args.sample_every_eval]
        trainer.add_callback(SamplesAtEval(tokenizer, prompts, min(output_args.sample_max_new_tokens, 24)))


def run_trainer(plan: Plan, training: Training, has_eval: bool) -> tuple[object, dict]:
    """Train (from the newest checkpoint when resuming), stop on a non-finite loss, evaluate the last
    step unless the cadence just did, and put the kept checkpoint's weights in the model."""
    trainer = training.trainer
    result = trainer.train(resume_from_checkpoint=plan.resume)
    if training.guard.bad_step is not None:
        last = newest_checkpoint(plan.run_dir)
        raise UserError(
            f"The loss became NaN/inf at step {training.guard.bad_step}; training stopped. Last good "
            f"checkpoint: {last or 'none yet'}. Lower learning_rate (or check the data), then rerun to resume."
        )
    if has_eval and not trainer.args.load_best_model_at_end and not logged_eval(trainer, trainer.state.global_step):
        trainer.evaluate()  # logged at the last step, so it competes for best
    kept = keep_checkpoint(trainer, plan.recipe["adapter_checkpoint"])
    final_eval = logged_eval(trainer, kept["step"]) or {}
    kept["eval_loss"] = final_eval.get("eval_loss")
    kept["text"] = f"the {kept['kept']} checkpoint: step {kept['step']} of {trainer.state.global_step}" + (
        f", eval loss {kept['eval_loss']:.4f}" if kept["eval_loss"] is not None else ""
    )
    drop_reference_copy(training.model)  # the adapter saved is the trained one alone
    return result, {**final_eval, "adapter_checkpoint": kept}


def logged_eval(trainer, step: int) -> dict | None:
    """The evaluation logged at this step during training (the base's, at step 0, never counts)."""
    found = [e for e in trainer.state.log_history if "eval_loss" in e and e["step"] == step and step > 0]
    return found[-1] if found else None


def keep_checkpoint(trainer, which: str) -> dict:
    """Put the chosen weights in the model: `best`, the evaluated step with the lowest eval loss (its
    checkpoint was saved with its evaluation), or `last`. Early stopping has loaded the best already."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_global_step:
        return {"kept": "best", "step": state.best_global_step}
    losses = {e["step"]: e["eval_loss"] for e in state.log_history if "eval_loss" in e and e["step"] > 0}
    if which == "last" or not losses:
        return {"kept": "last", "step": state.global_step}
    step = min(losses, key=losses.get)
    if step != state.global_step:
        # the lowest eval inside the loop is the trainer's best, spared by checkpoint rotation
        state.best_model_checkpoint = str(Path(trainer.args.output_dir) / f"checkpoint-{step}")
        trainer._load_best_model()  # transformers' own loader: peft adapters, sharded weights
    return {"kept": "best", "step": step}


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
        "adapter_checkpoint": final_eval["adapter_checkpoint"],
        "plan": asdict(plan.budget),
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
            training.model,
            training.tokenizer,
            output_args.sample_prompts,
            output_args.sample_max_new_tokens,
            training.base_samples,
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
