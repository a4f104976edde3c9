"""The plan of a run, counted from the settings alone (no model loaded, no data downloaded): steps,
tokens, epochs, evaluations and their rows, checkpoints and their disk, the share of compute that
goes to evaluation, and the hours it would take on a T4. `train.py --dry_run true` prints it and
writes plan.json; every real run does the same in its first lines.

Rows come from `--dataset_rows`, a local file's own row count, or the table of known Hub sets
below; tokens per row from a local file's size or that table. Model shapes come from a local
folder's config.json or the table of known models. Compute is counted in forward passes over a
row: training a row costs 3 (forward + backward), 4 with gradient checkpointing (the forward runs
twice); evaluating a row costs 1. A preference pair is two sequences, and DPO adds its reference's
forward to both training and evaluation."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

# Hub sets the recipes use: rows of the train split (from the dataset cards) and a rough mean of
# tokens per row (a Llama-3-sized vocabulary; the hours inherit this figure's error).
KNOWN_DATASETS = {
    "mlabonne/FineTome-100k": {"rows": 100_000, "tokens_per_row": 700},
    "WizardLMTeam/WizardLM_evol_instruct_70k": {"rows": 70_000, "tokens_per_row": 600},
    "charanhu/kannada-instruct-dataset-390k": {"rows": 390_000, "tokens_per_row": 500},
    "trl-lib/ultrafeedback_binarized": {"rows": 62_135, "tokens_per_row": 700},  # per pair: prompt + one reply
}
CHARS_PER_TOKEN = 4.0  # English text through a BPE vocabulary; a local file's bytes / this = its tokens

# Shapes of the recipes' models (from their config.json files): what the LoRA size and the compute follow.
KNOWN_MODELS = {
    "embedded": dict(params=134.5e6, hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64),
    "meta-llama/Llama-3.2-1B-Instruct": dict(
        params=1.236e9, hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, head_dim=64
    ),
    "meta-llama/Llama-3.2-3B-Instruct": dict(
        params=3.213e9, hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, head_dim=128
    ),
    "google/gemma-2-2b-it": dict(
        params=2.614e9, hidden=2304, intermediate=9216, layers=26, heads=8, kv_heads=4, head_dim=256
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        params=7.248e9, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128
    ),
    "microsoft/Phi-3.5-mini-instruct": dict(
        params=3.821e9, hidden=3072, intermediate=8192, layers=32, heads=32, kv_heads=32, head_dim=96
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        params=1.544e9, hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, head_dim=128
    ),
    "Qwen/Qwen3-1.7B": dict(
        params=1.721e9, hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128
    ),
    "HuggingFaceTB/SmolLM3-3B": dict(
        params=3.075e9, hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=4, head_dim=128
    ),
}

# Forward passes per row: (training, evaluation). See the module docstring.
METHOD_COST = {
    "sft": lambda checkpointing: (3 + checkpointing, 1),
    "dpo": lambda checkpointing: (2 * (3 + checkpointing) + 2, 2 + 2),
    "orpo": lambda checkpointing: (2 * (3 + checkpointing), 2),
}
# A T4 does 65 TFLOP/s fp16 on its tensor cores; a 4-bit QLoRA run with gradient checkpointing keeps
# about a quarter of that busy. Hours = 2 x params x tokens x forward passes / this.
T4_EFFECTIVE_FLOPS = 16e12
BYTES_PER_TRAINABLE = 4 + 8  # a checkpoint: fp32 adapter + Adam's two fp32 moments
EVAL_SHARE_LIMIT = 0.10  # what the shipped recipes keep to

# The fidelity check after training (gguf/verify.py): its prompts, up to its token limit each, per
# hop: the reference (base + adapter) and the merge on the GPU in 16 bits (fp16 on a T4), then each
# GGUF file on llama.cpp on the CPU, where a token reads the whole file (decode is memory-bound).
# Bytes a CPU decode reads per second: the 1B q4_k_m (803 MB) decodes at 34-36 tok/s alone on 2 EPYC
# Zen 4 cores (bench/concurrent_users.py); a slower host takes longer than the plan says.
CPU_DECODE_BYTES_PER_S = 28e9


@dataclass
class Budget:
    """What a run will spend, counted before it starts (plan.json)."""

    rows: int | None  # after mixing and max_rows, before bad rows are dropped
    rows_source: str
    train_rows: int | None
    eval_rows: int  # rows in each evaluation (after eval_max_rows)
    global_batch: int
    steps: int | None
    epochs: float | None
    tokens_per_row: float | None
    tokens: float | None  # trained, over all steps
    evaluations: int  # base + periodic + final
    eval_steps: int | None
    eval_share: float | None  # evaluation compute / training compute
    checkpoints_saved: int | None
    checkpoints_kept: int | None
    checkpoint_mb: float | None
    checkpoints_disk_mb: float | None
    trainable_params: int | None
    model_params: float | None
    t4_hours: float | None
    train_forward_passes: int  # per row
    eval_forward_passes: int
    fidelity_hops: int  # 0: no fidelity check after training
    fidelity_gpu_gib: float | None  # the 16-bit reference's weights on the GPU
    fidelity_disk_gib: float | None  # its scratch folder: the 16-bit merge and the GGUF files
    fidelity_cpu_minutes: float | None  # the GGUF hops' decoding, at most (every reply to the limit)


def _local_rows(path: Path) -> tuple[int, float]:
    """(rows, bytes per row) of a local data file, read without converting it."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if suffix == ".jsonl":
        with path.open("rb") as f:
            rows = sum(1 for line in f if line.strip())
    elif suffix == ".json":
        loaded = json.loads(path.read_text())
        rows = len(loaded) if isinstance(loaded, list) else len(next(iter(loaded.values()), []))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    else:  # csv: one header line
        with path.open("rb") as f:
            rows = max(sum(1 for _ in f) - 1, 0)
    return rows, size / max(rows, 1)


