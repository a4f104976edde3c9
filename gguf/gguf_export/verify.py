"""Fidelity: does a fine-tune answer the same after every hop on its way to users?

The same fixed prompts run greedily through each hop:
  peft      base + adapter, unmerged: the reference (what training evaluated), in fp32 on a CPU
            and in the GPU's compute dtype on a GPU (bf16, or fp16 on a T4: a 3B model's 6.4 GB
            instead of fp32's 12.9 GB, so it fits a 16 GB card beside the trained model)
  merged    the adapter merged into its base in 16-bit (what the converter reads)
  gguf-*    the GGUF files on llama.cpp, prompted through the runtime's own llama.cpp engine
and each hop is compared with the one before it and with the reference: the share of prompts
whose first N tokens are identical (a reply that stops earlier counts its EOS as a token), and
whether every reply ended with EOS before the token limit (a model that never stops is the
classic pad == eos failure, DESIGN section 5).
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chat_runtime.precision import pick_dtype_name
from chat_runtime.spec import require_safetensors
from chat_runtime.templating import Message, encode, segments

from .errors import ExportError
from .merge import has_tokenizer, merge_adapter, resolve_adapter

log = logging.getLogger(__name__)

# Short, varied, and each answerable in a few sentences, so a healthy model stops well before the limit.
PROMPTS = (
    "What is the capital of France?",
    "Give me one tip for learning a new language.",
    "What is 12 + 30?",
    "Name three colors of the rainbow.",
    "Why is the sky blue? Answer in one sentence.",
    "Write a two-line poem about the sea.",
    "What should I pack for a beach trip?",
    "How do plants make their food?",
    "Translate 'good morning' into Spanish.",
    "ನಮಸ್ಕಾರ! ನೀವು ಹೇಗಿದ್ದೀರಿ?",
)
AGREE_TOKENS = 32  # tokens compared per prompt
# A greedy step whose two best logits are closer than this is a near tie: any rounding (a 16-bit
# merge, 8-bit weights) may flip it, and the reply then goes on from another, equally likely word.
NEAR_TIE = 0.5
MAX_NEW_TOKENS = 128  # a reply still going after this many tokens did not stop


@dataclass
class Hop:
    """The greedy replies of one hop."""

    name: str
    replies: list[list[int]]  # generated ids, EOS included when the reply stopped
    ended: list[bool]  # stopped with EOS before MAX_NEW_TOKENS
    texts: list[str]
    same_prompt: bool = True  # this hop's own prompt ids equal the reference's (no template drift)
    seconds: float = 0.0
    margins: list[list[float]] = field(default_factory=list)  # top-1 minus top-2 logit per step (transformers hops)


@dataclass
class Report:
    """All hops of one verification, and the comparison the cards and the tests read."""

    prompts: list[str]
    agree_tokens: int
    max_new_tokens: int
    hops: list[Hop] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # hop -> why it did not run

    def agreement(self, a: Hop, b: Hop) -> float:
        """Share of prompts whose first `agree_tokens` tokens are identical in both hops."""
        n = self.agree_tokens
        same = sum(x[:n] == y[:n] for x, y in zip(a.replies, b.replies))
        return same / len(self.prompts)

    def first_divergence(self, a: Hop, b: Hop, prompt: int) -> int | None:
        """Index of the first differing token within `agree_tokens`, or None when they agree."""
        x, y = a.replies[prompt][: self.agree_tokens], b.replies[prompt][: self.agree_tokens]
        return next(
            (i for i, (s, t) in enumerate(zip(x, y)) if s != t), None if len(x) == len(y) else min(len(x), len(y))
        )

    def agreement_but_near_ties(self, hop: Hop) -> float:
        """Share of prompts that agree with the reference, or part from it only where the reference
        itself hesitated (a near tie): what rounding can flip without any loss of the fine-tune."""
        reference = self.hops[0]
        count = 0
        for p in range(len(self.prompts)):
            k = self.first_divergence(hop, reference, p)
            margins = reference.margins[p] if reference.margins else []
            count += k is None or (k < len(margins) and margins[k] < NEAR_TIE)
        return count / len(self.prompts)

    def rows(self) -> list[dict]:
        """Per hop: agreement with the previous hop and with the reference, and the EOS rate."""
        rows = []
        for i, hop in enumerate(self.hops):
            rows.append(
                {
                    "hop": hop.name,
                    "vs_previous": self.agreement(hop, self.hops[i - 1]) if i else None,
                    "previous": self.hops[i - 1].name if i else None,
                    "vs_reference": self.agreement(hop, self.hops[0]) if i else None,
                    "vs_reference_but_near_ties": self.agreement_but_near_ties(hop) if i else None,
                    "ended_with_eos": sum(hop.ended) / len(hop.ended),
                    "same_prompt_ids": hop.same_prompt,
                    "seconds": round(hop.seconds, 1),
                }
            )
        return rows

    def hop(self, name: str) -> Hop:
        return next(h for h in self.hops if h.name == name)

    def to_json(self) -> dict:
        return {
            "prompts": self.prompts,
            "agree_tokens": self.agree_tokens,
            "max_new_tokens": self.max_new_tokens,
            "summary": self.rows(),
            "skipped": self.skipped,
            "hops": [asdict(h) for h in self.hops],
        }

    def table(self) -> str:
        """The report as a Markdown table (also readable in a terminal)."""
        pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
        lines = [
            f"| hop | first {self.agree_tokens} tokens agree with the previous hop | with {self.hops[0].name} "
            f"(reference) | with {self.hops[0].name}, or part at a near tie | replies ending with EOS (max {self.max_new_tokens} new) "
            "| same prompt ids | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows():
            prev = f"{pct(r['vs_previous'])} ({r['previous']})" if r["previous"] else "-"
            lines.append(
                f"| {r['hop']} | {prev} | {pct(r['vs_reference'])} | {pct(r['vs_reference_but_near_ties'])} "
                f"| {pct(r['ended_with_eos'])} "
                f"| {'yes' if r['same_prompt_ids'] else 'NO: template drift'} | {r['seconds']:.1f} |"
            )
        lines += [f"| {name} | skipped: {why} | | | | | |" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The model-card section."""
        return (
            f"## Fidelity (`python gguf/verify.py`)\n\n"
            f"{len(self.prompts)} fixed prompts, greedy, through every hop from training to llama.cpp. "
            f"Agreement is the share of prompts whose first {self.agree_tokens} tokens are identical. "
            f"Where a hop parts from the reference at a step whose two best tokens were within {NEAR_TIE} logits "
            "(a near tie), rounding picked the other of two equally likely words; the fourth column "
            "counts those as kept.\n\n" + self.table() + "\n"
        )


