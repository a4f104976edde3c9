"""The quantizations we offer: a table, read by the parser, the quantizer and the model card."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ExportError


@dataclass(frozen=True)
class Quant:
    name: str  # file suffix and CLI name
    ftype: str | None  # llama_cpp's LLAMA_FTYPE_* constant; None: the converter's f16 output as is
    bpw: float  # bits per weight, roughly (for sizes and disk checks)
    quality: str  # what it costs, for the model card


QUANTS: dict[str, Quant] = {
    q.name: q
    for q in (
        Quant(
            "q4_k_m",
            "LLAMA_FTYPE_MOSTLY_Q4_K_M",
            4.9,
            "smallest and fastest; the usual CPU choice. Some quality loss, clearer on models under ~1B parameters",
        ),
        Quant("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7, "a little larger than q4_k_m, closer to f16"),
        Quant("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", 8.5, "practically the same answers as f16 at half its size"),
        Quant("f16", None, 16.0, "reference quality (the merged model as converted); largest and slowest on CPU"),
    )
}
DEFAULT_QUANT = "q4_k_m"


def parse_quants(values: Iterable[str]) -> list[str]:
    """Quant names from the command line ('q8_0', 'Q4_K_M', 'q8_0,q4_k_m'), deduplicated, in order.

    Raises ExportError naming the valid choices for anything unknown, before any work is done.
    """
    names: list[str] = []
    for value in values:
        for name in str(value).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in QUANTS:
                choices = ", ".join(f"{q} (default)" if q == DEFAULT_QUANT else q for q in QUANTS)
                raise ExportError(f"unknown quantization {name!r}: choose from {choices}, e.g. --quant q4_k_m q8_0")
            if name not in names:
                names.append(name)
    if not names:
        raise ExportError(f"no quantization given: pass e.g. --quant {DEFAULT_QUANT}")
    return names
