"""The same token ids, about 3x faster per core, for tokenizers made from a tiktoken vocabulary.

Tokenizing is most of data preparation (390k Kannada rows: docs/BENCHMARKS.md, item 6). Llama 3's
tokenizer was released as a tiktoken vocabulary, and tiktoken (OpenAI's BPE library, the one Meta's
reference code uses) encodes it about three times faster per core than the Rust `tokenizers` BPE.
It is used only where it gives exactly the tokenizer's ids, which this module proves rule by rule:

- the model is a plain byte-level BPE: no normalizer, dropout, unknown token, byte fallback or
  subword affixes, and a whole pre-token that is in the vocabulary is taken as one token
  (`ignore_merges`, as tiktoken does);
- the pre-tokenizer is one regex (GPT-2's, or a `Split` regex before a regex-less `ByteLevel`),
  which tiktoken applies the same way;
- the merges are exactly the pairs whose concatenation is a token, ranked in token-id order. Then
  "merge the pair with the lowest merge rank" (tokenizers) and "merge the pair whose result has the
  lowest rank" (tiktoken) are the same algorithm. Vocabularies converted from tiktoken (Llama 3)
  have this; vocabularies trained with `tokenizers` (SmolLM2) do not;
- added tokens match as plain strings (no strip or single-word rules), so the text can be cut at
  them first, as `tokenizers` does;
- and, as a last check, the ids equal the tokenizer's on probe texts (scripts, digits, whitespace,
  code) and on the caller's own sample.

Anything else keeps the Rust tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import Iterable

log = logging.getLogger(__name__)

# GPT-2's pre-tokenizer regex, which tokenizers' ByteLevel(use_regex=True) applies.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Texts where byte-level tokenizers tend to differ: scripts, digits, whitespace runs, contractions, code.
PROBES = [
    "Hello, world! I'm here; you're there. WE'LL SEE. It's 3:45pm on 2024-07-26, costs $1,234.56.",
    "  leading spaces\n\n\ttabs\r\nwindows lines   trailing   \n \n\n",
    "def f(x):\n    return x**2  # square\n\n\nprint(f(12345678901))",
    "ನಮಸ್ಕಾರ, ನೀವು ಹೇಗಿದ್ದೀರಿ? ಕನ್ನಡ ಭಾಷೆ ೧೨೩೪೫",
    "नमस्ते दुनिया। 你好，世界！こんにちは。Привет, мир! مرحبا بالعالم",
    "emoji 😀👍🏽 and accents: café naïve Ærøskøbing ß ﬁ",
    '<tag attr="v">x</tag> {"k": [1, 2.5e-3, null]} a--b__c...d!!!?',
    "\u200b zero width, \u00a0 no-break space, ‘quotes’ “double” — dash … ellipsis",
]


class TiktokenBPE:
    """Encodes texts as the tokenizer it was built from does with add_special_tokens=False: the text
    is cut at added tokens (each becomes its id) and the rest goes through tiktoken's BPE."""

    def __init__(self, encoding, added: dict[str, int]):
        self.encoding = encoding
        self.added = added
        # Longest first, so that at any position the longest added token wins, as in tokenizers.
        alternatives = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        self.cut = re.compile(f"({alternatives})") if added else None

    def encode(self, text: str) -> list[int]:
        if self.cut is None:
            return self.encoding.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(self.cut.split(text)):
            if i % 2:  # split() puts the matched added tokens at odd positions
                ids.append(self.added[piece])
            elif piece:
                ids += self.encoding.encode_ordinary(piece)
        return ids

    def __call__(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character that stands for each byte -> the byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _pattern(pre: dict | None) -> str | None:
    """The one regex the pre-tokenizer applies, or None if it does more than that."""
    if not pre:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers", [])) != 2:
        return None
    split, byte_level = pre["pretokenizers"]
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space")
    ):
        return None
    pattern = split.get("pattern", {})
    return pattern.get("Regex") if "Regex" in pattern else re.escape(pattern.get("String", "")) or None