def conversations(prompts: Sequence[str]) -> list[list[Message]]:
    # No system prompt: the model's template adds its own default, as in the apps and the samples.
    return [[{"role": "user", "content": p}] for p in prompts]


def hf_prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """Prompt ids exactly as the runtime's transformers engine and training build them."""
    parts = segments(
        tokenizer.chat_template, messages, add_generation_prompt=True, special_tokens=tokenizer.special_tokens_map
    )
    return encode(parts, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])[0]


def greedy_batch(
    model, prompt_ids: list[list[int]], max_new_tokens: int, eos: set[int], pad: int | None
) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy replies to all prompts in one left-padded batch: (replies, margins). A reply ends at
    its first end token (kept); a margin is the top-1 minus top-2 logit of one step.

    One batch, because decoding a small model reads every weight once per token whatever the batch:
    on 2 CPU cores ten prompts take about what two take one by one, with the same tokens."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Margins(LogitsProcessor):  # the logits' top two per step, without keeping the logits
        def __init__(self):
            self.steps = []

        def __call__(self, input_ids, scores):
            top = scores.float().topk(2).values
            self.steps.append((top[:, 0] - top[:, 1]).tolist())
            return scores

    pad = pad if pad is not None else min(eos)
    width = max(map(len, prompt_ids))
    device = model.device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    margins = Margins()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=1.0,
            eos_token_id=sorted(eos),
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([margins]),
        )
    replies, row_margins = [], []
    for row, generated in enumerate(out[:, width:].tolist()):
        end = next((i + 1 for i, token in enumerate(generated) if token in eos), len(generated))
        replies.append(generated[:end])
        row_margins.append([round(step[row], 4) for step in margins.steps[:end]])
    return replies, row_margins


