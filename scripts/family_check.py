"""Prove one model family end to end, offline, on a tiny random stand-in of it (its architecture
class, real tokenizer and real chat template from llama.cpp's cached sources; see finetune.standin):
train.py for a few real steps, export to GGUF (f16 + Q8_0) with llama.cpp's converter, decode
with llama.cpp, and check that the prompt ids the transformers engine, the llama.cpp engine and
llama.cpp's own rendering of the GGUF's template send all equal the ids training used.

    .venv/bin/python scripts/family_check.py qwen2.5 /tmp/family-qwen2.5
    .venv/bin/python scripts/family_check.py all /tmp/families      # every family, one process

FAMILY is one of smollm2, llama3, qwen2.5, qwen3, gemma2, phi3.5, mistral, smollm3, a comma-separated
list of them, or `all`. Writes OUTDIR/report.json (several families: OUTDIR/FAMILY/report.json):
family, messages (a two-turn conversation with a system prompt), train_ids (the ids training used
for it), gguf (the exported file) and checks (name, passed, detail). Training runs in this process
through Finch's Python API (`finetune.train`, the stages train.py runs), so the libraries load once
for every family. Exit code 0 when every check passed, 1 when one failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]
TRAIN_ARGS = [
    "--dataset",
    str(ROOT / "training" / "data" / "sample_sharegpt.jsonl"),
    "--max_rows",
    "4",
    "--max_steps",
    "2",
    "--max_seq_length",
    "128",
    # Two real steps of two rows each: the stand-ins' 128k-152k vocabularies make every row's
    # backward pass the cost, and the checks need steps taken, not rows seen.
    "--per_device_train_batch_size",
    "2",
    "--gradient_accumulation_steps",
    "1",
    "--eval_fraction",
    "0",
    "--logging_steps",
    "1",
    "--save_steps",
    "1000",
    "--verify",
    "false",
    "--sample_max_new_tokens",
    "2",
    "--finetuning",
    "lora",
    "--optim",
    "adamw_torch",
    "--gradient_checkpointing",
    "false",
    "--precision",
    "fp32",
]
QUANTS = ["f16", "q8_0"]


class Checks:
    """Named pass/fail results, in order."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, name: str, passed: bool, detail: str = "") -> bool:
        self.items.append({"name": name, "passed": bool(passed), "detail": detail})
        logging.info("%s %s %s", "PASS" if passed else "FAIL", name, detail)
        return passed


def train(family_name: str, model_dir: Path, run_dir: Path) -> Path:
    """train.py's stages on the stand-in for two real optimizer steps, in this process; the adapter folder."""
    from chat_runtime.families import BY_NAME
    from finetune import config
    from finetune import train as run_training

    targets = list(BY_NAME[family_name].lora_target_modules)
    args = ["--model", str(model_dir), "--output_dir", str(run_dir), "--overwrite", "true"]
    return run_training(config.parse([*args, "--lora_target_modules", *targets, *TRAIN_ARGS]))


def train_ids(tokenizer) -> list[int]:
    """The ids training uses for MESSAGES: training's own batch tokenizer on the saved tokenizer."""
    from finetune import masking

    row = masking._tokenize_batch(
        {"messages": [MESSAGES]},
        tokenizer.chat_template,
        tokenizer.special_tokens_map,
        masking.RustBatch(tokenizer),
        None,
    )
    if row["bad_reason"][0]:
        raise RuntimeError(f"training refused the conversation: {row['bad_reason'][0]}")
    return row["input_ids"][0]


