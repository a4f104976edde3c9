"""The trainer: trl's SFTTrainer on pre-tokenized data, plus what a long run needs — resume from
the newest checkpoint, a NaN/inf guard that keeps the last good checkpoint, early stopping."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .backends import Device
from .config import TrainArgs

log = logging.getLogger(__name__)


class NanGuard(TrainerCallback):
    """Stop at the first non-finite logged loss, before that step's checkpoint is written."""

    def __init__(self):
        self.bad_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        values = [logs[k] for k in ("loss", "grad_norm") if isinstance(logs.get(k), (int, float))]
        if any(not math.isfinite(v) for v in values):
            self.bad_step = state.global_step
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False


# With several processes: LoRA uses every trainable weight in every step, so DDP need not search
# for unused ones, and that search with reentrant checkpointing fails ("marked as ready twice",
# peft#313); replicas log errors only, so each message appears once.
MULTI_PROCESS = {"ddp_find_unused_parameters": False, "log_level_replica": "error"}


def trainer_kwargs(
    train: TrainArgs,
    run_dir: Path,
    device: Device,
    optim: str,
    has_eval: bool,
    gradient_checkpointing: bool,
    processes: int = 1,
) -> dict:
    """The training arguments every method shares (trl's SFT, DPO and ORPO configs all take them)."""
    evaluating = has_eval and train.eval_steps > 0
    early = bool(train.early_stopping_patience) and evaluating
    several = dict(MULTI_PROCESS) if processes > 1 else {}
    if processes > 1 and gradient_checkpointing:
        several["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        lr_scheduler_type=train.lr_scheduler_type,
        optim=optim,
        weight_decay=train.weight_decay,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_nan_inf_filter=False,  # the default logs a NaN loss as 0.0, which would hide it from NanGuard
        eval_strategy="steps" if evaluating else "no",
        eval_steps=train.eval_steps if evaluating else None,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        bf16=device.compute_dtype == "bfloat16",  # on a CPU: autocast, the weights stay fp32
        fp16=device.compute_dtype == "float16",
        use_cpu=device.kind == "cpu",
        gradient_checkpointing=gradient_checkpointing,
        report_to="none",  # TensorBoard is attached in build_trainer, writing to run_dir/logs
        include_num_input_tokens_seen=True,
        remove_unused_columns=False,
        disable_tqdm=False,
        **several,
    )


def sft_config(
    train: TrainArgs,
    run_dir: Path,
    device: Device,
    optim: str,
    has_eval: bool,
    gradient_checkpointing: bool,
    processes: int = 1,
):
    """trl SFTConfig from our recipe. Data comes tokenized with labels, so trl only batches it."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_kwargs(train, run_dir, device, optim, has_eval, gradient_checkpointing, processes),
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
    )  # already truncated


def callbacks(patience: int, has_eval: bool, log_dir: Path) -> tuple[NanGuard, list]:
    """Every method's callbacks: NaN guard, TensorBoard in the run folder, early stopping."""
    from transformers.integrations import TensorBoardCallback

    guard = NanGuard()  # runs in every process: the logged loss is averaged over all, so all stop together
    board = TensorBoardCallback()  # opens its writer in the main process only, when it first logs
    board.logging_dir = str(log_dir)  # (also for the eval after training, which it would put in checkpoints/runs)
    return guard, [guard, board] + (
        [EarlyStoppingCallback(early_stopping_patience=patience)] if patience and has_eval else []
    )


def build_trainer(model, tokenizer, config, train_dataset, eval_dataset, patience: int, log_dir: Path):
    """SFTTrainer with our callbacks."""
    from trl import SFTTrainer

    guard, hooks = callbacks(patience, eval_dataset is not None, log_dir)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=hooks,
    )
    return trainer, guard


def newest_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint to resume from, if an earlier run of this folder was interrupted."""
    folder = run_dir / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None