def _why_not(spec: dict) -> str | None:
    """Why tiktoken cannot reproduce this tokenizer.json, or None if its structure allows it."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"a {model.get('type')} model, not BPE"
    if spec.get("normalizer") or model.get("dropout") or model.get("unk_token") or model.get("byte_fallback"):
        return "a normalizer, dropout, unknown token or byte fallback"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "subword prefixes or suffixes"
    if not model.get("ignore_merges"):
        return "whole words in the vocabulary are still split by merges (ignore_merges is off)"
    if (spec.get("decoder") or {}).get("type") != "ByteLevel" or _pattern(spec.get("pre_tokenizer")) is None:
        return "not a byte-level BPE with a single pre-tokenizer regex"
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in spec.get("added_tokens", [])):
        return "added tokens with strip or single-word rules"
    return None


def _ranks(model: dict, added: dict[str, int]) -> dict[bytes, int] | None:
    """Token bytes -> id, if the merges are exactly the token-forming pairs in id order; else None."""
    decode = _byte_decoder()
    vocab = {token: i for token, i in model["vocab"].items() if token not in added}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    results = [vocab.get(a + b, -1) for a, b in merges]
    if -1 in results or any(later < earlier for earlier, later in zip(results, results[1:])):
        return None
    pairs = {(t[:i], t[i:]) for t in vocab for i in range(1, len(t)) if t[:i] in vocab and t[i:] in vocab}
    if pairs != set(merges):
        return None
    try:
        ranks = {bytes(decode[c] for c in token): i for token, i in vocab.items()}
    except KeyError:  # a character outside the byte-level alphabet
        return None
    return ranks if len(ranks) == len(vocab) else None


def _matches(encoder: TiktokenBPE, tokenizer, texts: list[str]) -> bool:
    reference = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return all(ours == theirs.ids for ours, theirs in zip(encoder(texts), reference))


def plain_backend(tokenizer):
    """The tokenizer's Rust `tokenizers.Tokenizer`, if it has one and no truncation or padding set
    (which transformers' own call must then handle); else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    return None if backend is None or backend.truncation or backend.padding else backend


def _build(tokenizer) -> TiktokenBPE | None:
    backend = plain_backend(tokenizer)
    if backend is None:
        return None
    try:
        import tiktoken
    except ImportError:
        log.info("tokenizing with the Rust tokenizer (install tiktoken for faster data preparation)")
        return None
    spec = json.loads(backend.to_str())
    reason = _why_not(spec)
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks = None if reason else _ranks(spec["model"], added)
    if ranks is None:
        log.info(
            "tokenizing with the Rust tokenizer: tiktoken cannot reproduce this one (%s)",
            reason or "its merges are not the vocabulary's own pairs in id order",
        )
        return None
    try:
        encoding = tiktoken.Encoding(
            "finch", pat_str=_pattern(spec["pre_tokenizer"]), mergeable_ranks=ranks, special_tokens={}
        )
        encoder = TiktokenBPE(encoding, added)
        same = _matches(encoder, tokenizer, PROBES + ["".join(added)[:2000]])
    except Exception as err:  # e.g. a regex tiktoken's engine does not accept
        log.info("tokenizing with the Rust tokenizer: tiktoken refused the vocabulary (%s)", err)
        return None
    if not same:
        log.warning("tokenizing with the Rust tokenizer: tiktoken's ids differed on a probe text")
        return None
    return encoder


# tokenizer -> (its size, its encoder or None): building one reads the whole vocabulary (about 2 s
# for Llama 3's), and training asks twice (train and eval sets). The size notices added tokens.
_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def exact_encoder(tokenizer, sample: Iterable[str] = ()) -> TiktokenBPE | None:
    """A tiktoken encoder giving exactly `tokenizer`'s ids (without special tokens added), checked
    also on `sample`; or None (and the reason, logged) where that cannot be shown."""
    size, encoder = _BUILT.get(tokenizer, (None, None))
    if size != len(tokenizer):
        encoder = _build(tokenizer)
        _BUILT[tokenizer] = (len(tokenizer), encoder)
    sample = list(sample)
    if encoder is not None and sample and not _matches(encoder, tokenizer, sample):
        log.warning("tokenizing with the Rust tokenizer: tiktoken's ids differed on this data")
        return None
    if encoder is not None:
        log.info("tokenizing with tiktoken (the same ids as the tokenizer, checked)")
    return encoder