def count_rows(datasets: list[str], weights: list[float], given: list[int]) -> tuple[int | None, float | None, str]:
    """(rows after weighting, mean tokens per row, where the counts came from); None where unknown."""
    weights = weights * len(datasets) if len(weights) == 1 else weights
    total, tokens, sources = 0, 0.0, []
    for i, (name, weight) in enumerate(zip(datasets, weights)):
        known = KNOWN_DATASETS.get(name, {})
        local = Path(name).expanduser()
        per_row = known.get("tokens_per_row")
        if given and i < len(given):
            rows, source = given[i], "--dataset_rows"
        elif local.suffix and local.is_file():
            rows, size = _local_rows(local)
            per_row, source = size / CHARS_PER_TOKEN, "the file"
        elif known:
            rows, source = known["rows"], "known Hub set"
        else:
            return None, None, f"unknown for {name}: pass --dataset_rows"
        taken = round(rows * weight)
        total += taken
        tokens += taken * per_row if per_row else math.nan
        sources.append(f"{name}: {taken:,} ({source})")
    return total, (tokens / total if total and not math.isnan(tokens) else None), "; ".join(sources)


def model_shape(model: str) -> dict | None:
    """A model's shape: a local folder's config.json, else the table of known models."""
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
        head_dim = c.get("head_dim") or hidden // heads
        kv = c.get("num_key_value_heads", heads)
        per_layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * inter
        embed = c["vocab_size"] * hidden * (1 if c.get("tie_word_embeddings") else 2)
        return dict(
            params=layers * per_layer + embed,
            hidden=hidden,
            intermediate=inter,
            layers=layers,
            heads=heads,
            kv_heads=kv,
            head_dim=head_dim,
        )
    return KNOWN_MODELS.get(model)


def trainable_params(shape: dict, r: dict) -> int:
    """What the method trains: every weight (full), a key and a value vector per virtual token and
    layer (prefix tuning), virtual token embeddings and their MLP encoder (p-tuning, peft's default
    encoder width = hidden size), or the LoRA matrices."""
    method, tokens, h = r.get("finetuning", "lora"), r.get("num_virtual_tokens") or 0, shape["hidden"]
    if method == "full":
        return int(shape["params"])
    if method == "prefix":
        return tokens * shape["layers"] * 2 * shape["kv_heads"] * shape["head_dim"]
    if method == "ptuning":
        return tokens * h + 2 * h * h
    return lora_params(shape, r["lora_r"], r["lora_target_modules"])


def lora_params(shape: dict, rank: int, targets: list[str]) -> int:
    """Trainable LoRA weights: rank x (in + out) for every targeted projection of every layer."""
    h, i, hd = shape["hidden"], shape["intermediate"], shape["head_dim"]
    q, kv = shape["heads"] * hd, shape["kv_heads"] * hd
    sizes = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
        "qkv_proj": (h, q + 2 * kv),
        "gate_up_proj": (h, 2 * i),
    }
    return shape["layers"] * sum(rank * sum(sizes[t]) for t in targets if t in sizes)


