"""Deploy an app as a Hugging Face Space: assemble the bundle (app + runtime), create the Space,
upload, request hardware, set the model variables.

    python spaces/deploy.py --app chatbot --space_id you/finch-chat --adapter you/your-adapter
    python spaces/deploy.py --app chatbot --adapter you/your-adapter --dry_run /tmp/bundle   # offline
    FINCH_SERVER_API_KEY=... python spaces/deploy.py --app chatbot --space_id you/finch-chat \
        --server_url https://your-vllm-host/v1 --server_model meta-llama/Llama-3.2-3B-Instruct
    python spaces/deploy.py --app chatbot --space_id you/finch-compare --adapter you/your-adapter \
        --compare base --votes_dataset you/finch-votes      # side by side, votes to a Hub dataset

The token comes from HF_TOKEN or `hf auth login`. A dry run writes the exact bundle that would be
uploaded and prints the variables; `cd /tmp/bundle && python app.py` starts it locally.
A server's API key is read from FINCH_SERVER_API_KEY (never a flag: flags end up in shell history)
and stored as a Space secret, not a variable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from chat_runtime.errors import UserError, run_main
from chat_runtime.spec import ModelSpec
from space_deploy.bundle import DEFAULT_HARDWARE, assemble, space_kind
from space_deploy.hub import deploy


@dataclass
class DeployArgs:
    app: str = field(default="chatbot", metadata={"help": "which app: chatbot or storymaker"})
    space_id: str | None = field(default=None, metadata={"help": "the Space to create or update, owner/name"})
    model: str | None = field(
        default=None,
        metadata={
            "help": "base model id (default: read from the adapter), or a whole fine-tuned model (full or merged)"
        },
    )
    adapter: str | None = field(
        default=None, metadata={"help": "peft adapter id on the Hub (LoRA, prefix tuning or p-tuning)"}
    )
    gguf: str | None = field(default=None, metadata={"help": "run a GGUF with llama.cpp instead: owner/repo/file.gguf"})
    load_in_4bit: bool = field(default=False, metadata={"help": "load the base in 4-bit on the Space's GPU"})
    server_url: str | None = field(
        default=None,
        metadata={
            "help": "serve through an OpenAI-compatible inference server (vLLM, TGI, llama-server) at this URL; "
            "its API key, if any, comes from FINCH_SERVER_API_KEY"
        },
    )
    server_model: str | None = field(default=None, metadata={"help": "the model name that server serves"})
    hardware: str | None = field(
        default=None,
        metadata={
            "help": "Space hardware to request: t4-small (default), zero-a10g (ZeroGPU), or cpu-basic "
            "(the default with --gguf or --server_url)"
        },
    )
    compare: str | None = field(
        default=None,
        metadata={
            "help": "compare mode (chatbot): `base` (the adapter's base), another adapter or model id, or a GGUF "
            "owner/repo/file.gguf answers beside the served model, with vote buttons"
        },
    )
    votes_dataset: str | None = field(
        default=None,
        metadata={
            "help": "a Hub dataset (owner/name) the Space uploads its votes and likes to; the Space needs an "
            "HF_TOKEN secret that may write to it"
        },
    )
    private: bool = field(default=False, metadata={"help": "create the Space private"})
    dry_run: str | None = field(
        default=None, metadata={"help": "write the bundle to this folder and stop (no network)"}
    )


def variables_for(args: DeployArgs) -> dict[str, str]:
    """The Space variables that tell the runtime what to load."""
    if not (args.model or args.adapter or args.gguf or args.server_url):
        raise UserError("Say what the Space serves: --adapter (and optionally --model), --gguf, or --server_url.")
    values = {
        "FINCH_MODEL": args.model,
        "FINCH_ADAPTER": args.adapter,
        "FINCH_GGUF": args.gguf,
        "FINCH_LOAD_IN_4BIT": "1" if args.load_in_4bit else None,
        "FINCH_SERVER_URL": args.server_url,
        "FINCH_SERVER_MODEL": args.server_model,
        "FINCH_COMPARE": args.compare,
        "FINCH_VOTES_DATASET": args.votes_dataset,
    }
    variables = {k: v for k, v in values.items() if v}
    check_compare(args, space_kind(variables))
    if args.server_url:  # the runtime's own checks, now rather than on the Space (no Hub call for a server)
        try:
            ModelSpec(
                base=args.model,
                adapter=args.adapter,
                gguf=args.gguf,
                load_in_4bit=args.load_in_4bit,
                server_url=args.server_url,
                server_model=args.server_model,
            ).resolved()
        except ValueError as err:
            raise UserError(f"Cannot deploy that: {err}") from None
    return variables


def check_compare(args: DeployArgs, kind: str) -> None:
    """Refuse a compare mode the Space could not start: the app has none, there is no base to show,
    or the second model needs torch on a Space that installs none."""
    if not args.compare:
        return
    if args.app != "chatbot":
        raise UserError(f"Compare mode is the chatbot's; the {args.app} has none (drop --compare).")
    if args.compare.strip() == "base" and not args.adapter:
        raise UserError("--compare base shows an adapter's base beside it: it needs --adapter.")
    if kind != "transformers" and not args.compare.lower().endswith(".gguf"):
        raise UserError(
            f"This Space {'runs a GGUF' if kind == 'llamacpp' else 'serves through an inference server'} and "
            "installs no torch: compare it with another GGUF (--compare owner/repo/file.gguf)."
        )


def check_hardware(args: DeployArgs, hardware: str) -> None:
    """Refuse hardware the Space's engine cannot use, with what to pick instead."""
    kind = space_kind(variables_for(args))
    if hardware.startswith("zero-") and kind != "transformers":
        raise UserError(
            f"ZeroGPU ({hardware}) lends a GPU to the transformers engine; a Space that serves "
            f"{'a GGUF' if kind == 'llamacpp' else 'through an inference server'} runs on cpu-basic (drop --hardware)."
        )
    if hardware.startswith("zero-") and args.load_in_4bit:
        raise UserError(
            "ZeroGPU attaches its GPU only while a reply runs, so a model cannot be loaded in 4-bit there: "
            "drop --load_in_4bit (ZeroGPU's GPUs hold a small model in bf16), or pick t4-small."
        )


