"""The export, step by step: (merge) -> convert to f16 -> check metadata -> quantize -> (LoRA GGUF).

Scratch work (the merged HF folder, the f16 GGUF) lives in a hidden folder inside the output folder,
on the same disk, so every final file arrives by an atomic rename and a failure leaves none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from chat_runtime.spec import require_safetensors

from . import converter as conv
from .errors import ExportError
from .files import atomic_output, check_free_space, remove_leftovers, work_dir
from .merge import MERGE_DTYPES, check_lora_gguf, local_folder, merge_adapter, resolve_adapter
from .quantize import check_chat_metadata, quantize
from .quants import QUANTS

log = logging.getLogger(__name__)


@dataclass
class Artifact:
    """One file the export wrote."""

    path: Path
    kind: str  # a quant name, or "lora"
    seconds: float
    note: str = ""

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class Export:
    """What an export made, and from what (the card and the summary read this)."""

    name: str
    base: str  # base model id or folder, as the adapter names it
    adapter: str | None
    converter: str  # where the converters came from
    chat_template: str | None
    eos_token: str | None
    artifacts: list[Artifact] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # step -> time, for the summary
    eos_id: int | None = None  # the end token's id, checked in every GGUF written


def default_name(adapter: str | None, model: str | None) -> str:
    """File stem from the source: a training run's `runs/NAME/adapter` folder is named NAME."""
    path = Path((adapter or model or "model").rstrip("/"))
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name


