"""Several processes (`accelerate launch`, torchrun): which strategy runs, what it changes, who
writes what. Every process loads the model and trains on its share of each batch; only the main
process writes the run folder (recipe, adapter, card, plot, samples), pushes and prints the
summary, so one run leaves one artifact. The trainer already logs and checkpoints on the main
process only; this module covers the rest of the run."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from chat_runtime.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strategy:
    """What a way of splitting the work asks of model loading and of the end of the run."""

    shards_params: bool  # each process holds a slice of the weights (FSDP, ZeRO-3)
    qlora: bool  # a 4-bit base works with it
    optim_8bit: bool = True  # bitsandbytes' 8-bit AdamW works with it
    why_not: str = ""


# Picked from the environment `accelerate launch` gives each process (see strategy_from_env).
STRATEGIES = {
    "single": Strategy(shards_params=False, qlora=True),
    "ddp": Strategy(shards_params=False, qlora=True),
    # DeepSpeed shards the optimizer state itself; peft's FSDP guide reports 8-bit AdamW failing at
    # checkpoint save. LoRA's optimizer state is small, so plain AdamW costs little there.
    "deepspeed": Strategy(shards_params=False, qlora=True, optim_8bit=False),  # ZeRO-1/2
    "deepspeed-zero3": Strategy(shards_params=True, qlora=True, optim_8bit=False),
    "fsdp": Strategy(shards_params=True, qlora=True, optim_8bit=False),
    "fsdp2": Strategy(
        shards_params=True,
        qlora=False,
        optim_8bit=False,
        why_not="FSDP2 cannot shard bitsandbytes 4-bit weights (accelerate#3874); use "
        "training/accelerate_configs/fsdp-qlora.yaml (FSDP1), or plain LoRA with FSDP2",
    ),
}
# Backends that run in one process only (Unsloth's own multi-GPU support is not what we test).
SINGLE_PROCESS_BACKENDS = {"unsloth"}


def _flag(env, name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true", "yes")


def strategy_from_env(env=os.environ) -> str:
    """The strategy `accelerate launch` (or torchrun) set up for this process."""
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return "fsdp2" if env.get("FSDP_VERSION", "1") == "2" else "fsdp"
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed-zero3" if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "deepspeed"
    return "ddp" if int(env.get("WORLD_SIZE", "1")) > 1 else "single"


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    strategy: str
    processes: int
    rank: int
    local_rank: int
    local_processes: int
    cpu: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shards_params(self) -> bool:
        return STRATEGIES[self.strategy].shards_params

    def global_batch(self, per_device: int, grad_accum: int) -> int:
        """Sequences per optimizer step across all processes."""
        return per_device * grad_accum * self.processes

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block first (filling the datasets cache); the others then
        run it and reuse that cache."""
        if not self.is_main:
            self.wait_for_everyone()
        yield
        if self.is_main:
            self.wait_for_everyone()

    def wait_for_everyone(self) -> None:
        """A barrier; if another process stopped (its own message says why), this one stops too,
        without blaming what it was doing."""
        if self.processes == 1:
            return
        from accelerate import PartialState

        try:
            PartialState(cpu=self.cpu).wait_for_everyone()
        except Exception as err:  # gloo / nccl: the peer closed the connection
            raise UserError(f"process {self.rank}: another process stopped ({type(err).__name__})") from None


def setup(cpu: bool) -> Dist:
    """Join the process group (if launched with several processes) and size the CPU threads."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu)  # initializes torch.distributed (gloo on CPU, nccl on GPUs)
    dist = Dist(
        strategy_from_env(),
        state.num_processes,
        state.process_index,
        state.local_process_index,
        int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        cpu,
    )
    if not dist.is_main:
        _quiet_replica()
    if dist.processes > 1:
        _share_cores(dist.local_processes)
    return dist


def _share_cores(local_processes: int) -> None:
    # Each process would otherwise start one torch thread per core, so two processes on two cores
    # run four threads and thrash; torchrun's fallback (1 thread) wastes big machines. Give each
    # process its share: torch threads = cores / processes on this machine.
    import torch

    threads = max(1, len(os.sched_getaffinity(0)) // max(1, local_processes))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the trainer's accelerate state re-reads this
    torch.set_num_threads(threads)
    log.info("%d processes on this machine: %d torch thread(s) each", local_processes, threads)


def _quiet_replica() -> None:
    """Progress bars, info logs and warnings come from the main process only (errors from all)."""
    import warnings

    import datasets
    import huggingface_hub.utils
    import transformers

    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # the same library warnings the main process already shows
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def substitutions(dist: Dist, optim: str) -> dict[str, tuple]:
    """What this strategy changes in the recipe (logged and saved with the run, like the CPU's)."""
    if "8bit" in optim and not STRATEGIES[dist.strategy].optim_8bit:
        return {"optim": (optim, "adamw_torch")}
    return {}


def check(dist: Dist, backend: str, load_in_4bit: bool) -> None:
    """Refuse combinations the libraries do not support, saying what to use instead."""
    strategy = STRATEGIES[dist.strategy]
    if load_in_4bit and not strategy.qlora:
        raise UserError(f"QLoRA (finetuning qlora) does not work with {dist.strategy}: {strategy.why_not}.")
    if dist.processes > 1 and backend in SINGLE_PROCESS_BACKENDS:
        raise UserError(
            f"backend {backend} runs in one process; with {dist.processes} processes use --backend peft "
            "(or auto, which picks peft)"
        )


def full_state_dict(trainer, dist: Dist) -> dict | None:
    """The whole model's weights gathered on the main process when they are sharded (FSDP,
    ZeRO-3); None when each process already holds them. Every process must call this."""
    if not dist.shards_params:
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)
