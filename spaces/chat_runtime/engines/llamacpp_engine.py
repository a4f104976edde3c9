"""llama.cpp engine (llama-cpp-python): a GGUF file on CPU, the embedded default's engine.

The prompt is rendered from the GGUF's own `tokenizer.chat_template` by the shared templating
module and passed as token ids, so llama-cpp-python's chat-format guessing (which falls back to a
llama-2 format when a GGUF has no template) is never involved.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence

from .. import families, limits
from ..gguf_files import check_gguf_header, resolve_gguf
from ..params import DRY_ALLOWED_LENGTH, DRY_BASE, DRY_BREAKERS, DRY_LAST_N, GenerationParams
from ..spec import ModelSpec
from ..templating import Message, encode, render, segments
from .cpu_variants import load_cpu_variant

log = logging.getLogger(__name__)

# Prompts whose starting position is remembered (for an exact Retry); the oldest is forgotten first.
PROMPT_STARTS_KEPT = 256


class CheckedSampler:
    """llama-cpp-python's own chain (penalties, then greedy or top-p), with what the runtime asks for:

    - a grammar checked after sampling, as llama.cpp's own common sampler does it: sample from the
      logits as they are, keep the token when the grammar allows it, and only otherwise apply the
      grammar to the whole vocabulary and sample again. llama-cpp-python puts the grammar first in
      its chain, which tests every one of the vocabulary's tokens at every step: the storymaker's
      turns decoded at 0.57x the speed of free text that way. Greedy decoding picks the same token
      either way (the best token, if the grammar allows it, is the best allowed one). Greedy, a
      rejected token is followed by the next best ones, tested together in one pass of the grammar,
      before the whole vocabulary is: a story turn's grammar rejects about 1 token in 6.
    - llama.cpp's DRY ("don't repeat yourself") penalty, which llama-cpp-python binds but its Llama
      never uses: a token that would extend a repeat of what the prompt or the reply already holds
      is penalised, more the longer the repeat.
    """

    # The best tokens tested, greedy, after a rejection; only when none is allowed is the whole
    # vocabulary (about 10 ms for the embedded model's 49,152 tokens). Over 4 story turns the grammar
    # rejected 99 tokens; the best 32 held no allowed one 44 times, the best 4,096 9 times (mostly
    # where the grammar spells its "Choices:" line), in about 2 ms a pass.
    GREEDY_CHECKED = 4096

    def __init__(self, chain, llm, grammar, dry_multiplier: float, prompt: list[int], greedy: bool):
        import llama_cpp
        from llama_cpp._internals import LlamaTokenDataArray

        self.lib = llama_cpp  # kept: close() may run while the interpreter shuts down
        self.chain = chain
        self.greedy = greedy
        self.grammar = None
        if grammar is not None:
            self.grammar = llama_cpp.llama_sampler_init_grammar(
                llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
            )
        self.dry = None
        if dry_multiplier:
            breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode("utf-8") for b in DRY_BREAKERS))
            self.dry = llama_cpp.llama_sampler_init_dry(
                llm._model.vocab, dry_multiplier, DRY_BASE, DRY_ALLOWED_LENGTH, DRY_LAST_N, breakers, len(breakers)
            )
            for token in prompt:  # as llama.cpp's server does: the prompt is context for DRY
                llama_cpp.llama_sampler_accept(self.dry, token)
        self.n_vocab = llm.n_vocab()
        self.all = LlamaTokenDataArray(n_vocab=self.n_vocab)
        self.one = (llama_cpp.llama_token_data * 1)()
        self.one_array = llama_cpp.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)
        self.best = LlamaTokenDataArray(n_vocab=min(self.GREEDY_CHECKED, self.n_vocab))

    def _pick(self, logits, with_grammar: bool) -> int:
        self.all.copy_logits(logits)
        candidates = ctypes.byref(self.all.candidates)
        if self.dry is not None:
            self.lib.llama_sampler_apply(self.dry, candidates)
        if with_grammar:
            self.lib.llama_sampler_apply(self.grammar, candidates)
        self.lib.llama_sampler_apply(self.chain.sampler, candidates)
        return int(self.all.candidates_data.id[self.all.candidates.selected])

    def _allowed(self, token: int) -> bool:
        if self.grammar is None:
            return True
        self.one[0] = self.lib.llama_token_data(token, 1.0, 0.0)
        self.one_array.size, self.one_array.selected = 1, -1
        self.lib.llama_sampler_apply(self.grammar, ctypes.byref(self.one_array))
        return not math.isinf(self.one[0].logit)

    def _best_allowed(self) -> int | None:
        """Greedy, the token the grammar would leave best, without testing the whole vocabulary.

        After _pick the candidates hold the logits as the chain left them (DRY and penalties applied);
        the grammar then leaves the first allowed token in order of logit, ties to the lower id as
        llama.cpp's greedy sampler. The best GREEDY_CHECKED go through the grammar in that order, in
        one call. None when none of them is allowed, or when the one found ties with the last of
        them (a token left out could tie it with a lower id)."""
        import numpy as np

        data, best = self.all.candidates_data, self.best.candidates_data
        count = len(best)
        top = np.argpartition(data.logit, -count)[-count:]
        top = top[np.lexsort((data.id[top], -data.logit[top]))]
        best.id[:], best.logit[:], best.p[:] = data.id[top], data.logit[top], 0.0
        self.best.candidates.size, self.best.candidates.selected = count, -1
        self.lib.llama_sampler_apply(self.grammar, ctypes.byref(self.best.candidates))
        allowed = np.flatnonzero(~np.isinf(best.logit))
        if not allowed.size:
            return None
        first = top[allowed[0]]
        if count < self.n_vocab and data.logit[first] == data.logit[top[-1]]:
            return None
        return int(data.id[first])

    def sample(self, ctx, idx: int) -> int:
        """The next token (as llama-cpp-python's LlamaSampler.sample), accepted by every sampler."""
        import numpy as np

        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        token = self._pick(logits, with_grammar=False)
        if not self._allowed(token):
            best = self._best_allowed() if self.greedy else None
            token = best if best is not None else self._pick(logits, with_grammar=True)
        for sampler in (self.chain.sampler, self.grammar, self.dry):
            if sampler is not None:
                self.lib.llama_sampler_accept(sampler, token)
        return token

    def close(self) -> None:
        for name in ("grammar", "dry"):
            if getattr(self, name, None) is not None:
                self.lib.llama_sampler_free(getattr(self, name))
                setattr(self, name, None)
        self.chain.close()

    __del__ = close


def _llama_class():
    """llama-cpp-python's Llama, sampling through CheckedSampler when a reply needs a grammar or DRY."""
    from llama_cpp import Llama

    load_cpu_variant()  # a portable build's CPU code, before any model

    class CheckedLlama(Llama):
        dry_multiplier = 0.0  # set per reply by the engine, under its lock
        _prompt: list[int] = []

        def generate(self, tokens, *args, **kwargs):
            self._prompt = list(tokens)  # generate() is lazy: its sampler is made after this line
            return super().generate(tokens, *args, **kwargs)

        def _init_sampler(self, *args, grammar=None, **kwargs):
            chain = super()._init_sampler(*args, **kwargs)
            if grammar is None and not self.dry_multiplier:
                return chain
            greedy = kwargs.get("temp") == 0.0  # llama-cpp-python's chain ends in its greedy sampler then
            return CheckedSampler(chain, self, grammar, self.dry_multiplier, self._prompt, greedy)

    return CheckedLlama


class LlamaCppEngine:
    """One llama.cpp context; generations take turns on it (it is not thread-safe), each starting from
    the prefix of the conversation already in its KV cache."""

    name = "llamacpp"
    max_concurrent = 1  # one context: replies take turns on it

    def __init__(self, spec: ModelSpec):
        Llama = _llama_class()
        path = resolve_gguf(spec.gguf)
        check_gguf_header(path)
        lora = resolve_gguf(spec.gguf_lora) if spec.gguf_lora else None
        probe_ctx = limits.CONTEXT_TOKENS or limits.DEFAULT_CONTEXT_CAP
        try:
            self.llm = Llama(
                model_path=path,
                lora_path=lora,
                n_ctx=probe_ctx,
                # llama-cpp-python's default is half the cores (1 on a 2-core box); decode is fastest
                # with all of them here. FINCH_THREADS overrides.
                n_threads=int(os.environ.get("FINCH_THREADS", "0")) or len(os.sched_getaffinity(0)),
                verbose=False,
            )
        except ValueError as err:
            raise ValueError(f"llama.cpp could not load {path}: the file may be truncated or corrupt ({err})") from None
        meta = self.llm.metadata
        trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", probe_ctx))
        self.context_tokens = probe_ctx if limits.CONTEXT_TOKENS else min(probe_ctx, trained)
        self.template = self.llm.metadata.get("tokenizer.chat_template")
        self.special_tokens = {
            "bos_token": self._token_text(self.llm.token_bos()),
            "eos_token": self._token_text(self.llm.token_eos()),
        }
        self.special_texts = self._control_texts()
        self.system_role = families.system_role(self.template)
        self._lock = threading.Lock()
        self._starts: dict[int, int] = {}  # prompt -> the cache position its first evaluation started from
        self.label = f"{spec.label} · llama.cpp · CPU"
        # Refuse a template-less GGUF now rather than at the first message.
        render(
            self.template,
            [{"role": "user", "content": "hi"}],
            add_generation_prompt=True,
            special_tokens=self.special_tokens,
        )

    def _control_texts(self) -> frozenset[str]:
        """Text of every control token in the vocabulary (<|im_start|>, <|eot_id|>, ...)."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        return frozenset(
            self._token_text(t) for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_control(vocab, t)
        )

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids by the GGUF's chat template (specials are in the text, none added)."""
        parts = segments(
            self.template, messages, add_generation_prompt=add_generation_prompt, special_tokens=self.special_tokens
        )
        return encode(parts, lambda text: self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))[0]

    def _start_from_cache(self, prompt_ids: list[int]) -> None:
        """Keep the KV cache's prefix that this prompt shares with the last one evaluated, so a
        follow-up turn evaluates only what is new (the last reply and the new message), not the
        whole conversation again.

        A prompt seen before restarts from the same position as the first time, so its remaining
        tokens are evaluated in the same batches over the same cached prefix and temperature 0
        repeats exactly (Retry). llama-cpp-python's own reuse would, for a prompt cached whole,
        re-evaluate just its last token, alone, whose slightly different numerics can flip a greedy
        choice."""
        import numpy as np

        llm = self.llm
        upto = min(llm.n_tokens, len(prompt_ids))
        differ = np.flatnonzero(llm.input_ids[:upto] != np.asarray(prompt_ids[:upto], dtype=llm.input_ids.dtype))
        shared = int(differ[0]) if len(differ) else upto
        key = hash(tuple(prompt_ids))
        start = self._starts.pop(key, None)
        if start is None or start > shared:
            start = min(shared, len(prompt_ids) - 1)  # at least one token to evaluate: its logits come next
        self._starts[key] = start
        while len(self._starts) > PROMPT_STARTS_KEPT:
            self._starts.pop(next(iter(self._starts)))
        if start == 0:
            llm.reset()
        else:
            llm.n_tokens = start  # llama-cpp-python keeps this prefix and drops the rest of the KV cache

    @staticmethod
    def _grammar(gbnf: str | None):
        """llama.cpp's own GBNF grammar sampler for a constrained reply (None: free text)."""
        if gbnf is None:
            return None
        from llama_cpp import LlamaGrammar

        return LlamaGrammar.from_string(gbnf, verbose=False)

    def stream(self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event) -> Iterator[str]:
        """Yield text as llama.cpp decodes it; checks `cancel` between tokens."""
        with self._lock:
            self._start_from_cache(prompt_ids)
            self.llm.dry_multiplier = params.dry_multiplier
            chunks = self.llm.create_completion(
                grammar=self._grammar(params.grammar),
                prompt=prompt_ids,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,  # same sampler as the transformers engine: temperature + top-p only
                repeat_penalty=params.repetition_penalty,
                stream=True,
            )
            try:
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    text = chunk["choices"][0]["text"]
                    if text:
                        yield text
            finally:
                chunks.close()