def llamacpp_own_prompt(engine, messages) -> list[int]:
    """llama.cpp's own rendering of the GGUF's template (llama-cpp-python's Jinja formatter), tokenized by llama.cpp."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        engine.template,
        eos_token=engine.special_tokens["eos_token"],
        bos_token=engine.special_tokens["bos_token"],
        add_generation_prompt=True,
    )
    text = formatter(messages=messages).prompt
    return engine.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def check(family_name: str, out: Path) -> dict:
    from transformers import AutoTokenizer

    from chat_runtime import ModelSpec
    from chat_runtime.embedded import cache_dir
    from chat_runtime.engines.llamacpp_engine import LlamaCppEngine
    from chat_runtime.engines.transformers_engine import TransformersEngine
    from chat_runtime.families import BY_NAME, fold_system
    from finetune import standin
    from gguf_export.pipeline import run_export

    family, checks = BY_NAME[family_name], Checks()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        standin.build(family_name, model_dir)
    adapter = train(family_name, model_dir, out / "run")
    metrics = (
        json.loads((out / "run" / "adapter" / "metrics.json").read_text())
        if (out / "run" / "adapter" / "metrics.json").is_file()
        else {}
    )
    checks.add(
        "trained",
        metrics.get("global_step") == 2,
        f"steps {metrics.get('global_step')}, loss {metrics.get('final_train_loss')}",
    )
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = train_ids(tok)
    eot = tok.convert_tokens_to_ids(family.end_of_turn)
    checks.add(
        "end_of_turn_trained_once_per_reply",
        ids.count(eot) >= 2 and tok.pad_token != family.end_of_turn,
        f"{family.end_of_turn}={eot}, pad {tok.pad_token}",
    )
    prompt_messages = fold_system(MESSAGES[:-1], family.system_role)

    hf = TransformersEngine(ModelSpec(adapter=str(adapter), base=str(model_dir)))
    hf_prompt = hf.encode_chat(fold_system(MESSAGES[:-1], hf.system_role))
    checks.add("transformers_prompt_equals_training", ids[: len(hf_prompt)] == hf_prompt, f"{len(hf_prompt)} ids")
    del hf

    result = run_export(
        adapter=str(adapter),
        model=str(model_dir),
        output_dir=out / "gguf",
        name=family_name,
        quants=QUANTS,
        cache=cache_dir(),
    )
    files = {a.kind: a.path for a in result.artifacts}
    gguf = files.get("q8_0") or next(iter(files.values()))
    checks.add("exported", set(QUANTS) <= set(files), ", ".join(sorted(files)))
    engine = LlamaCppEngine(ModelSpec(gguf=str(gguf)))
    checks.add("gguf_carries_training_template", engine.template == tok.chat_template)
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(engine.llm.model)
    gguf_eot = engine.llm.tokenize(family.end_of_turn.encode(), add_bos=False, special=True)
    checks.add(
        "gguf_stops_on_end_of_turn",
        len(gguf_eot) == 1 and llama_cpp.llama_vocab_is_eog(vocab, gguf_eot[0]),
        f"{family.end_of_turn} -> {gguf_eot}",
    )
    cpp_prompt = engine.encode_chat(fold_system(MESSAGES[:-1], engine.system_role))
    checks.add("llamacpp_prompt_equals_training", ids[: len(cpp_prompt)] == cpp_prompt, f"{len(cpp_prompt)} ids")
    own = llamacpp_own_prompt(engine, prompt_messages)
    checks.add(
        "llamacpp_own_template_rendering_equals_training",
        own == ids[: len(own)] and own == cpp_prompt,
        f"{len(own)} ids",
    )
    # Random weights may pick the end-of-turn token first: ending there is a decode too.
    done = engine.llm.create_completion(prompt=cpp_prompt, max_tokens=8, temperature=0)["choices"][0]
    checks.add(
        "llamacpp_decodes",
        done["finish_reason"] in ("stop", "length"),
        f"{done['finish_reason']}: {done['text'][:40]!r}",
    )
    engine.llm.close()
    return {"family": family_name, "messages": MESSAGES, "train_ids": ids, "gguf": str(gguf), "checks": checks.items}


def main(argv: list[str] | None = None) -> int:
    from finetune.standin import FAMILY_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", help=f"one of {', '.join(FAMILY_NAMES)}, a comma-separated list, or all")
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    names = list(FAMILY_NAMES) if args.family == "all" else args.family.split(",")
    unknown = [n for n in names if n not in FAMILY_NAMES]
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}: choose from {', '.join(FAMILY_NAMES)}")
    failed_any = False
    for name in names:
        out = args.outdir if len(names) == 1 else args.outdir / name
        try:
            report = check(name, out)
        except Exception as err:  # one family's failure is its report; the others still run
            logging.exception("%s failed", name)
            report = {"family": name, "checks": [{"name": "ran", "passed": False, "detail": repr(err)}]}
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        os.replace(tmp, out / "report.json")
        failed = [c["name"] for c in report["checks"] if not c["passed"]]
        failed_any |= bool(failed)
        print(
            f"{name}: {len(report['checks']) - len(failed)}/{len(report['checks'])} checks passed"
            + (f"; failed: {', '.join(failed)}" if failed else ""),
            flush=True,
        )
    return 1 if failed_any else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sys.exit(main())