def steps_for(train_rows: int, global_batch: int, accumulation: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps as transformers' Trainer counts them."""
    if max_steps > 0:
        return max_steps
    per_device_batches = math.ceil(train_rows / (global_batch // accumulation))
    return math.ceil(epochs * max(per_device_batches // accumulation, 1))


def evaluations_for(steps: int, eval_steps: int) -> tuple[int, int]:
    """(periodic evaluations, all evaluations): the base's before training, the periodic ones, and one
    of the last step unless the cadence lands on it."""
    periodic = steps // eval_steps if eval_steps > 0 else 0
    return periodic, 1 + periodic + (0 if eval_steps > 0 and steps % eval_steps == 0 else 1)


def checkpoints_for(steps: int, save_steps: int, eval_steps: int) -> int:
    """Checkpoints written: every save_steps, at every evaluation (so the best is on disk), and at the end."""
    saved = {k for k in range(save_steps, steps + 1, save_steps)} | {steps}
    if eval_steps > 0:
        saved |= set(range(eval_steps, steps + 1, eval_steps))
    return len(saved)


def fidelity_cost(recipe: dict, params: float | None) -> tuple[int, float | None, float | None, float | None]:
    """(hops, GPU GiB, scratch disk GiB, CPU minutes) of the fidelity check after training. A full
    fine-tune has no merge hop; prefix / p-tuning have no GGUF, so no check."""
    from gguf_export.quants import QUANTS
    from gguf_export.verify import MAX_NEW_TOKENS, PROMPTS

    if not recipe.get("verify") or recipe.get("finetuning") in ("prefix", "ptuning"):
        return 0, None, None, None
    quants = [QUANTS[q] for q in recipe.get("verify_quants") or [] if q in QUANTS]
    merge = recipe.get("finetuning") != "full"
    hops = 1 + merge + len(quants)
    if not params:
        return hops, None, None, None
    gguf_bytes = [params * q.bpw / 8 for q in quants]
    disk = 2 * params * merge + sum(gguf_bytes)
    seconds = sum(len(PROMPTS) * MAX_NEW_TOKENS * size / CPU_DECODE_BYTES_PER_S for size in gguf_bytes)
    return hops, round(2 * params / 2**30, 1), round(disk / 2**30, 1), round(seconds / 60, 1)


def estimate(recipe: dict, processes: int = 1) -> Budget:
    """The plan of a run with these settings (the resolved recipe's keys)."""
    r = recipe
    global_batch = r["per_device_train_batch_size"] * r["gradient_accumulation_steps"] * processes
    rows, per_row, source = count_rows(r["dataset"], r["dataset_weight"], r.get("dataset_rows") or [])
    if rows is not None and r["max_rows"]:
        rows = min(rows, r["max_rows"])
    held_out = math.ceil(rows * r["eval_fraction"]) if rows and r["eval_fraction"] and rows >= 2 else 0
    train_rows = rows - held_out if rows is not None else None
    eval_rows = min(held_out, r["eval_max_rows"]) if r.get("eval_max_rows") else held_out
    if rows is None and r["eval_fraction"]:
        eval_rows = r.get("eval_max_rows") or 0  # the cap is what an unknown-sized set evaluates
    if train_rows is not None or r["max_steps"] > 0:
        steps = steps_for(
            train_rows or 0, global_batch, r["gradient_accumulation_steps"], r["num_train_epochs"], r["max_steps"]
        )
    else:
        steps = None
    train_fwd, eval_fwd = METHOD_COST[r["method"]](int(bool(r["gradient_checkpointing"])))
    evaluating = bool(eval_rows)  # the base's and the last step's evaluations happen at any cadence
    periodic, evaluations = evaluations_for(steps or 0, r["eval_steps"]) if evaluating else (0, 0)
    eval_share = (
        evaluations * eval_rows * eval_fwd / (steps * global_batch * train_fwd) if steps and evaluating else 0.0
    )
    saves = checkpoints_for(steps, r["save_steps"], r["eval_steps"] if evaluating else 0) if steps else None
    kept = min(saves, r["save_total_limit"] + (1 if periodic else 0)) if saves is not None else None
    shape = model_shape("embedded" if r["model"] == "embedded" else r.get("base_model_id") or r["model"])
    trainable = trainable_params(shape, r) if shape else None
    checkpoint_mb = trainable * BYTES_PER_TRAINABLE / 2**20 if trainable else None
    tokens_per_row = min(per_row, r["max_seq_length"]) if per_row else None
    tokens = steps * global_batch * tokens_per_row if steps and tokens_per_row else None
    hours = None
    if tokens and shape:
        forward_flops = 2 * shape["params"] * tokens_per_row  # one forward pass over one row
        passes = steps * global_batch * train_fwd + evaluations * eval_rows * eval_fwd
        hours = forward_flops * passes / T4_EFFECTIVE_FLOPS / 3600
    hops, fidelity_gpu, fidelity_disk, fidelity_minutes = fidelity_cost(r, shape["params"] if shape else None)
    return Budget(
        rows=rows,
        rows_source=source,
        train_rows=train_rows,
        eval_rows=eval_rows if evaluating else 0,
        global_batch=global_batch,
        steps=steps,
        epochs=round(steps * global_batch / train_rows, 3) if steps and train_rows else None,
        tokens_per_row=round(tokens_per_row, 1) if tokens_per_row else None,
        tokens=round(tokens) if tokens else None,
        evaluations=evaluations,
        eval_steps=r["eval_steps"] if evaluating and r["eval_steps"] > 0 else None,
        eval_share=round(eval_share, 4),
        checkpoints_saved=saves,
        checkpoints_kept=kept,
        checkpoint_mb=round(checkpoint_mb, 1) if checkpoint_mb else None,
        checkpoints_disk_mb=round(checkpoint_mb * kept, 1) if checkpoint_mb and kept else None,
        trainable_params=trainable,
        model_params=shape["params"] if shape else None,
        t4_hours=round(hours, 2) if hours else None,
        train_forward_passes=train_fwd,
        eval_forward_passes=eval_fwd,
        fidelity_hops=hops,
        fidelity_gpu_gib=fidelity_gpu,
        fidelity_disk_gib=fidelity_disk,
        fidelity_cpu_minutes=fidelity_minutes,
    )


def _n(value, fmt: str = ",") -> str:
    return "unknown" if value is None else format(value, fmt)


def describe(b: Budget) -> str:
    """The plan as the first lines of a run."""
    share = f"{100 * b.eval_share:.1f}%" if b.eval_share is not None else "unknown"
    over = (
        f"  (above {100 * EVAL_SHARE_LIMIT:.0f}%: lower eval_max_rows or raise eval_steps)"
        if (b.eval_share or 0) > EVAL_SHARE_LIMIT
        else ""
    )
    lines = [
        "Plan (counted from the settings; no model or data loaded)",
        f"  rows            {_n(b.rows)} ({b.rows_source}); train {_n(b.train_rows)}",
        f"  steps           {_n(b.steps)} of {b.global_batch} rows = {_n(b.epochs)} epochs",
        f"  tokens          {_n(b.tokens)} trained (about {_n(b.tokens_per_row)} per row)",
        f"  evaluations     {b.evaluations} of {b.eval_rows} rows (every {_n(b.eval_steps)} steps, "
        f"plus the base before training)",
        f"  eval share      {share} of training compute{over}",
        f"  checkpoints     {_n(b.checkpoints_saved)} saved, {_n(b.checkpoints_kept)} kept, "
        f"{_n(b.checkpoint_mb, ',.1f')} MiB each, {_n(b.checkpoints_disk_mb, ',.1f')} MiB in all",
        f"  trainable       {_n(b.trainable_params)} weights trained, on a {_n(b.model_params, ',.0f')}-weight model",
        f"  on a T4         about {_n(b.t4_hours, ',.1f')} hours (at {T4_EFFECTIVE_FLOPS / 1e12:.0f} TFLOP/s effective)",
        fidelity_line(b),
    ]
    return "\n".join(lines)


def fidelity_line(b: Budget) -> str:
    """The fidelity check's line of the plan."""
    from gguf_export.verify import PROMPTS

    if not b.fidelity_hops:
        return "  fidelity check  none after training"
    return (
        f"  fidelity check  {b.fidelity_hops} hops of {len(PROMPTS)} prompts: {_n(b.fidelity_gpu_gib)} GiB "
        f"on the GPU (16-bit reference), {_n(b.fidelity_disk_gib)} GiB of scratch disk, up to "
        f"{_n(b.fidelity_cpu_minutes)} min of GGUF decoding on the CPU"
    )


def write(run_dir: Path, b: Budget) -> Path:
    """plan.json in the run folder, written whole (temp name, then rename)."""
    path = run_dir / "plan.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(b), indent=2))
    tmp.replace(path)
    return path