def reference_dtype() -> tuple[str, str]:
    """(device, dtype) of the transformers hops: fp32 on a CPU; on a GPU its compute dtype as training
    and serving pick it (bf16 from Ampere, fp16 on older cards such as a T4)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    capability = torch.cuda.get_device_capability() if device == "cuda" else None
    return device, pick_dtype_name(device, capability)


def transformers_hop(
    name: str, model_dir: Path, adapter_dir: Path | None, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int
) -> Hop:
    """Greedy replies of an HF model (+ adapter), in `reference_dtype()`."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    device, dtype = reference_dtype()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), use_safetensors=True)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model = model.to(device).eval()
    eos = eos_ids(tokenizer, model)
    replies, margins = greedy_batch(model, prompt_ids, max_new_tokens, eos, tokenizer.pad_token_id)
    ended = [bool(reply) and reply[-1] in eos for reply in replies]
    texts = [tokenizer.decode(reply, skip_special_tokens=True).strip() for reply in replies]
    del model
    gc.collect()
    return Hop(name, replies, ended, texts, seconds=time.perf_counter() - started, margins=margins)


def eos_ids(tokenizer, model) -> set[int]:
    """The ids that end a reply: the model's generation config's, and the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def gguf_hop(
    name: str, gguf: Path, messages: list[list[Message]], reference_ids: list[list[int]], max_new_tokens: int
) -> Hop:
    """Greedy replies of a GGUF through the runtime's llama.cpp engine (its template, its tokenizer)."""
    import llama_cpp

    from chat_runtime.engines import load_engine
    from chat_runtime.spec import ModelSpec

    started = time.perf_counter()
    engine = load_engine(ModelSpec(engine="llamacpp", gguf=str(gguf)))
    vocab = llama_cpp.llama_model_get_vocab(engine.llm.model)
    prompts = [engine.encode_chat(m) for m in messages]
    replies, ended, texts = [], [], []
    for ids in prompts:
        reply = []
        for token in engine.llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            reply.append(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token) or len(reply) >= max_new_tokens:
                break
        replies.append(reply)
        ended.append(bool(reply) and llama_cpp.llama_vocab_is_eog(vocab, reply[-1]))
        texts.append(
            engine.llm.detokenize([t for t in reply if not llama_cpp.llama_vocab_is_eog(vocab, t)])
            .decode("utf-8", errors="replace")
            .strip()
        )
    engine.llm.close()
    return Hop(name, replies, ended, texts, same_prompt=prompts == reference_ids, seconds=time.perf_counter() - started)


