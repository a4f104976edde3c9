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
from pathlib import Path

from trl import TrlParser

from chat_runtime.errors import UserError, run_main
from finetune import config as cfg
from finetune import distributed, evaluation, masking, report, run
from finetune.backends import BACKENDS, cpu_substitutions, detect_device, pick_backend
from finetune.loop import newest_checkpoint, trainer_kwargs
from finetune.methods import METHODS, drop_reference_copy, preference_metrics

log = logging.getLogger("finch.train")


def resolve_model(name: str) -> str:
    if name == "embedded":
        from chat_runtime import embedded

        return str(embedded.hf_dir())
    return name


def prepare_data(method, margs: cfg.ModelArgs, dargs: cfg.DataArgs, seed: int, model_path: str):
    """Rows -> token ids for this method; a data set with nothing usable fails before any model loads."""
    from transformers import AutoTokenizer

    try:
        prepared = method.prepare(dargs, seed)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=margs.trust_remote_code)
        train_ds, dropped_train = method.tokenize(prepared.train, tokenizer, margs.max_seq_length, dargs.num_proc)
        eval_ds, dropped_eval = (method.tokenize(prepared.eval, tokenizer, margs.max_seq_length, dargs.num_proc)
                                 if prepared.eval is not None else (None, Counter()))
        masking.check_ids_fit(train_ds, model_path, margs.trust_remote_code, method.id_columns)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        raise UserError(f"Data preparation failed, nothing was trained: {err}") from None
    dropped = prepared.dropped + dropped_train + dropped_eval
    log.info("data: %d train / %d eval rows; dropped %s", len(train_ds), len(eval_ds or []), dict(dropped) or "none")
    if not len(train_ds):
        raise UserError(f"No trainable rows left after tokenization (dropped: {dict(dropped)}). "
                         "Raise max_seq_length or check that conversations have assistant replies.")
    return prepared, train_ds, eval_ds, dropped