def _param_count(folder: Path) -> int:
    """Rough parameter count from the safetensors sizes and the stored dtype (for the disk check)."""
    config = json.loads((folder / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    width = 4 if "32" in dtype else 2
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) // width


def needed_bytes(params: int, quants: list[str], merging: bool) -> int:
    """Disk the export writes at its peak: merged 16-bit folder, f16 GGUF, and every quant."""
    scratch = 2 * params * (2 if merging else 1)
    return scratch + sum(int(params * QUANTS[q].bpw / 8) for q in quants if q != "f16")


def _tokenizer_facts(folder: Path) -> tuple[str | None, str | None, int | None]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok.chat_template, tok.eos_token, tok.eos_token_id


@dataclass
class Sources:
    """What the export reads: the model folder to convert (the base, when an adapter is merged into
    it) and the adapter folder, both local and checked."""

    base: str  # base model id or folder, as the user or the adapter names it
    base_dir: Path
    adapter_dir: Path | None
    converter: conv.Converter


def run_export(
    *,
    adapter: str | None,
    model: str | None,
    output_dir: Path,
    name: str | None,
    quants: list[str],
    lora_gguf: bool = False,
    llama_cpp_dir: str | None = None,
    merge_dtype: str = "float16",
    cache: Path,
    verbose: bool = False,
) -> Export:
    """Export an adapter (merged into its base) or a full model to GGUF files in `output_dir`."""
    check_request(adapter, model, lora_gguf, merge_dtype)
    name = name or default_name(adapter, model)
    # Everything that can be refused is refused here, before minutes of work.
    sources = resolve_sources(adapter, model, lora_gguf, llama_cpp_dir, cache)
    prepare_output(output_dir, sources, quants)

    steps = (sources.adapter_dir is not None) + 1 + sum(q != "f16" for q in quants) + lora_gguf
    bar = tqdm(total=steps, desc="export", unit="step", disable=None)
    scratch = work_dir(output_dir)
    try:
        hf_dir, merge_s = merge_stage(sources, scratch, merge_dtype, bar)
        result, f16 = convert_stage(sources, hf_dir, scratch, name, adapter, verbose, bar)
        if sources.adapter_dir is not None:
            result.seconds["merge"] = merge_s
        quantize_stage(result, f16, quants, output_dir, verbose, bar)
        if lora_gguf:
            lora_gguf_stage(result, sources, output_dir, verbose, bar)
    finally:
        bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def check_request(adapter: str | None, model: str | None, lora_gguf: bool, merge_dtype: str) -> None:
    """Refuse a request that cannot mean anything, before any file is read."""
    if not (adapter or model):
        raise ExportError("say what to export: --adapter (a LoRA folder or Hub id) or --model (a full model)")
    if lora_gguf and not adapter:
        raise ExportError("--lora_gguf needs --adapter: a LoRA GGUF is made from an adapter")
    if merge_dtype not in MERGE_DTYPES:
        raise ExportError(f"unknown --merge_dtype {merge_dtype!r}: choose from {', '.join(MERGE_DTYPES)}")


def resolve_sources(
    adapter: str | None, model: str | None, lora_gguf: bool, llama_cpp_dir: str | None, cache: Path
) -> Sources:
    """Local folders for the model and adapter, safetensors only, an architecture the converter knows."""
    if adapter:
        adapter_dir, base_dir, base = resolve_adapter(adapter, model)
        if lora_gguf:
            check_lora_gguf(adapter_dir)
    else:
        adapter_dir, base = None, model
        base_dir = local_folder(
            model, "the model {source}", "Check the id or path, or log in for a private repo (HF_TOKEN)."
        )
    try:  # the converter and the merge would read a pickle (.bin) as readily as safetensors
        require_safetensors(str(base_dir), "the base model" if adapter_dir is not None else "the model")
        if adapter_dir is not None:
            require_safetensors(str(adapter_dir), "the adapter")
    except ValueError as err:
        raise ExportError(str(err)) from None
    converter = conv.find_converter(llama_cpp_dir, cache)
    if adapter_dir is not None:
        arch = (json.loads((base_dir / "config.json").read_text()).get("architectures") or ["?"])[0]
        known = conv.supported_architectures(converter)
        if known and arch not in known:
            raise ExportError(
                f"Model {arch} is not supported by llama.cpp's converter ({converter.origin}): use a base it "
                "supports, or a newer llama.cpp checkout via --llama_cpp_dir"
            )
    return Sources(base, base_dir, adapter_dir, converter)


def prepare_output(output_dir: Path, sources: Sources, quants: list[str]) -> None:
    """The output folder exists, holds no leftovers of a failed export, and has room for this one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(output_dir)
    merging = sources.adapter_dir is not None
    check_free_space(output_dir, needed_bytes(_param_count(sources.base_dir), quants, merging=merging))


def merge_stage(sources: Sources, scratch: Path, merge_dtype: str, bar) -> tuple[Path, float]:
    """The HF folder to convert: the adapter merged into its base (in scratch), or the model itself."""
    if sources.adapter_dir is None:
        return sources.base_dir, 0.0
    started = time.perf_counter()
    log.info("merging the adapter into %s (%s)", sources.base, merge_dtype)
    bar.set_postfix_str("merging")
    merged = merge_adapter(sources.base_dir, sources.adapter_dir, scratch / "merged", merge_dtype)
    bar.update()
    return merged, time.perf_counter() - started


def convert_stage(
    sources: Sources, hf_dir: Path, scratch: Path, name: str, adapter: str | None, verbose: bool, bar
) -> tuple[Export, Path]:
    """The f16 GGUF (in scratch) by llama.cpp's converter, its template and end token checked."""
    started = time.perf_counter()
    log.info("converting to an f16 GGUF with llama.cpp's converter (%s)", sources.converter.origin)
    bar.set_postfix_str("converting")
    f16 = scratch / f"{name}-f16.gguf"
    conv.run(
        sources.converter,
        "convert_hf_to_gguf.py",
        [str(hf_dir), "--outtype", "f16", "--outfile", str(f16), "--model-name", name],
        "converting to GGUF",
        verbose,
    )
    template, eos_token, eos_id = _tokenizer_facts(hf_dir)
    check_chat_metadata(f16, template, eos_id)
    result = Export(name, sources.base, adapter, sources.converter.origin, template, eos_token, eos_id=eos_id)
    result.seconds["convert"] = time.perf_counter() - started
    bar.update()
    return result, f16


def quantize_stage(result: Export, f16: Path, quants: list[str], output_dir: Path, verbose: bool, bar) -> None:
    """Each quant from the f16 file, each checked and moved into place whole; then the f16 itself."""
    finals = {q: output_dir / f"{result.name}-{q}.gguf" for q in quants}
    for quant in quants:
        if quant == "f16":
            continue
        started = time.perf_counter()
        log.info("quantizing to %s", quant)
        bar.set_postfix_str(f"quantizing to {quant}")
        with atomic_output(finals[quant]) as tmp:
            fallbacks = quantize(f16, tmp, quant, verbose)
            check_chat_metadata(tmp, result.chat_template, result.eos_id)
        note = f"{fallbacks} tensors kept another type: their width is not a multiple of 256" if fallbacks else ""
        result.artifacts.append(Artifact(finals[quant], quant, time.perf_counter() - started, note))
        bar.update()
    if "f16" in quants:
        os.replace(f16, finals["f16"])  # same disk: atomic
        result.artifacts.append(Artifact(finals["f16"], "f16", result.seconds["convert"]))
    result.artifacts.sort(key=lambda a: quants.index(a.kind))


def lora_gguf_stage(result: Export, sources: Sources, output_dir: Path, verbose: bool, bar) -> None:
    """The adapter alone as a LoRA GGUF, to load beside a GGUF of its base."""
    started = time.perf_counter()
    log.info("converting the adapter alone to a LoRA GGUF")
    bar.set_postfix_str("LoRA GGUF")
    final = output_dir / f"{result.name}-lora-f16.gguf"
    with atomic_output(final) as tmp:
        # --base: a local folder, so the converter never asks the Hub for the base's config.
        conv.run(
            sources.converter,
            "convert_lora_to_gguf.py",
            [str(sources.adapter_dir), "--base", str(sources.base_dir), "--outtype", "f16", "--outfile", str(tmp)],
            "converting the LoRA adapter to GGUF",
            verbose,
        )
    result.artifacts.append(Artifact(final, "lora", time.perf_counter() - started, f"apply to a GGUF of {result.base}"))
    bar.update()


def summary(result: Export) -> str:
    """A table of what was written: file, kind, size, time."""
    from .files import human_size

    rows = [(a.path.name, a.kind, human_size(a.size), f"{a.seconds:.1f} s", a.note) for a in result.artifacts]
    header = ("file", "kind", "size", "time", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
        for row in [header, *rows]
    ]
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    total = sum(result.seconds.values()) + sum(a.seconds for a in result.artifacts if a.kind not in ("f16",))
    folder = result.artifacts[0].path.parent if result.artifacts else "-"
    return "\n".join(lines) + f"\nsteps: {steps}; total {total:.1f} s; files in {folder}"
