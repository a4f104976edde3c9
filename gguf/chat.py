"""Chat with a GGUF on your CPU, in the terminal, through Finch's runtime (llama.cpp).

    python gguf/chat.py                                              # the embedded SmolLM2-135M-Instruct
    python gguf/chat.py --gguf outputs/gguf/my-adapter-q4_k_m.gguf
    python gguf/chat.py --gguf you/my-model-GGUF/my-model-q4_k_m.gguf --temperature 0   # from the Hub
    python gguf/chat.py --gguf base-f16.gguf --lora_gguf outputs/gguf/my-adapter-lora-f16.gguf

The settings are the Space's (temperature, top-p, max new tokens, repetition penalty, system
prompt), with the same defaults and ranges. Replies stream as they are decoded. /reset starts over,
/exit or Ctrl-D leaves, Ctrl-C stops a reply (at the prompt it leaves).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from chat_runtime import DEFAULTS, RANGES, ChatService, ModelSpec, validate
from chat_runtime.errors import UserError, run_main


def _range(name: str) -> str:
    low, high = RANGES[name]
    return f"{low:g} to {high:g}"


@dataclass
class ChatArgs:
    gguf: str | None = field(
        default=None, metadata={"help": "GGUF file: a path or owner/repo/file.gguf; unset: the embedded model"}
    )
    lora_gguf: str | None = field(
        default=None, metadata={"help": "a LoRA GGUF to apply on top (from gguf/export.py --lora_gguf)"}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "system prompt; unset: the model template's own, if any"}
    )
    temperature: float = field(default=DEFAULTS.temperature, metadata={"help": f"0 = greedy; {_range('temperature')}"})
    top_p: float = field(default=DEFAULTS.top_p, metadata={"help": f"nucleus sampling; {_range('top_p')}"})
    max_new_tokens: int = field(
        default=DEFAULTS.max_new_tokens, metadata={"help": f"longest reply; {_range('max_new_tokens')}"}
    )
    repetition_penalty: float = field(
        default=DEFAULTS.repetition_penalty, metadata={"help": f"1 = none; {_range('repetition_penalty')}"}
    )


def main(args: ChatArgs) -> int:
    from gguf_export.repl import ChatSession, run

    try:
        params = validate(
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            repetition_penalty=args.repetition_penalty,
        )
        if args.lora_gguf and not args.gguf:
            raise ValueError("--lora_gguf needs --gguf: the GGUF of the base model the LoRA was trained on")
        service = ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=args.gguf, gguf_lora=args.lora_gguf))
    except (ValueError, FileNotFoundError) as err:
        raise UserError(str(err)) from None
    print(f"Finch chat · {service.engine.label}")
    if args.system_prompt:
        print(service.system_note)
    try:
        import readline  # noqa: F401  line editing and history for input(), where the platform has it
    except ImportError:
        pass
    return run(ChatSession(service, params, args.system_prompt))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    (parsed,) = HfArgumentParser(ChatArgs).parse_args_into_dataclasses(args=sys.argv[1:])
    try:
        run_main(lambda: main(parsed))
    except KeyboardInterrupt:  # Ctrl-C while loading: leave without a traceback
        print("\nbye")
        sys.exit(130)
