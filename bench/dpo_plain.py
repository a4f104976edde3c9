"""The baseline of bench/dpo_speed.py: a minimal plain trl DPOTrainer script with trl's defaults,
except what must match Finch's CPU DPO recipe (LoRA, batch, learning rate and schedule, beta,
seed, epochs). trl tokenizes the conversational rows itself (its own chat-template pass), builds
the LoRA from `peft_config` and takes the adapter-disabled model as its reference, as Finch does.
Finch's recipe adds an SFT term (sft_weight); the benchmark runs Finch without it (plain DPO, as trl's
defaults). `use_cpu=True` is the one setting trl needs here (its bf16 default refuses to start on a CPU
without it). Prints one JSON line: train_runtime, train_loss, losses.

    .venv/bin/python bench/dpo_plain.py --data pairs.jsonl --model <HF folder> --out /tmp/trl-dpo
"""

from __future__ import annotations

import argparse

import benchlib
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer

# Finch's CPU DPO recipe (training/recipes/cpu-smollm2-dpo.yaml): what both runs share.
RECIPE = dict(
    per_device_train_batch_size=4,
    learning_rate=3e-4,
    warmup_steps=3,
    lr_scheduler_type="linear",
    weight_decay=0.0,
    num_train_epochs=1,
    seed=3407,
    data_seed=3407,
    logging_steps=1,
    beta=0.1,
)
LORA = benchlib.recipe_lora()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prompt / chosen / rejected jsonl (chat messages)")
    parser.add_argument("--model", required=True, help="HF model folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    train = load_dataset("json", data_files=args.data, split="train")
    config = DPOConfig(output_dir=args.out, use_cpu=True, report_to="none", save_strategy="no", **RECIPE)
    trainer = DPOTrainer(model=args.model, args=config, train_dataset=train, peft_config=LORA)
    result = trainer.train()
    benchlib.print_training_result(trainer, result, config)


if __name__ == "__main__":
    main()
