"""The trainer: trl's SFTTrainer on pre-tokenized data, plus what a long run needs — resume from
the newest checkpoint, a NaN/inf guard that keeps the last good checkpoint, early stopping, a
checkpoint at every evaluation (so the best one can be kept), an ETA that counts evaluations, and
a sample reply at each evaluation."""

from __future__ import annotations

import logging
import math
import time
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
    min_lr = {"min_lr_rate": train.min_lr_ratio} if train.lr_scheduler_type == "cosine_with_min_lr" else {}
    several = dict(MULTI_PROCESS) if processes > 1 else {}
    if processes > 1 and gradient_checkpointing:
        several["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_ratio or train.warmup_steps,  # transformers reads a value below 1 as a ratio
        lr_scheduler_type=train.lr_scheduler_type,
        lr_scheduler_kwargs=min_lr,
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
        # tracked whenever there is an eval: the trainer then keeps the best checkpoint through rotation
        metric_for_best_model="eval_loss" if evaluating else None,
        greater_is_better=False if evaluating else None,
        bf16=device.compute_dtype == "bfloat16",  # on a CPU: autocast, the weights stay fp32
        fp16=device.compute_dtype == "float16",
        use_cpu=device.kind == "cpu",
        gradient_checkpointing=gradient_checkpointing,
        **({"padding_free": True} if train.padding_free else {}),  # an SFTConfig field; check() keeps it to sft
        report_to=list(train.report_to) or "none",  # TensorBoard is attached in callbacks(), writing to run_dir/logs
        run_name=run_dir.name,
        **({"project": "finch"} if "trackio" in train.report_to else {}),
        include_num_input_tokens_seen=True,
        remove_unused_columns=False,
        disable_tqdm=False,
        **several,
    )


class CheckpointEachEval(TrainerCallback):
    """Save a checkpoint at every evaluation during training, so the step with the lowest eval loss
    is on disk (transformers names it best_model_checkpoint and spares it from rotation)."""

    def __init__(self):
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_evaluate(self, args, state, control, **kwargs):
        if self.training:
            control.should_save = True


class Eta(TrainerCallback):
    """After the first steps: the time left for the whole run, evaluations included, logged and shown
    on the progress bar. Before the first evaluation its cost comes from the plan's ratio (an eval of
    `eval_cost_in_steps` steps' compute); after it, from the measured time. The rate per step is
    measured from the end of the first step: that one also pays one-off costs (kernel choice, memory
    pools), 4.8 s where the next ones took 2.5-3.2 s on an EPYC with bf16, which made the ETA 40% long."""

    def __init__(self, eval_every: int, eval_cost_in_steps: float, final_eval: bool, first_after: int = 3):
        self.eval_every, self.eval_cost_in_steps, self.final_eval = eval_every, eval_cost_in_steps, final_eval
        self.first_after = first_after
        self.progress = None  # transformers' ProgressCallback, whose bar shows the ETA (set by train.py)
        self.eval_seconds: list[float] = []
        self.reported: set[str] = set()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.start_step, self.step_done = time.perf_counter(), state.global_step, time.perf_counter()
        self.warm: tuple[float, int] | None = None  # (time, step) at the end of the first step
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        self.step_done = time.perf_counter()
        if self.warm is None:
            self.warm = (self.step_done, state.global_step)
        elif state.global_step - self.warm[1] >= self.first_after:
            self.update(state, "first steps")

    def on_evaluate(self, args, state, control, **kwargs):
        if getattr(self, "training", False) and state.global_step > self.start_step:
            self.eval_seconds.append(time.perf_counter() - self.step_done)
            self.update(state, "first evaluation")

    def estimate(self, state) -> dict:
        """Seconds per step (evaluations taken out), per evaluation, left, and for the training loop in all."""
        warm_time, warm_step = self.warm  # set at the first step's end, before any estimate
        now = time.perf_counter()
        elapsed = now - self.started
        per_step = (now - warm_time - sum(self.eval_seconds)) / max(state.global_step - warm_step, 1)
        per_eval = (
            sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else per_step * self.eval_cost_in_steps
        )
        evals_left = state.max_steps // self.eval_every - state.global_step // self.eval_every if self.eval_every else 0
        in_loop = (state.max_steps - state.global_step) * per_step + evals_left * per_eval
        left = in_loop + (per_eval if self.final_eval else 0)
        return {
            "per_step": per_step,
            "per_eval": per_eval,
            "evals_left": evals_left,
            "left": left,
            "loop": elapsed + in_loop,
        }

    def update(self, state, when: str) -> None:
        if not state.is_world_process_zero:
            return
        e = self.estimate(state)
        finish = time.strftime("%H:%M", time.localtime(time.time() + e["left"]))
        bar = getattr(self.progress, "training_bar", None)
        if bar is not None:
            bar.set_postfix_str(f"ETA {e['left'] / 60:.1f} min, done ~{finish}, {e['evals_left']} evals left")
        if when not in self.reported:
            self.reported.add(when)
            log.info(
                "ETA after the %s (step %d/%d): %.0f s left, done at about %s; %.2f s per step, %.1f s per "
                "evaluation, %d evaluations left; training loop %.0f s in all",
                when,
                state.global_step,
                state.max_steps,
                e["left"],
                finish,
                e["per_step"],
                e["per_eval"],
                e["evals_left"],
                e["loop"],
            )


