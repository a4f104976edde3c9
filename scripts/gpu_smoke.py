"""The CUDA measurements of scripts/gpu_check.sh, one subcommand each, printed as JSON lines.

Each row is a JSON line (`--out FILE` appends it there too); `table` prints rows as one table.

    python scripts/gpu_smoke.py runtime --model_dir DIR [--adapter DIR]   # the Space's GPU engine paths
    python scripts/gpu_smoke.py fused_lm_head --model_dir DIR             # trl's fused LM head vs the plain one
    python scripts/gpu_smoke.py train_row --metrics RUN/adapter/metrics.json --case NAME
    python scripts/gpu_smoke.py table rows.jsonl

`runtime` loads base + LoRA adapter through the chatbot runtime's transformers engine in 4-bit and
in 16-bit, both as this GPU runs them and as a T4 does (fp16 compute: a T4 has no bf16), streams a
greedy reply, times plain `model.generate` beside it and checks that Stop ends generation. A
folder with only config + tokenizer gets random weights (no download needed), and without
`--adapter` a random LoRA is made: enough for code paths, speed and memory, nothing about quality.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import tempfile
import threading
import time
from pathlib import Path

import torch

T4_CAPABILITY = (7, 5)


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def peak_mb() -> int:
    return round(torch.cuda.max_memory_allocated() / 2**20)


def fresh_peak() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def materialize(model_dir: Path, out: Path) -> Path:
    """A full HF folder: the given one, or random weights for a config-only folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if any(model_dir.glob("*.safetensors")):
        return model_dir
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def random_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@contextlib.contextmanager
def capability(cap: tuple[int, int] | None):
    """Make the engine choose its dtype as on a GPU of this compute capability (a T4's: fp16)."""
    if cap is None:
        yield
        return
    real = torch.cuda.get_device_capability
    torch.cuda.get_device_capability = lambda *args, **kwargs: cap
    try:
        yield
    finally:
        torch.cuda.get_device_capability = real


def runtime_case(spec, case: str, cap: tuple[int, int] | None) -> dict:
    from chat_runtime import GenerationParams
    from chat_runtime.engines.transformers_engine import TransformersEngine

    fresh_peak()
    started = time.perf_counter()
    with capability(cap):
        engine = TransformersEngine(spec.resolved())
    load_s = time.perf_counter() - started
    ids = engine.encode_chat([{"role": "user", "content": "Tell me a story."}])
    params = GenerationParams(temperature=0.0, max_new_tokens=128, repetition_penalty=1.0)
    list(engine.stream(ids, GenerationParams(temperature=0.0, max_new_tokens=8), threading.Event()))  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    pieces = list(engine.stream(ids, params, threading.Event()))
    decode_s = time.perf_counter() - started
    n_tokens = len(engine.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])
    # The same decode through plain `model.generate` (no thread, no streamer): our overhead.
    input_ids = torch.tensor([ids], device=engine.model.device)
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = engine.model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=n_tokens,
        min_new_tokens=n_tokens,
        pad_token_id=engine.tokenizer.eos_token_id,
    )
    torch.cuda.synchronize()
    raw_tok_per_s = (out.shape[1] - len(ids)) / (time.perf_counter() - started)
    cancel = threading.Event()
    stream = engine.stream(ids, GenerationParams(temperature=1.0, max_new_tokens=2000), cancel)
    next(stream)
    cancel.set()
    started = time.perf_counter()
    list(stream)
    cancel_s = time.perf_counter() - started
    linear4 = sum(type(m).__name__ == "Linear4bit" for m in engine.model.modules())
    row = dict(
        case=case,
        tok_per_s=round(n_tokens / decode_s, 1),
        peak_vram_mb=peak_mb(),
        notes=dict(
            engine=engine.label,
            load_s=round(load_s, 2),
            generate_tok_per_s=round(raw_tok_per_s, 1),
            tokens=n_tokens,
            stop_s=round(cancel_s, 3),
            linear4bit_layers=linear4,
            dtypes=sorted({str(p.dtype).replace("torch.", "") for p in engine.model.parameters()}),
        ),
    )
    del engine
    return row


def cmd_runtime(args) -> None:
    from chat_runtime import ModelSpec
    from chat_runtime.precision import pick_dtype_name

    native = pick_dtype_name("cuda", torch.cuda.get_device_capability())
    with tempfile.TemporaryDirectory() as tmp:
        base = materialize(args.model_dir, Path(tmp) / "base")
        adapter = args.adapter or random_adapter(base, Path(tmp) / "adapter")
        spec = dict(base=str(base), adapter=str(adapter))
        cases = [
            (ModelSpec(**spec, load_in_4bit=True), f"runtime: base + LoRA, 4-bit NF4, {native} compute", None),
            (
                ModelSpec(**spec, load_in_4bit=True),
                "runtime: base + LoRA, 4-bit NF4, fp16 compute (T4 path)",
                T4_CAPABILITY,
            ),
            (ModelSpec(**spec), "runtime: base + LoRA, fp16 (T4 path)", T4_CAPABILITY),
        ]
        for model_spec, case, cap in cases:
            emit(runtime_case(model_spec, case, cap), args.out)