def verify_adapter(
    adapter: str | Path,
    ggufs: dict[str, Path] | None = None,
    *,
    model: str | None = None,
    quants: Sequence[str] = ("f16", "q8_0", "q4_k_m"),
    prompts: Sequence[str] = PROMPTS,
    agree_tokens: int = AGREE_TOKENS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    work_dir: Path | None = None,
    cache: Path | None = None,
    merged: Path | None = None,
) -> Report:
    """Run every hop for an adapter. `ggufs` (quant -> file) reuses an export's files ({}: no GGUF
    hop); without it the merged model is exported to `quants` in a scratch folder (removed
    afterwards). `merged`: a merged folder already written (export's --merged_dir) to check as the
    merged hop, instead of merging afresh."""
    from transformers import AutoTokenizer

    adapter_dir, base_dir, _ = resolve_adapter(str(adapter), model)
    try:  # pickled weights are refused before anything reads them, as in the export
        require_safetensors(str(base_dir), "the base model")
        require_safetensors(str(adapter_dir), "the adapter")
    except ValueError as err:
        raise ExportError(str(err)) from None
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer(adapter_dir) else base_dir)
    messages = conversations(prompts)
    prompt_ids = [hf_prompt_ids(tokenizer, m) for m in messages]
    report = Report(list(prompts), agree_tokens, max_new_tokens)
    scratch = Path(tempfile.mkdtemp(prefix=".finch-verify-", dir=work_dir))
    try:
        log.info("verify: base + adapter (peft, %s)", reference_dtype()[1])
        report.hops.append(transformers_hop("peft", base_dir, adapter_dir, tokenizer, prompt_ids, max_new_tokens))
        log.info("verify: merged model (16-bit merge)")
        merged = merged or merge_adapter(base_dir, adapter_dir, scratch / "merged", "float16")
        report.hops.append(transformers_hop("merged", merged, None, tokenizer, prompt_ids, max_new_tokens))
        ggufs = dict(ggufs) if ggufs is not None else _export(merged, scratch, list(quants), cache, report)
        _gguf_hops(report, ggufs, messages, prompt_ids)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def verify_model(
    model_dir: str | Path,
    ggufs: dict[str, Path] | None = None,
    *,
    quants: Sequence[str] = ("f16", "q8_0", "q4_k_m"),
    prompts: Sequence[str] = PROMPTS,
    agree_tokens: int = AGREE_TOKENS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    work_dir: Path | None = None,
    cache: Path | None = None,
) -> Report:
    """Every hop for a whole model (a full fine-tune): the model (the reference, in `reference_dtype()`), then its GGUF
    files on llama.cpp; no adapter, so no merge."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    try:
        require_safetensors(str(model_dir), "the model")
    except ValueError as err:
        raise ExportError(str(err)) from None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = conversations(prompts)
    prompt_ids = [hf_prompt_ids(tokenizer, m) for m in messages]
    report = Report(list(prompts), agree_tokens, max_new_tokens)
    scratch = Path(tempfile.mkdtemp(prefix=".finch-verify-", dir=work_dir))
    try:
        log.info("verify: the model (%s)", reference_dtype()[1])
        report.hops.append(transformers_hop("model", model_dir, None, tokenizer, prompt_ids, max_new_tokens))
        ggufs = dict(ggufs) if ggufs is not None else _export(model_dir, scratch, list(quants), cache, report)
        _gguf_hops(report, ggufs, messages, prompt_ids)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _gguf_hops(report: Report, ggufs: dict[str, Path], messages: list[list[Message]], prompt_ids) -> None:
    for quant, path in sorted(ggufs.items(), key=lambda kv: _QUANT_ORDER.index(kv[0])):
        log.info("verify: GGUF %s on llama.cpp", quant)
        report.hops.append(gguf_hop(f"gguf-{quant}", path, messages, prompt_ids, report.max_new_tokens))


_QUANT_ORDER = ["f16", "q8_0", "q5_k_m", "q4_k_m"]  # most to least precise: each hop is compared with the one before


def _export(merged: Path, scratch: Path, quants: list[str], cache: Path | None, report: Report) -> dict[str, Path]:
    """GGUF files of the merged folder, in `scratch`; a missing llama.cpp skips these hops, saying why."""
    from chat_runtime.embedded import cache_dir

    from .pipeline import run_export

    try:
        result = run_export(
            adapter=None,
            model=str(merged),
            output_dir=scratch / "gguf",
            name="verify",
            quants=quants,
            cache=cache or cache_dir(),
        )
    except (ExportError, ImportError) as err:
        for quant in quants:
            report.skipped[f"gguf-{quant}"] = str(err)
        return {}
    return {a.kind: a.path for a in result.artifacts}


def save(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
