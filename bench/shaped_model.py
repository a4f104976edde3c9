"""Build, offline, a model folder with a real architecture's exact shape and random weights, for
speed and memory measurements where the real weights cannot be downloaded (no Hub here).

    python bench/shaped_model.py --shape llama-3.2-1b --out /tmp/llama-3.2-1b-shaped

The tokenizer (with its chat template) is the embedded SmolLM2's unless --tokenizer names
another; the vocabulary size is the real model's, so embedding and LM-head costs are exact.
Random weights say nothing about quality: only use such a model for speed, memory and code paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Llama 3.2 configs as Meta publishes them (only what shapes compute and memory).
SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
    ),
    "llama-3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
    ),
    # A few-MB stand-in with the same layout, for the benchmarks' --quick smoke runs (widths stay
    # multiples of 256 so k-quants apply; the vocabulary is the embedded tokenizer's, or grows to fit
    # the one given).
    "tiny": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    ),
}


def build(shape: str, out: Path, tokenizer_dir: Path | None, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Write config, random weights (safetensors) and tokenizer to `out`; return it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir is None:
        from chat_runtime import embedded

        tokenizer_dir = embedded.hf_dir()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Every token id needs an embedding row: a larger tokenizer than the shape's widens the vocabulary.
    shape_config = {**SHAPES[shape], "vocab_size": max(SHAPES[shape]["vocab_size"], len(tokenizer))}
    config = LlamaConfig(
        **shape_config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with tokenizer files (default: embedded)")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the saved weights")
    args = parser.parse_args()
    print(build(args.shape, args.out, args.tokenizer, args.dtype))