def cmd_fused_lm_head(args) -> None:
    """trl's fused LM head (chunked log-probs in Triton, no full logits) against the model's own loss, on
    the recipe's batch (2 x max_seq_length): forward + backward tokens/s, peak VRAM, and equal losses."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).cuda().train()
    model.gradient_checkpointing_enable()  # as the recipe trains
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=generator).cuda()

    def step(fused: bool) -> float:
        out = model(input_ids=ids, labels=ids, fused_lm_head=True) if fused else model(input_ids=ids, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        return out.loss.item()

    add_fused_lm_head(model)  # without fused_lm_head=True the forward is the model's own
    losses = {}
    for fused, case in ((False, "trl 1.15 LM head: plain (full logits)"), (True, "trl 1.15 LM head: fused (Triton)")):
        step(fused)  # warm-up (Triton compiles here)
        fresh_peak()
        torch.cuda.synchronize()
        started = time.perf_counter()
        losses[fused] = [step(fused) for _ in range(args.steps)]
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        emit(
            dict(
                case=case,
                tok_per_s=round(args.steps * ids.numel() / seconds, 1),
                peak_vram_mb=peak_mb(),
                notes=dict(batch=f"{args.batch} x {args.seq_len}", loss=round(losses[fused][-1], 4), steps=args.steps),
            ),
            args.out,
        )
    gap = abs(losses[True][-1] - losses[False][-1])
    emit(
        dict(
            case="trl 1.15 LM head: fused loss - plain loss",
            tok_per_s=None,
            peak_vram_mb=None,
            notes=dict(abs_difference=round(gap, 5), equal=gap < 1e-2),
        ),
        args.out,
    )


def cmd_train_row(args) -> None:
    """A row from a training run's metrics.json (train.py measures tokens/s and peak memory itself)."""
    m = json.loads(args.metrics.read_text())
    emit(
        dict(
            case=args.case,
            tok_per_s=m["tokens_per_second"],
            peak_vram_mb=round(m["peak_memory_mb"]),
            notes=dict(
                backend=m["backend"],
                device=m["device"],
                steps=m["global_step"],
                loss=f"{m['first_train_loss']:.3f} -> {m['final_train_loss']:.3f}",
                train_s=m["train_runtime_s"],
            ),
        ),
        args.out,
    )


def cmd_table(args) -> None:
    rows = [json.loads(line) for path in args.rows for line in Path(path).read_text().splitlines() if line.strip()]
    print("| case | tokens/s | peak VRAM (MiB) | notes |\n|---|---|---|---|")
    for r in rows:
        notes = ", ".join(f"{k} {v}" for k, v in r.get("notes", {}).items())
        print(
            f"| {r['case']} | {r['tok_per_s'] if r['tok_per_s'] is not None else ''} | "
            f"{r['peak_vram_mb'] if r['peak_vram_mb'] is not None else ''} | {notes} |"
        )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("runtime", help="the chatbot runtime's GPU paths: 4-bit and fp16, base + LoRA")
    p.add_argument("--model_dir", required=True, type=Path, help="HF folder, or a config + tokenizer folder")
    p.add_argument("--adapter", type=Path, help="LoRA adapter folder (default: a random one)")
    p.set_defaults(run=cmd_runtime)
    p = sub.add_parser("fused_lm_head", help="trl's fused LM head against the plain one, forward + backward")
    p.add_argument("--model_dir", required=True, type=Path)
    p.add_argument("--batch", type=int, default=2, help="sequences per step (the QLoRA recipe's 2)")
    p.add_argument("--seq_len", type=int, default=2048, help="tokens per sequence (the recipe's max_seq_length)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    p.set_defaults(run=cmd_fused_lm_head)
    p = sub.add_parser("train_row", help="a row from train.py's metrics.json")
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--case", required=True)
    p.set_defaults(run=cmd_train_row)
    p = sub.add_parser("table", help="print JSON-line rows as one Markdown table")
    p.add_argument("rows", nargs="+", type=Path)
    p.set_defaults(run=cmd_table)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, help="also append each row to this JSON-lines file")
    return parser


def main() -> None:
    args = make_parser().parse_args()
    if args.command not in ("table", "train_row") and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke.py: this needs a CUDA GPU, and torch sees none here")
    args.run(args)


if __name__ == "__main__":
    main()
