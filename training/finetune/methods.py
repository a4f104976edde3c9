"""Training methods as a table: what each reads from the data, which trl trainer runs it, and what
it measures. SFT runs trl's SFTTrainer, DPO trl's DPOTrainer, ORPO trl's ORPOTrainer
(trl.experimental); all three get rows tokenized by our own template code (finetune.masking,
finetune.preference_tokens) and share the run folder, checkpoints, resume, NaN guard and early
stopping (finetune.loop).

The DPO reference is never a second model in memory: starting from a fresh LoRA it is the model
with the adapter disabled (the base); starting from an adapter (--adapter) it is trl's frozen copy
of that adapter (a few MB beside the trained one), so DPO pulls away from the SFT model, not the base.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import data, masking, preference, preference_tokens
from .config import DataArgs, MethodArgs
from .loop import build_trainer, callbacks

log = logging.getLogger(__name__)

# trl's preference metrics (logged as `name` in training, `eval_name` in evaluation), as the card names them.
PREFERENCE_METRICS = {
    "rewards/accuracies": "reward accuracy",
    "rewards/margins": "reward margin",
    "logps/chosen": "chosen log-prob",
    "logps/rejected": "rejected log-prob",
}
REFERENCE_ADAPTER = "ref"  # the name trl gives its frozen copy of a starting adapter


def prepare_sft(data_args: DataArgs, seed: int) -> data.Prepared:
    return data.prepare(
        data_args.dataset,
        data_args.dataset_format,
        data_args.dataset_weight,
        data_args.eval_fraction,
        seed,
        data_args.max_rows,
        data_args.dataset_split,
        data_args.num_proc,
        eval_max_rows=data_args.eval_max_rows,
    )


def prepare_pairs(data_args: DataArgs, seed: int) -> data.Prepared:
    return data.prepare(
        data_args.dataset,
        data_args.dataset_format,
        data_args.dataset_weight,
        data_args.eval_fraction,
        seed,
        data_args.max_rows,
        data_args.dataset_split,
        data_args.num_proc,
        converter=preference.convert,
        expected=preference.expected,
        eval_max_rows=data_args.eval_max_rows,
    )


def sft_trainer(
    model, tokenizer, common: dict, pargs: MethodArgs, max_length: int, train_ds, eval_ds, patience: int, log_dir: Path
):
    from trl import SFTConfig

    config = SFTConfig(**common, max_length=None, dataset_kwargs={"skip_prepare_dataset": True})  # already truncated
    return build_trainer(model, tokenizer, config, train_ds, eval_ds, patience, log_dir)


def _dpo_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """trl's DPOTrainer on pairs already tokenized by our template code (it would render its own)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PretokenizedDPOTrainer


def _orpo_class():
    from trl.experimental.orpo import ORPOTrainer

    class PretokenizedORPOTrainer(ORPOTrainer):
        """trl's ORPOTrainer on pairs already tokenized by our template code: its own row tokenizer
        expects rendered strings, so this one only lays our ids out in the columns it batches."""

        def tokenize_row(self, feature, model=None) -> dict:
            prompt = feature["prompt_ids"]
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                reply = feature[f"{side}_ids"]
                row[f"{side}_input_ids"] = prompt + reply
                row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(reply))
                row[f"{side}_labels"] = [masking.IGNORE] * len(prompt) + reply
            return row

    return PretokenizedORPOTrainer


def drop_reference_copy(model) -> None:
    """Remove trl's frozen copy of the starting adapter: from a fresh LoRA (a no-op) the adapter-disabled
    model is the reference already; after training, the saved adapter is the trained one alone."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


def dpo_trainer(
    model, tokenizer, common: dict, pargs: MethodArgs, max_length: int, train_ds, eval_ds, patience: int, log_dir: Path
):
    from trl import DPOConfig

    # The loss already has its reference inside; trl logs the rest. (Tokens are counted by trl as num_tokens.)
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, pargs.sft_weight]} if pargs.sft_weight else {}
    config = DPOConfig(**common, beta=pargs.beta, max_length=max_length, precompute_ref_log_probs=False, **losses)
    guard, hooks = callbacks(patience, eval_ds is not None, log_dir)
    trainer = _dpo_class()(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=hooks,
    )
    if not pargs.adapter:
        drop_reference_copy(trainer.model)
    return trainer, guard


def orpo_trainer(
    model, tokenizer, common: dict, pargs: MethodArgs, max_length: int, train_ds, eval_ds, patience: int, log_dir: Path
):
    from trl.experimental.orpo import ORPOConfig

    config = ORPOConfig(**common, beta=pargs.beta, max_length=max_length)
    guard, hooks = callbacks(patience, eval_ds is not None, log_dir)
    trainer = _orpo_class()(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=hooks,
    )
    return trainer, guard


def base_eval(run_dir: Path, trainer) -> dict:
    """Eval metrics of the base (adapter disabled), measured once before training and kept for resumes.
    For DPO from a fresh LoRA the base is the reference itself: reward accuracy and margin 0."""
    path = run_dir / "base_eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    from .run import base_view

    with base_view(trainer.model):
        found = trainer.evaluate(metric_key_prefix="base")
    # trl's preference trainers name their metrics eval_* whatever the prefix
    result = {k.removeprefix("base_").removeprefix("eval_"): v for k, v in found.items() if isinstance(v, (int, float))}
    if trainer.is_world_process_zero():
        path.write_text(json.dumps(result))
    return result


def eval_loss(run_dir: Path, trainer) -> dict:
    """SFT: the base's eval loss (finetune.run keeps it)."""
    from . import run

    return {"loss": run.base_eval(run_dir, trainer)}


def preference_metrics(log_history: list[dict], base: dict | None, final: dict) -> dict:
    """Reward accuracy, margin and chosen/rejected log-probs: last train log, base and final eval."""
    last_train = next((e for e in reversed(log_history) if "rewards/accuracies" in e and "loss" in e), {})
    return {
        "train": {k: round(last_train[k], 4) for k in PREFERENCE_METRICS if k in last_train},
        "base_eval": {k: round(base[k], 4) for k in PREFERENCE_METRICS if k in (base or {})},
        "eval": {k: round(final[f"eval_{k}"], 4) for k in PREFERENCE_METRICS if f"eval_{k}" in final},
    }


@dataclass(frozen=True)
class Method:
    """One way of training: data, tokenization, trainer, and what its base is measured by."""

    prepare: Callable  # (DataArgs, seed) -> data.Prepared
    tokenize: Callable  # (dataset, tokenizer, max_length, num_proc) -> (Dataset, dropped Counter)
    id_columns: tuple[str, ...]  # the token-id columns (checked against the model's vocabulary)
    trainer: Callable  # (...) -> (trainer, NanGuard)
    base_eval: Callable  # (run_dir, trainer) -> dict with at least "loss"
    pairs: bool  # trained on preference pairs (reports reward metrics)


METHODS = {
    "sft": Method(prepare_sft, masking.tokenize, ("input_ids",), sft_trainer, eval_loss, False),
    "dpo": Method(
        prepare_pairs,
        preference_tokens.tokenize,
        ("prompt_ids", "chosen_ids", "rejected_ids"),
        dpo_trainer,
        base_eval,
        True,
    ),
    "orpo": Method(
        prepare_pairs,
        preference_tokens.tokenize,
        ("prompt_ids", "chosen_ids", "rejected_ids"),
        orpo_trainer,
        base_eval,
        True,
    ),
}