class SamplesAtEval(TrainerCallback):
    """At each evaluation during training, log the greedy replies to a few prompts (a few tokens each),
    to watch the model learn."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int):
        self.tokenizer, self.prompts, self.max_new_tokens = tokenizer, prompts, max_new_tokens

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not self.prompts or model is None or not state.is_world_process_zero or state.global_step == 0:
            return
        from .report import replies

        was_training = model.training
        for prompt, reply in zip(self.prompts, replies(model, self.tokenizer, self.prompts, self.max_new_tokens)):
            log.info("sample at step %d: %r -> %r", state.global_step, prompt, reply)
        model.train(was_training)


def callbacks(patience: int, has_eval: bool, log_dir: Path) -> tuple[NanGuard, list]:
    """Every method's callbacks: NaN guard, TensorBoard in the run folder, early stopping."""
    from transformers.integrations import TensorBoardCallback

    guard = NanGuard()  # runs in every process: the logged loss is averaged over all, so all stop together
    board = TensorBoardCallback()  # opens its writer in the main process only, when it first logs
    board.logging_dir = str(log_dir)  # (also for the eval after training, which it would put in checkpoints/runs)
    return guard, [guard, board, CheckpointEachEval()] + (
        [EarlyStoppingCallback(early_stopping_patience=patience)] if patience and has_eval else []
    )


# A p-tuning checkpoint's encoder, whole (peft saves only the prompt it computes, see `sft_trainer`).
ENCODER_FILE = "prompt_encoder.safetensors"


def prompt_encoder(model):
    """The p-tuning encoder of a peft model (an MLP that computes the virtual tokens), else None."""
    config = getattr(model, "active_peft_config", None)
    return model.prompt_encoder[model.active_adapter] if config and config.peft_type == "P_TUNING" else None


def scores_labelled_only(model, device: str) -> bool:
    """Whether a training step computes its logits at the labelled positions alone: on a CPU, where
    trl's fused LM head scores every position (it keeps to the labelled ones only on Triton GPUs)
    and recomputes them in its backward pass, and not for prefix / p-tuning, whose virtual tokens
    shift the positions. The CPU recipe trains 1.3x faster so, to the same loss (bench/train_speed.py)."""
    config = getattr(model, "active_peft_config", None)
    return device == "cpu" and not getattr(config, "is_prompt_learning", False)


def labelled_loss(model, inputs: dict, num_items_in_batch):
    """Next-token cross-entropy over the positions whose next token has a label, with the model's LM
    head run at those positions only (transformers' `logits_to_keep` given positions); the mean
    over the accumulated batch's labelled tokens, as transformers' own loss takes it. trl's entropy
    and token-accuracy metrics are not logged then."""
    import torch

    # No KV cache: with one, transformers leaves out a padding-free batch's per-row masks (as trl's own
    # loss also turns it off).
    inputs = {**inputs, "use_cache": False}
    targets = inputs.pop("labels")[:, 1:]
    keep = (targets != -100).any(0).nonzero().squeeze(1)  # positions predicting a labelled token, any row
    logits = model(**inputs, logits_to_keep=keep).logits
    targets = targets[:, keep]
    total = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return total / count


def sft_trainer():
    """trl's SFTTrainer, whose checkpoints keep a p-tuning encoder whole. peft saves p-tuning as the
    prompt its encoder computes, and loads that into the encoder's input on a resume: the resumed
    run would train a different prompt (a held-out loss of 5.7 after a resume where the unbroken
    run reached 2.0). The encoder's own weights go into each checkpoint beside the model, before
    its trainer_state.json (written last, so a checkpoint that has one has both)."""
    from safetensors.torch import load_file, save_file
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            encoder = prompt_encoder(self.accelerator.unwrap_model(self.model))
            if encoder is not None and Path(output_dir or "").name.startswith("checkpoint-"):
                tensors = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
                save_file(tensors, str(Path(output_dir) / ENCODER_FILE))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not scores_labelled_only(self.accelerator.unwrap_model(model), self.args.device.type):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = labelled_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as transformers does: DDP averages the gradients
            return loss

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            encoder = prompt_encoder(self.accelerator.unwrap_model(model or self.model))
            if encoder is not None:
                encoder.load_state_dict(load_file(str(Path(resume_from_checkpoint) / ENCODER_FILE)))

    return Trainer


def build_trainer(model, tokenizer, config, train_dataset, eval_dataset, patience: int, log_dir: Path):
    """SFTTrainer with our callbacks."""
    guard, hooks = callbacks(patience, eval_dataset is not None, log_dir)
    trainer = sft_trainer()(
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
