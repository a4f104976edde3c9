"""Export a fine-tune to GGUF for llama.cpp, Ollama and Finch's CPU chat.

    python gguf/export.py --adapter outputs/my-adapter --quant q4_k_m q8_0
    python gguf/export.py --adapter you/my-adapter --quant q4_k_m --push_to_hub you/my-model-GGUF
    python gguf/export.py --adapter outputs/my-adapter --lora_gguf        # + the adapter alone, as a LoRA GGUF
    python gguf/export.py --model HuggingFaceTB/SmolLM2-135M-Instruct --quant q8_0   # a full model
    python gguf/export.py --adapter outputs/my-adapter --no_verify       # skip the fidelity check

An adapter (folder or Hub id) is merged into the base its adapter_config.json names (`--model`
overrides it), in 16-bit; llama.cpp's own converter (from the llama-cpp-python sources matching
the installed runtime, or `--llama_cpp_dir`) writes an f16 GGUF with the chat template and EOS in
its metadata; llama-cpp-python quantizes it. Each `{name}-{quant}.gguf` appears in --output_dir
whole or not at all, beside a README.md model card and an Ollama Modelfile. For an adapter, the
card also holds the fidelity report of gguf/verify.py: the same prompts through the adapter, the
merge and every file written.
Then chat with it: `python gguf/chat.py --gguf outputs/gguf/my-adapter-q4_k_m.gguf`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from chat_runtime.embedded import cache_dir
from chat_runtime.errors import run_main
from gguf_export.quants import DEFAULT_QUANT, QUANTS, parse_quants

log = logging.getLogger("finch.export")


@dataclass
class ExportArgs:
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter to export: a folder or a Hub id (its base is read from it)"}
    )
    model: str | None = field(
        default=None,
        metadata={"help": "a full model to export (folder or Hub id); with --adapter: the base to merge into"},
    )
    output_dir: str = field(
        default="outputs/gguf", metadata={"help": "folder for the GGUF files, README.md and Modelfile"}
    )
    name: str | None = field(default=None, metadata={"help": "file name stem; unset: the adapter's or model's name"})
    quant: list[str] = field(
        default_factory=lambda: [DEFAULT_QUANT], metadata={"help": f"one or more of {', '.join(QUANTS)}"}
    )
    lora_gguf: bool = field(
        default=False, metadata={"help": "also write the adapter alone as a LoRA GGUF ({name}-lora-f16.gguf)"}
    )
    merge_dtype: str = field(
        default="float16", metadata={"help": "dtype of the merge: float16 (what the GGUF holds), bfloat16 or float32"}
    )
    llama_cpp_dir: str | None = field(
        default=None, metadata={"help": "use the converters of this llama.cpp checkout instead of the cached ones"}
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "upload the files, card and Modelfile to this model repo (owner/name)"}
    )
    private: bool = field(default=False, metadata={"help": "create the Hub repo private"})
    verbose: bool = field(default=False, metadata={"help": "show the converter's and quantizer's own output"})
    verify: bool = field(
        default=True,
        metadata={
            "help": "with --adapter: check that the files answer like the adapter "
            "(gguf/verify.py) and put the report in the card"
        },
    )


def verify_export(result, output_dir: Path) -> str:
    """The fidelity section for the card: the adapter vs the merge vs each file just written."""
    from gguf_export.verify import verify_adapter

    ggufs = {a.kind: a.path for a in result.artifacts if a.kind != "lora"}
    report = verify_adapter(result.adapter, ggufs, model=result.base, work_dir=output_dir)
    print(report.table())
    return "\n" + report.markdown()


def main(args: ExportArgs) -> int:
    from gguf_export.card import write_card_and_modelfile
    from gguf_export.pipeline import run_export, summary

    quants = parse_quants(args.quant)  # an unknown name stops here, before any work
    output_dir = Path(args.output_dir).expanduser()
    result = run_export(
        adapter=args.adapter,
        model=args.model,
        output_dir=output_dir,
        name=args.name,
        quants=quants,
        lora_gguf=args.lora_gguf,
        llama_cpp_dir=args.llama_cpp_dir,
        merge_dtype=args.merge_dtype,
        cache=cache_dir(),
        verbose=args.verbose,
    )
    fidelity = verify_export(result, output_dir) if args.verify and args.adapter else ""
    extras = write_card_and_modelfile(result, output_dir, args.push_to_hub, fidelity)
    print(summary(result))
    first = next(a.path for a in result.artifacts if a.kind != "lora")
    print(f"\nChat with it: python gguf/chat.py --gguf {first}")
    if args.push_to_hub:
        from gguf_export.hub import push

        url = push(output_dir, [a.path for a in result.artifacts] + extras, args.push_to_hub, args.private)
        print(f"Uploaded: {url}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (parsed,) = HfArgumentParser(ExportArgs).parse_args_into_dataclasses(args=sys.argv[1:])
    if parsed.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    try:
        run_main(lambda: main(parsed))
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was left at the final paths", file=sys.stderr)
        sys.exit(130)
