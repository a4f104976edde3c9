"""What to export: find the adapter and its base (local folders or the Hub), check an adapter for
the LoRA-GGUF route, and merge a LoRA into its base in 16-bit as a plain HF folder."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from chat_runtime.spec import base_of_adapter

from .errors import ExportError

log = logging.getLogger(__name__)

# What the converters read from a model repo; weights in other formats are not needed.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]
MERGE_DTYPES = ("float16", "bfloat16", "float32")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def local_folder(source: str, what: str, fix: str) -> Path:
    """`source` as a local folder: itself, or a Hub snapshot. ExportError says what to do otherwise.

    `what` names it in messages, with `{source}` where the id goes ("the model {source}")."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if _looks_like_path(source):
        raise ExportError(f"{what.format(source=repr(source))} can't be found: there is no such folder. {fix}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=MODEL_FILES))
    except Exception as err:  # offline, private, gated, wrong id: name it without echoing headers
        reason = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
            if str(err).strip()
            else type(err).__name__
        )
        raise ExportError(
            f"{what.format(source=repr(source))} can't be found: not a local folder, and the Hub did not give it "
            f"({reason}). {fix}"
        ) from None


def resolve_adapter(adapter: str, model: str | None) -> tuple[Path, Path, str]:
    """(adapter folder, base folder, base id) for an adapter; the base comes from adapter_config.json
    unless `model` overrides it."""
    adapter_dir = local_folder(
        adapter, "the adapter {source}", "Check the id or path, or log in for a private repo (HF_TOKEN)."
    )
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(
            f"{adapter} has no adapter_config.json: pass a LoRA adapter folder to --adapter, or a full model to --model"
        )
    check_mergeable(adapter_dir)
    try:
        base = model or base_of_adapter(str(adapter_dir))
    except ValueError as err:
        raise ExportError(str(err)) from None
    fix = (
        f"Download the base (`hf download {base} --local-dir DIR`) and pass --model DIR, or fix "
        f"base_model_name_or_path in {adapter_dir / 'adapter_config.json'}."
    )
    base_dir = local_folder(base, f"the base model {{source}} of adapter {adapter}", fix)
    if not (base_dir / "config.json").is_file():
        raise ExportError(
            f"the base model folder {base_dir} has no config.json: is it a Hugging Face model folder? {fix}"
        )
    return adapter_dir, base_dir, base


# peft adapter kinds with no GGUF form, and why (adapter_config.json's peft_type)
NO_GGUF_FORM = {
    "PREFIX_TUNING": "a prefix-tuning adapter: its trained key/value vectors sit in front of every attention "
    "layer, outside the weights",
    "P_TUNING": "a p-tuning adapter: its virtual tokens come from a prompt encoder placed before the input "
    "embeddings, outside the weights",
    "PROMPT_TUNING": "a prompt-tuning adapter: its virtual tokens sit before the input embeddings, outside the weights",
}


def check_mergeable(adapter_dir: Path) -> None:
    """Refuse, before any work, an adapter that cannot be merged into its base's weights."""
    kind = json.loads((adapter_dir / "adapter_config.json").read_text()).get("peft_type", "LORA")
    if kind in NO_GGUF_FORM:
        raise ExportError(
            f"{adapter_dir.name} has no GGUF form (and no merged one): it is {NO_GGUF_FORM[kind]}, which "
            "neither llama.cpp nor a merge can hold. Serve it with transformers (FINCH_ADAPTER=<the adapter> "
            "python chatbot_app/app.py), or train with --finetuning lora or full for llama.cpp."
        )


def lora_gguf_problems(adapter_dir: Path) -> list[str]:
    """Why llama.cpp's LoRA GGUF cannot hold this adapter (empty when it can).

    llama.cpp applies only low-rank A/B pairs scaled by alpha/r: full copies of modules (PEFT's
    modules_to_save, trained tokens), LoRA on the embeddings or the output head (llama.cpp#11554),
    DoRA and rsLoRA scaling have no place in a LoRA GGUF. The merged export handles all of them.
    """
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems = []
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    on_embeddings = sorted({m for t in targets for m in ("embed_tokens", "lm_head") if re.search(m, t)})
    saved = list(config.get("modules_to_save") or [])
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            names = list(f.keys())
        on_embeddings = sorted(
            set(on_embeddings) | {m for n in names for m in ("embed_tokens", "lm_head") if f".{m}." in n}
        )
    if on_embeddings:
        problems.append(
            f"it trains {' and '.join(on_embeddings)}, which llama.cpp's LoRA GGUF can't apply (llama.cpp#11554)"
        )
    if saved:
        problems.append(f"it saves full copies of {', '.join(saved)} (modules_to_save)")
    if config.get("trainable_token_indices"):
        problems.append("it trains token embeddings (trainable_token_indices)")
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter")
    if config.get("use_rslora"):
        problems.append("it uses rsLoRA scaling (alpha/sqrt(r)); llama.cpp scales by alpha/r")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("it has per-module ranks or alphas (rank_pattern/alpha_pattern)")
    return problems


def check_lora_gguf(adapter_dir: Path) -> None:
    """Refuse the LoRA-GGUF route, before any work, for an adapter llama.cpp can't apply."""
    problems = lora_gguf_problems(adapter_dir)
    if problems:
        raise ExportError(
            f"--lora_gguf can't export {adapter_dir.name}: {'; '.join(problems)}. Drop --lora_gguf: the merged "
            "GGUF files carry the whole fine-tune."
        )


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype_name: str = "float16") -> Path:
    """Merge the LoRA into its base (peft `merge_and_unload`) and save a plain HF folder.

    The base is loaded in `dtype_name` (16-bit by default: half the memory of fp32, and float16
    is what the GGUF's f16 holds, so the merged weights are rounded once). The tokenizer and
    chat template come from the adapter folder when it has them (that is what training used),
    else from the base.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype_name not in MERGE_DTYPES:
        raise ExportError(f"unknown merge dtype {dtype_name!r}: choose from {', '.join(MERGE_DTYPES)}")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer(adapter_dir) else base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype_name), use_safetensors=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # Tokens added during fine-tuning: the adapter's embeddings are sized for the new vocabulary.
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _write_added_tokens_decoder(tokenizer, out_dir)
    # llama.cpp's converter reads a SentencePiece vocabulary (Gemma, Phi-3) only from tokenizer.model,
    # which a fast tokenizer cannot always write back: take the one the model came with.
    for source in (adapter_dir, base_dir):
        if (source / "tokenizer.model").is_file() and not (out_dir / "tokenizer.model").is_file():
            shutil.copyfile(source / "tokenizer.model", out_dir / "tokenizer.model")
    if not tokenizer.chat_template:
        log.warning("%s has no chat template: the GGUF will carry none and chat apps will refuse it", out_dir.name)
    return out_dir


def _write_added_tokens_decoder(tokenizer, folder: Path) -> None:
    """Put the added tokens (control tokens such as Gemma's <end_of_turn>) into tokenizer_config.json
    as transformers 4 did: transformers 5 keeps them in tokenizer.json only, and llama.cpp's converter
    reads a SentencePiece model's added tokens from tokenizer_config.json, else they become text."""
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("added_tokens_decoder"):
        return
    config["added_tokens_decoder"] = {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "rstrip": token.rstrip,
            "normalized": token.normalized,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
