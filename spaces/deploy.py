"""Deploy an app as a Hugging Face Space: assemble the bundle (app + runtime), create the Space,
upload, request hardware, set the model variables.

    python spaces/deploy.py --app chatbot --space_id you/finch-chat --adapter you/your-adapter
    python spaces/deploy.py --app chatbot --adapter you/your-adapter --dry_run /tmp/bundle   # offline

The token comes from HF_TOKEN or `hf auth login`. A dry run writes the exact bundle that would be
uploaded and prints the variables; `cd /tmp/bundle && python app.py` starts it locally.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from space_deploy.bundle import assemble
from space_deploy.hub import deploy


@dataclass
class DeployArgs:
    app: str = field(default="chatbot", metadata={"help": "which app: chatbot or storymaker"})
    space_id: str | None = field(default=None, metadata={"help": "the Space to create or update, owner/name"})
    model: str | None = field(default=None, metadata={"help": "base model id (default: read from the adapter)"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter id on the Hub"})
    gguf: str | None = field(default=None, metadata={"help": "run a GGUF with llama.cpp instead: owner/repo/file.gguf"})
    load_in_4bit: bool = field(default=False, metadata={"help": "load the base in 4-bit on the Space's GPU"})
    hardware: str = field(default="t4-small", metadata={"help": "Space hardware to request (e.g. cpu-basic, t4-small)"})
    private: bool = field(default=False, metadata={"help": "create the Space private"})
    dry_run: str | None = field(default=None, metadata={"help": "write the bundle to this folder and stop (no network)"})


def variables_for(args: DeployArgs) -> dict[str, str]:
    """The Space variables that tell the runtime what to load."""
    if not (args.model or args.adapter or args.gguf):
        raise SystemExit("Say what the Space serves: --adapter (and optionally --model), or --gguf.")
    values = {"FINCH_MODEL": args.model, "FINCH_ADAPTER": args.adapter, "FINCH_GGUF": args.gguf,
              "FINCH_LOAD_IN_4BIT": "1" if args.load_in_4bit else None}
    return {k: v for k, v in values.items() if v}


def main(args: DeployArgs) -> None:
    variables = variables_for(args)
    if args.dry_run:
        bundle = assemble(args.app, Path(args.dry_run), variables)
        print(f"Bundle written to {bundle}\nSpace variables: {json.dumps(variables)}")
        return
    if not args.space_id:
        raise SystemExit("--space_id owner/name is needed to deploy (or use --dry_run FOLDER)")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = assemble(args.app, Path(tmp) / "bundle", variables)
        url = deploy(bundle, args.space_id, args.hardware, variables, args.private)
    print(f"Deployed: {url}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (parsed,) = HfArgumentParser(DeployArgs).parse_args_into_dataclasses(args=sys.argv[1:])
    main(parsed)
