"""The export as a function: `gguf/export.py` parses its command line into `ExportArgs` and calls
`export`; a notebook calls the same:

    from gguf_export.api import ExportArgs, export
    export(ExportArgs(adapter="runs/cpu-smollm2-sample/adapter", quant=["q8_0"]))
    export(ExportArgs(adapter="runs/cpu-smollm2-sample/adapter", merged_dir="outputs/merged"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chat_runtime.embedded import cache_dir

from .errors import ExportError
from .quants import DEFAULT_QUANT, QUANTS, parse_quants


@dataclass
class ExportArgs:
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "LoRA adapter to export: a folder or a Hub id (its base is read from it); prefix and "
            "p-tuning adapters have no GGUF or merged form"
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "a full model to export (folder or Hub id; a full fine-tune's runs/NAME/model as it is); "
            "with --adapter: the base to merge into"
        },
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
    merged_dir: str | None = field(
        default=None,
        metadata={
            "help": "with --adapter: write the 16-bit merged model here instead of GGUF files (safetensors, "
            "tokenizer, chat template, card; it loads in plain transformers, vLLM and TGI); --push_to_hub "
            "then pushes this folder"
        },
    )
    verify: bool = field(
        default=True,
        metadata={
            "help": "with --adapter: check that the files answer like the adapter "
            "(gguf/verify.py) and put the report in the card"
        },
    )


def verify_export(result, output_dir: Path) -> str:
    """The fidelity section for the card: the adapter vs the merge vs each file just written."""
    from .verify import verify_adapter

    ggufs = {a.kind: a.path for a in result.artifacts if a.kind != "lora"}
    report = verify_adapter(result.adapter, ggufs, model=result.base, work_dir=output_dir)
    print(report.table())
    return "\n" + report.markdown()


def export(args: ExportArgs) -> Path:
    """What `python gguf/export.py` does, for a notebook: GGUF files (returns their folder), or with
    `merged_dir` the merged model (returns that folder)."""
    if args.merged_dir:
        return export_merged(args)
    from .card import write_card_and_modelfile
    from .pipeline import run_export, summary

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
        from .hub import push

        url = push(output_dir, [a.path for a in result.artifacts] + extras, args.push_to_hub, args.private)
        print(f"Uploaded: {url}")
    return output_dir


def export_merged(args: ExportArgs) -> Path:
    """The adapter merged into its base, as a whole 16-bit model folder with a card (and pushed)."""
    from .merged import write_merged

    if not args.adapter:
        raise ExportError(
            "--merged_dir merges an adapter: give --adapter (a full model is a whole model already; "
            "export it to GGUF with --model, or serve it as it is)"
        )
    folder = write_merged(
        args.adapter, args.model, Path(args.merged_dir), args.merge_dtype, args.push_to_hub, args.verify
    )
    print(f"Merged model: {folder}\nChat with it: FINCH_MODEL={folder} python chatbot_app/app.py")
    if args.push_to_hub:
        from .hub import push

        files = sorted(p for p in folder.rglob("*") if p.is_file())
        url = push(folder, files, args.push_to_hub, args.private, what="merged model")
        print(f"Uploaded: {url}")
    return folder