def secrets_for(args: DeployArgs) -> dict[str, str]:
    """Space secrets: the inference server's API key, from the environment."""
    key = (os.environ.get("FINCH_SERVER_API_KEY") or "").strip()
    return {"FINCH_SERVER_API_KEY": key} if key and args.server_url else {}


def main(args: DeployArgs) -> None:
    variables = variables_for(args)
    hardware = args.hardware or DEFAULT_HARDWARE[space_kind(variables)]
    check_hardware(args, hardware)
    if args.dry_run:
        bundle = assemble(args.app, Path(args.dry_run), variables, hardware)
        secrets = ", ".join(secrets_for(args)) or "none"  # names only
        print(f"Bundle written to {bundle}\nSpace variables: {json.dumps(variables)}\nSpace secrets: {secrets}")
        print_votes_note(args)
        return
    if not args.space_id:
        raise UserError("--space_id owner/name is needed to deploy (or use --dry_run FOLDER)")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = assemble(args.app, Path(tmp) / "bundle", variables, hardware)
        url = deploy(bundle, args.space_id, hardware, variables, args.private, secrets_for(args))
    print(f"Deployed: {url}")
    print_votes_note(args)


def print_votes_note(args: DeployArgs) -> None:
    if args.votes_dataset:  # the deploy token is not copied there: the Space gets a token of its own
        print(
            f"Votes go to the dataset {args.votes_dataset}: add an HF_TOKEN secret that may write to it in the "
            "Space's settings (a fine-grained token scoped to that dataset). Until then they stay in the "
            "Space's votes.jsonl."
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (parsed,) = HfArgumentParser(DeployArgs).parse_args_into_dataclasses(args=sys.argv[1:])
    run_main(lambda: main(parsed))
