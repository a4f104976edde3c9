"""Precision choices that serving and training share: the compute dtype for a device, and the 4-bit
NF4 settings of QLoRA. Here, not in an engine's module, so training uses them without reaching
into serving code."""

from __future__ import annotations


def pick_dtype_name(device: str, capability: tuple[int, int] | None) -> str:
    """torch dtype name for a device: float32 on CPU, bfloat16 on Ampere+, float16 on older GPUs."""
    if device == "cpu":
        return "float32"
    return "bfloat16" if capability and capability >= (8, 0) else "float16"


def bnb_config(compute_dtype_name: str):
    """4-bit NF4 quantization settings with double quantization (QLoRA's recipe)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype_name),
    )
