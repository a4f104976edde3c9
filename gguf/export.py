"""Export a fine-tune to GGUF for llama.cpp, Ollama and Finch's CPU chat.

    python gguf/export.py --adapter outputs/my-adapter --quant q4_k_m q8_0
    python gguf/export.py --adapter you/my-adapter --quant q4_k_m --push_to_hub you/my-model-GGUF
    python gguf/export.py --adapter outputs/my-adapter --lora_gguf        # + the adapter alone, as a LoRA GGUF
    python gguf/export.py --model HuggingFaceTB/SmolLM2-135M-Instruct --quant q8_0   # a full model
    python gguf/export.py --adapter outputs/my-adapter --no_verify       # skip the fidelity check
    python gguf/export.py --adapter outputs/my-adapter --merged_dir outputs/my-merged   # a 16-bit merged model
    python gguf/export.py --model runs/NAME/model --quant q8_0           # a full fine-tune, as it is

An adapter (folder or Hub id) is merged into the base its adapter_config.json names (`--model`
overrides it), in 16-bit; llama.cpp's own converter (from the llama-cpp-python sources matching
the installed runtime, or `--llama_cpp_dir`) writes an f16 GGUF with the chat template and EOS in
its metadata; llama-cpp-python quantizes it. Each `{name}-{quant}.gguf` appears in --output_dir
whole or not at all, beside a README.md model card and an Ollama Modelfile. For an adapter, the
card also holds the fidelity report of gguf/verify.py: the same prompts through the adapter, the
merge and every file written.
Then chat with it: `python gguf/chat.py --gguf outputs/gguf/my-adapter-q4_k_m.gguf`.
With --merged_dir the adapter merged into its base is written as a whole Hugging Face model instead
(safetensors, tokenizer, chat template, card with the merge's fidelity check) for transformers, vLLM
or TGI, and --push_to_hub pushes that folder. Prefix and p-tuning adapters have neither form: the
export refuses them at once. The steps live in gguf_export.api, which a notebook calls the same way.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from chat_runtime.errors import run_main
from gguf_export.api import ExportArgs, export

log = logging.getLogger("finch.export")


def main(args: ExportArgs) -> int:
    export(args)
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
