"""Fine-tune an instruct model on instruction data (SFT) or on preference pairs (DPO, ORPO), with
LoRA, QLoRA, every weight, prefix tuning or p-tuning (--finetuning); evaluate; save one run folder
(adapter or model, tokenizer + chat template, recipe, metrics, loss plot, samples, model card).

    python training/train.py                                              # production recipe (GPU, Hub)
    python training/train.py --config training/recipes/cpu-smollm2-sample.yaml   # 3 minutes on a CPU
    python training/train.py --config training/recipes/cpu-smollm2-full.yaml     # every weight, on a CPU
    python training/train.py --config training/recipes/cpu-smollm2-prefix.yaml   # prefix tuning (--finetuning ptuning: p-tuning)
    python training/train.py --config training/recipes/llama32-3b-kannada.yaml --dry_run true   # the plan only
    python training/train.py --config training/recipes/cpu-smollm2-dpo.yaml      # DPO, a few minutes on a CPU
    python training/train.py --method dpo --dataset votes.jsonl --adapter runs/NAME/adapter   # the chatbot's votes
    python training/train.py --config training/recipes/llama32-3b-kannada.yaml --push_to_hub you/name
    accelerate launch --config_file training/accelerate_configs/multi-gpu.yaml training/train.py   # several GPUs

Defaults < YAML recipe (--config) < command line; `--help` lists every option. Every run prints
its plan first (steps, tokens, evaluations, checkpoints, eval share; output_dir/plan.json). An interrupted
run resumes from its newest checkpoint when the same command runs again. The run's stages live in
finetune/stages.py, which a notebook calls the same way (`from finetune import train`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from chat_runtime.errors import run_main
from finetune import config, run


def main() -> None:
    # A bad option, an impossible combination or an unwritable folder fails here, in a second,
    # before the run's libraries (torch, transformers, trl: ~10 s) load.
    settings = config.parse()
    config.check(*settings.parts())
    run.ensure_writable(Path(settings.output.output_dir).expanduser().resolve())
    from finetune import train

    train(settings)  # the artifact folder it returns is in the summary it prints


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run_main(main)