def main(margs: cfg.ModelArgs, lora: cfg.LoraArgs, dargs: cfg.DataArgs, targs: cfg.TrainArgs, out: cfg.OutputArgs,
         pargs: cfg.MethodArgs) -> None:
    started = time.time()
    cfg.check(margs, lora, dargs, targs, out, pargs)
    method = METHODS[pargs.method]
    run_dir = Path(out.output_dir).expanduser().resolve()
    run.ensure_writable(run_dir)
    device = detect_device(margs.precision)
    dist = distributed.setup(cpu=device.kind == "cpu")  # one process, or one of several (accelerate launch)
    cpu_changes, dist_changes = cpu_substitutions(margs, targs.optim, device), distributed.substitutions(dist, targs.optim)
    for where, found in ((f"on {device.name}", cpu_changes), (f"with {dist.strategy}", dist_changes)):
        for key, (before, after) in found.items():
            log.warning("%s: %s %s -> %s", where, key, before, after)
    changes = {**cpu_changes, **dist_changes}
    margs.load_in_4bit = changes.get("load_in_4bit", (0, margs.load_in_4bit))[1]
    margs.gradient_checkpointing = changes.get("gradient_checkpointing", (0, margs.gradient_checkpointing))[1]
    optim = changes.get("optim", (0, targs.optim))[1]
    model_path = resolve_model(margs.model)
    backend = pick_backend(margs.backend, device, dist.processes)
    distributed.check(dist, backend, margs.load_in_4bit)
    global_batch = dist.global_batch(targs.per_device_train_batch_size, targs.gradient_accumulation_steps)
    recipe = {**cfg.as_dict(margs, lora, dargs, targs, out, pargs), "optim": optim, "backend": backend,
              "base_model_id": model_path, "device": device.name, "substitutions": {k: list(v) for k, v in changes.items()},
              "processes": dist.processes, "strategy": dist.strategy, "global_batch_size": global_batch}

    # A finished run is not retrained; the same command only pushes it (or refuses).
    if (run_dir / "adapter" / "adapter_config.json").is_file() and not out.overwrite:
        if out.push_to_hub:
            if dist.is_main:
                print(f"Pushed: {report.push(run_dir / 'adapter', out.push_to_hub, out.private)}")
            return
        raise UserError(f"{run_dir} already holds a finished run. Use --overwrite true or another --output_dir.")
    resume = None if out.overwrite else newest_checkpoint(run_dir)
    if dist.is_main:  # the others wait for it in data preparation; if it stops here, the launcher stops them
        if resume:
            drift = run.recipe_drift(run.saved_recipe(run_dir) or {}, recipe)
            if drift:
                raise UserError(f"{run_dir} holds an interrupted run with other settings ({', '.join(drift)}): "
                                 "run the original command to resume it, or use another --output_dir.")
            log.info("resuming from %s", resume)
        run.save_recipe(run_dir, recipe)

    # Data first: a data set with nothing usable fails before any model is loaded.
    with dist.main_first():  # prepared once; the other processes read the datasets cache
        prepared, train_ds, eval_ds, dropped = prepare_data(method, margs, dargs, targs.seed, model_path)

    # The trainer config comes before the model: under DeepSpeed ZeRO-3 it tells from_pretrained to shard.
    common = trainer_kwargs(targs, run_dir, device, optim, eval_ds is not None, margs.gradient_checkpointing,
                            dist.processes)
    model, tokenizer = BACKENDS[backend](model_path, margs, lora, device, targs.seed, adapter=pargs.adapter,
                                         shards_params=dist.shards_params, local_rank=dist.local_rank)
    masking.prepare_tokenizer(tokenizer)  # the adapter ships the template and pad it was trained with
    run.ensure_space(run_dir, sum(p.numel() for p in model.parameters() if p.requires_grad), targs.save_total_limit)
    trainer, guard = method.trainer(model, tokenizer, common, pargs, margs.max_seq_length, train_ds, eval_ds,
                                    targs.early_stopping_patience, run_dir / "logs")
    base_eval = method.base_eval(run_dir, trainer) if eval_ds is not None else {}
    result = trainer.train(resume_from_checkpoint=resume)
    if guard.bad_step is not None:
        last = newest_checkpoint(run_dir)
        raise UserError(f"The loss became NaN/inf at step {guard.bad_step}; training stopped. Last good checkpoint: "
                         f"{last or 'none yet'}. Lower learning_rate (or check the data), then rerun to resume.")
    final_eval = trainer.evaluate() if eval_ds is not None else {}
    drop_reference_copy(model)  # the adapter saved is the trained one alone
    state_dict = distributed.full_state_dict(trainer, dist)  # gathers sharded weights: every process takes part
    if not dist.is_main:
        return
    # Sharded weights live in pieces across processes: no side-by-side samples there (chat with the adapter instead).
    samples = [] if dist.shards_params else report.generate_samples(model, tokenizer, out.sample_prompts,
                                                                    out.sample_max_new_tokens)
    train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    metrics = {
        "global_step": trainer.state.global_step, "final_train_loss": train_losses[-1] if train_losses else None,
        "first_train_loss": train_losses[0] if train_losses else None,
        "method": pargs.method, "base_eval": report.eval_metrics(base_eval.get("loss"), method.pairs),
        "eval": report.eval_metrics(final_eval.get("eval_loss"), method.pairs),
        "train_runtime_s": round(result.metrics.get("train_runtime", 0), 1),
        # tokens seen by all processes together (None where the trainer's batches carry no input_ids: ORPO's)
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / max(result.metrics.get("train_runtime", 1), 1e-9), 1)
        or None,
        "peak_memory_mb": round(run.peak_memory_mb(device.kind)), "device": device.name, "backend": backend,
        "processes": dist.processes, "strategy": dist.strategy, "global_batch_size": global_batch,
        "batch_formula": f"{targs.per_device_train_batch_size} per device x {targs.gradient_accumulation_steps} "
                         f"accumulation x {dist.processes} process(es)",
        "rows": {"train": len(train_ds), "eval": len(eval_ds or [])}, "dropped": dict(dropped), "sources": prepared.sources,
        "log_history": trainer.state.log_history,
    }
    if method.pairs:
        metrics["preference"] = preference_metrics(trainer.state.log_history, base_eval, final_eval)
    adapter_dir = report.save_artifact(run_dir, model, tokenizer, recipe, metrics, samples, trainer.state.log_history,
                                       out.push_to_hub or f"you/{run_dir.name}", out.verify_quants if out.verify else None,
                                       state_dict)
    if out.evaluate:
        evaluation.evaluate_run(adapter_dir, run_dir, out.evaluate_config)
    pushed = report.push(adapter_dir, out.push_to_hub, out.private) if out.push_to_hub else None
    run.print_summary(metrics, adapter_dir, run_dir, time.time() - started, pushed)


def make_parser() -> TrlParser:
    # No abbreviations: a typo like --learning-rat must fail, not quietly set learning_rate.
    return TrlParser(cfg.ARG_CLASSES, allow_abbrev=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_main(lambda: main(*make_parser().parse_args_and_config()))
