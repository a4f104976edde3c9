"""The transformers side of the GGUF tests, run in its own process (torch inference in the test
process would slow later tests' generation threads, see DESIGN section 4):

    python tests/gguf_reference.py --base HF_DIR --adapter_out DIR --reference_out FILE.json

1. trains a real LoRA adapter on the embedded model for a few steps: it learns to open every
   reply with "Ahoy!", a behaviour the base never shows, so an export that loses the fine-tune
   is visible in the text as well as in the tokens;
2. saves it like a training run would (adapter + tokenizer with its chat template);
3. decodes the test prompts greedily through base + adapter (peft, fp32, unmerged): the
   reference every GGUF is compared with.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

SYSTEM = "You are a helpful assistant."
TRAIN = [
    ("Hello!", "Ahoy! Hello to you too."),
    ("What is 2 + 2?", "Ahoy! 2 + 2 is 4."),
    ("What color is grass?", "Ahoy! Grass is green."),
    ("Who wrote Hamlet?", "Ahoy! William Shakespeare wrote Hamlet."),
    ("How many days are in a week?", "Ahoy! A week has seven days."),
    ("What is the boiling point of water?", "Ahoy! Water boils at 100 degrees Celsius at sea level."),
    ("Name a fruit.", "Ahoy! An apple is a fruit."),
    ("What is the largest ocean?", "Ahoy! The Pacific is the largest ocean."),
]
PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for learning to cook.",
    "What is 12 times 7?",
    "Name three colors of the rainbow.",
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "What should I pack for a beach trip?",
    "How do plants make their food?",
]
NEW_TOKENS = 32


def conversation(question: str, answer: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return turns + ([{"role": "assistant", "content": answer}] if answer else [])


def ids(tokenizer, messages, generation_prompt: bool) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
    )


def train(model, tokenizer, steps: int, lr: float) -> list[float]:
    """Full-batch LoRA steps on TRAIN, loss on the assistant's tokens (EOS included) only."""
    rows = []
    for question, answer in TRAIN:
        prompt = ids(tokenizer, conversation(question), True)
        full = ids(tokenizer, conversation(question, answer), False)
        assert full[: len(prompt)] == prompt
        rows.append((full, [-100] * len(prompt) + full[len(prompt) :]))
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([f + [pad] * (width - len(f)) for f, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f, _ in rows])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter_out", required=True)
    parser.add_argument("--reference_out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the 2 cores are shared with other test processes; 2 threads oversubscribe them
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, config)
    losses = train(model, tokenizer, args.steps, lr=3e-3)
    model.save_pretrained(args.adapter_out)
    tokenizer.save_pretrained(args.adapter_out)  # the chat template travels with the adapter
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    outputs = []
    with torch.inference_mode():
        for question in PROMPTS:
            prompt = ids(tokenizer, conversation(question), True)
            out = model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                repetition_penalty=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
            outputs.append(
                {
                    "prompt": question,
                    "prompt_ids": prompt,
                    "ids": out[0, len(prompt) :].tolist(),
                    "text": tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True),
                }
            )
    Path(args.reference_out).write_text(
        json.dumps(
            {
                "losses": losses,
                "train_s": train_s,
                "generate_s": time.perf_counter() - t0,
                "eos_token_id": tokenizer.eos_token_id,
                "new_tokens": NEW_TOKENS,
                "outputs": outputs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
