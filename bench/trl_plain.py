"""The baseline of bench/train_speed.py: a minimal plain trl SFTTrainer script, trl's defaults
except what must match Finch's CPU recipe (LoRA, batch, learning rate and schedule, seed, epochs).

    .venv/bin/python bench/trl_plain.py --data rows.jsonl --out /tmp/trl-run            # trl tokenizes
    .venv/bin/python bench/trl_plain.py --data rows.jsonl --out /tmp/trl-run --finch_labels

With --finch_labels the rows come tokenized by Finch's data code (assistant-only labels, same
order as training/train.py sees them) and the LoRA starts from the same seeded init, so the loss
is the same objective from the same start as Finch's; otherwise
trl tokenizes the conversations itself and, by default, computes the loss on every token.
`use_cpu=True` is the one setting trl needs here (its bf16 default refuses to start on a CPU
without it). Prints one JSON line: train_runtime, train_loss, losses.
"""

from __future__ import annotations

import argparse

import benchlib
from datasets import Dataset, load_dataset
from trl import SFTConfig, SFTTrainer

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
# Finch's CPU recipe (training/recipes/cpu-smollm2-sample.yaml): what both runs share.
RECIPE = dict(
    per_device_train_batch_size=4,
    learning_rate=5e-4,
    warmup_steps=5,
    lr_scheduler_type="linear",
    weight_decay=0.01,
    num_train_epochs=1,
    seed=3407,
    data_seed=3407,
    logging_steps=1,
)
LORA = benchlib.recipe_lora()


def finch_rows(data: str, model: str) -> Dataset:
    """The rows as Finch's train.py would feed them (eval_fraction 0): input_ids + labels."""
    from transformers import AutoTokenizer

    from finetune import data as finch_data
    from finetune import masking

    prepared = finch_data.prepare([data], ["auto"], [1.0], 0.0, RECIPE["seed"])
    rows, _ = masking.tokenize(prepared.train, AutoTokenizer.from_pretrained(model), 256)
    return rows


def finch_lora_model(path: str):
    """The LoRA model made as Finch makes it (seeded right before the adapter's random init)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(RECIPE["seed"])
    return get_peft_model(model, LORA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ShareGPT jsonl")
    parser.add_argument("--model", required=True, help="HF model folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--finch_labels", action="store_true", help="train on Finch's tokenized rows and labels")
    args = parser.parse_args()

    model, peft_config = args.model, LORA
    if args.finch_labels:
        train = finch_rows(args.data, args.model)
        model, peft_config = finch_lora_model(args.model), None
    else:
        train = load_dataset("json", data_files=args.data, split="train").map(
            lambda row: {"messages": [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]},
            remove_columns=["conversations"],
        )
    config = SFTConfig(output_dir=args.out, use_cpu=True, report_to="none", save_strategy="no", **RECIPE)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, peft_config=peft_config)
    result = trainer.train()
    benchlib.print_training_result(trainer, result, config, padding_free=config.padding_free)


if __name__ == "__main__":
    main()
