"""transformers (+ peft adapter) engine: the GPU Space's engine, and a CPU fallback.

Dtype by device: fp32 on CPU; on CUDA bf16 only where the hardware has it (compute capability 8+),
else fp16 (a T4 reports bf16 support through emulation but runs it slowly and badly); optional
4-bit NF4 through bitsandbytes with fp16 compute on a T4.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

from .. import families, limits
from ..params import GenerationParams
from ..precision import bnb_config, pick_dtype_name
from ..spec import ModelSpec, require_safetensors
from ..templating import Message, encode, segments
from ..zerogpu import gpu_task, on_zero_gpu, prepare

# ZeroGPU's GPUs (A100 / H200 slices) run bf16; none is attached at start-up to ask.
ZERO_GPU_CAPABILITY = (8, 0)

log = logging.getLogger(__name__)


class TransformersEngine:
    """Base model (+ LoRA adapter through peft) generating with `model.generate` in a worker thread."""

    name = "transformers"
    max_concurrent = 1

    def __init__(self, spec: ModelSpec):
        prepare()  # on ZeroGPU, `spaces` before torch's CUDA
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            capability = ZERO_GPU_CAPABILITY if on_zero_gpu() else torch.cuda.get_device_capability()
        else:
            capability = None
        dtype_name = pick_dtype_name(self.device, capability)
        if spec.load_in_4bit and self.device != "cuda":
            raise ValueError("4-bit loading (FINCH_LOAD_IN_4BIT) needs a CUDA GPU; unset it to run on CPU")
        require_safetensors(spec.base, "the base model")
        if spec.adapter:
            require_safetensors(spec.adapter, "the adapter", hub_file="adapter_model.safetensors")
        kwargs = dict(dtype=getattr(torch, dtype_name), use_safetensors=True, trust_remote_code=spec.trust_remote_code)
        if spec.load_in_4bit:
            kwargs.update(quantization_config=bnb_config(dtype_name), device_map={"": 0})
        log.info("loading %s (%s, %s)", spec.base, self.device, "4-bit" if spec.load_in_4bit else dtype_name)
        try:
            model = AutoModelForCausalLM.from_pretrained(spec.base, **kwargs)
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise ValueError(
                f"{spec.base} needs its own Python code to load, and Finch runs a model repo's code only "
                "when asked. Read that code; if you trust it, set FINCH_TRUST_REMOTE_CODE=1."
            ) from None
        # The adapter folder carries the tokenizer and chat template it was trained with.
        tokenizer_source = spec.adapter if spec.adapter and _has_tokenizer(spec.adapter) else spec.base
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=spec.trust_remote_code)
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter)
        if not spec.load_in_4bit:
            model = model.to(self.device)
        self.model = model.eval()
        self.generation_config = model.generation_config
        self.system_role = families.system_role(self.tokenizer.chat_template)
        self.special_texts = frozenset(t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special)
        context = getattr(model.config, "max_position_embeddings", None) or limits.DEFAULT_CONTEXT_CAP
        self.context_tokens = limits.CONTEXT_TOKENS or min(context, limits.DEFAULT_CONTEXT_CAP)
        quant = "4-bit" if spec.load_in_4bit else dtype_name
        self.label = f"{spec.label} · transformers · {self.device} {quant}"
        self._grammar_compiler = None  # xgrammar's, made at the first constrained reply
        # On ZeroGPU a reply's GPU work runs under @spaces.GPU, which streams the pieces back.
        self.stream = gpu_task(self.stream)

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids by the tokenizer's chat template (specials are in the text, none added)."""
        parts = segments(
            self.tokenizer.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.tokenizer.special_tokens_map,
        )
        return encode(parts, lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"])[0]

    def _logits_processors(self, gbnf: str | None) -> dict:
        """generate() arguments that hold the reply to a GBNF grammar, through xgrammar (which reads
        llama.cpp's GBNF as is, so one grammar serves every engine); {} for free text."""
        if gbnf is None:
            return {}
        import xgrammar
        import xgrammar.contrib.hf
        from transformers import LogitsProcessorList

        if self._grammar_compiler is None:  # the tokenizer's token table, built once (~1 s)
            info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._grammar_compiler = xgrammar.GrammarCompiler(info)  # caches each compiled grammar
        compiled = self._grammar_compiler.compile_grammar(gbnf)
        # One processor per generate() call: it holds the matcher's state.
        return {"logits_processor": LogitsProcessorList([xgrammar.contrib.hf.LogitsProcessor(compiled)])}

    def stream(self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event) -> Iterator[str]:
        """Run `generate` in a thread and yield decoded text as it arrives; `cancel` stops it."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # checked after every token
                return cancel.is_set()

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = (
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            if params.greedy
            else dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        )
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.generation_config.eos_token_id
        )
        constrained = self._logits_processors(params.grammar)
        kwargs = dict(
            input_ids=torch.tensor([prompt_ids], device=self.model.device),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=self.model.device),
            max_new_tokens=params.max_new_tokens,
            repetition_penalty=params.repetition_penalty,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            pad_token_id=pad,
            **constrained,
            **sampling,
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as err:  # surfaced in the consumer's thread below
                errors.append(err)
                streamer.end()

        worker = threading.Thread(target=run, name="finch-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if cancel.is_set():
                    break
                if piece:
                    yield piece
        finally:
            cancel.set()
            worker.join()
        if errors:
            raise errors[0]


def _has_tokenizer(source: str) -> bool:
    from pathlib import Path

    path = Path(source)
    if path.is_dir():
        return (path / "tokenizer_config.json").is_file()
    try:
        from huggingface_hub import file_exists

        return file_exists(source, "tokenizer_config.json")
    except Exception:
        return False
