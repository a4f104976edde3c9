"""Item 3: serving a fine-tune on CPU. Finch's GGUF path (adapter merged, exported to GGUF, run on
llama.cpp) vs transformers fp32 + the peft adapter (how a Space serves an adapter on CPU without a GGUF): decode tokens/s
(expect >= 3x), on the embedded model and on the Llama-3.2-1B shape.

    .venv/bin/python bench/gguf_vs_transformers.py            # embedded (q8_0) and 1B shape (q4_k_m)
    .venv/bin/python bench/gguf_vs_transformers.py --quick    # embedded + tiny shape, smoke run

The GGUF side runs through Finch's LlamaCppEngine; the other side is peft's `generate` itself,
greedy, forced to the same length, same prompt ids, both using every core. The adapter
is a fresh LoRA (r=16, all 7 projections) whose B matrices are set to small random values, so it
changes the outputs like a trained one. GGUF side: the embedded model's merged export at q8_0
(q4_k_m degrades a 135M model, DESIGN section 4); for the 1B shape the q4_k_m export of
bench/roofline.py: a merged LoRA leaves every tensor's shape and type as they are, so it decodes
at the same speed as its base's file.
"""

from __future__ import annotations

import argparse
import time

import benchlib

SYSTEM = "You are a helpful assistant."
MESSAGE = "Write a short story about a lighthouse keeper and a storm."


def make_adapter(base: str, name: str):
    """A LoRA adapter folder for `base` with nonzero B weights, made once into the bench cache."""
    folder = benchlib.cache() / f"{name}-lora"
    if (folder / "adapter_config.json").is_file():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 1e-3)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def merged_gguf(adapter, name: str, quant: str):
    """The adapter merged into its base and exported by our pipeline, once."""
    from chat_runtime.embedded import cache_dir
    from gguf_export.pipeline import run_export

    path = benchlib.cache() / f"{name}-merged" / f"{name}-{quant}.gguf"
    if not path.is_file():
        run_export(
            adapter=str(adapter), model=None, output_dir=path.parent, name=name, quants=[quant], cache=cache_dir()
        )
    return path


def hf_decode(model, prompt_ids: list[int], max_new_tokens: int) -> float:
    """Decode tokens/s of greedy `generate` on a peft model, exactly `max_new_tokens` long,
    timed per token by a streamer (its first `put` is the prompt)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    with torch.inference_mode():
        model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=model.config.eos_token_id,
        )
    return (len(clock.times) - 2) / (clock.times[-1] - clock.times[1])


def compare(label: str, base: str, quant: str, reps: int, max_new_tokens: int, gguf=None) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from chat_runtime import ModelSpec
    from chat_runtime.engines.llamacpp_engine import LlamaCppEngine

    adapter = make_adapter(base, label)
    engine = LlamaCppEngine(ModelSpec(gguf=str(gguf or merged_gguf(adapter, label, quant))))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": MESSAGE}]
    prompt_ids = engine.encode_chat(messages)  # the same template and tokenizer on both sides
    sides = {
        "transformers fp32 + peft": lambda: {"decode_tok_s": hf_decode(model, prompt_ids, max_new_tokens)},
        f"llama.cpp {quant} (merged)": lambda: {
            "decode_tok_s": benchlib.llamacpp_decode(engine, messages, max_new_tokens)
        },
    }
    for side in sides.values():
        side()  # warm-up
    results = benchlib.interleaved(sides, reps)
    print(
        f"## {label}: {max_new_tokens} new tokens, torch threads {torch.get_num_threads()}, llama.cpp threads "
        f"{engine.llm.n_threads}, load average {benchlib.load()}"
    )
    benchlib.table(results)
    hf_speed, gguf_speed = (r["decode_tok_s"] for r in results.values())
    benchlib.ratio(f"{label} gguf/transformers decode tok/s", gguf_speed / hf_speed, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--shape", default="llama-3.2-1b", help="the large shape to compare on")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 12 tokens, tiny shape")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.max_new_tokens, args.shape = 1, 12, "tiny"

    from chat_runtime import embedded

    benchlib.header("serving a fine-tune on CPU: GGUF (llama.cpp) vs transformers fp32 + peft")
    compare("embedded", str(embedded.hf_dir()), "q8_0", args.reps, args.max_new_tokens)
    compare(
        args.shape,
        str(benchlib.shaped_hf(args.shape)),
        "q4_k_m",
        args.reps,
        args.max_new_tokens,
        gguf=benchlib.shaped_gguf(args.shape, "q4_k_m"),
    )


if __name__ == "__main__":
    main()
