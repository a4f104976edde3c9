"""Check the Space's GPU engine paths on a CUDA machine: dtype choice, fp16/bf16 and 4-bit
(bitsandbytes) loading, a LoRA adapter on top, streaming and cancellation. Prints a table.

    python scripts/gpu_smoke.py --model_dir path/to/hf-folder-or-config-folder

A folder with only config + tokenizer gets random weights (no download needed), which is enough
to prove the code paths and to time decoding; it says nothing about answer quality.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from chat_runtime import GenerationParams, ModelSpec
from chat_runtime.engines.transformers_engine import TransformersEngine
from chat_runtime.precision import pick_dtype_name


def materialize(model_dir: Path, out: Path) -> Path:
    """A full HF folder: the given one, or random weights for a config-only folder."""
    if any(model_dir.glob("*.safetensors")):
        return model_dir
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def random_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def run(spec: ModelSpec, label: str) -> dict:
    started = time.perf_counter()
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
    out = engine.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=n_tokens, min_new_tokens=n_tokens, pad_token_id=engine.tokenizer.eos_token_id)
    torch.cuda.synchronize()
    raw_tok_per_s = (out.shape[1] - len(ids)) / (time.perf_counter() - started)
    cancel = threading.Event()
    stream = engine.stream(ids, GenerationParams(temperature=1.0, max_new_tokens=2000), cancel)
    next(stream)
    cancel.set()
    t = time.perf_counter()
    list(stream)
    cancel_s = time.perf_counter() - t
    weights = {str(p.dtype) for p in engine.model.parameters()}
    linear4 = sum(type(m).__name__ == "Linear4bit" for m in engine.model.modules())
    return dict(case=label, label=engine.label, load_s=round(load_s, 2), tok_per_s=round(n_tokens / decode_s, 1),
                raw_generate_tok_per_s=round(raw_tok_per_s, 1),
                tokens=n_tokens, cancel_s=round(cancel_s, 3), param_dtypes=sorted(weights), linear4bit_layers=linear4,
                peak_vram_mb=round(torch.cuda.max_memory_allocated() / 2**20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    cap = torch.cuda.get_device_capability()
    print(json.dumps(dict(device=torch.cuda.get_device_name(), capability=cap, torch=torch.__version__,
                          chosen_dtype=pick_dtype_name("cuda", cap), t4_dtype=pick_dtype_name("cuda", (7, 5)))))
    with tempfile.TemporaryDirectory() as tmp:
        base = materialize(args.model_dir, Path(tmp) / "base")
        adapter = random_adapter(base, Path(tmp) / "adapter")
        cases = [
            (ModelSpec(base=str(base)), "base, 16-bit"),
            (ModelSpec(base=str(base), load_in_4bit=True), "base, 4-bit NF4"),
            (ModelSpec(adapter=str(adapter)), "base + LoRA (base read from adapter), 16-bit"),
            (ModelSpec(adapter=str(adapter), load_in_4bit=True), "base + LoRA, 4-bit NF4"),
        ]
        for spec, label in cases:
            torch.cuda.reset_peak_memory_stats()
            print(json.dumps(run(spec, label)))


if __name__ == "__main__":
    main()
