"""Server engine: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp's
llama-server, llama-cpp-python's `python -m llama_cpp.server`), streamed over HTTP.

The server applies the model's own chat template, so this engine sends messages, not token ids:
the template lives in one place (the served model), as it does for the local engines. Trimming
needs token counts before sending; they come from the server's tokenize endpoint when it has one
(see TOKENIZE_ROUTES) plus a fixed allowance for the template's markers, else from a UTF-8 byte
count, an upper bound for byte-level BPE tokenizers (trims early, never overflows).

httpx, not the `openai` package: Gradio already depends on it (nothing new in a Space), one client
covers the chat stream and the tokenize endpoints, closing a response drops the connection at once
(so the server stops generating), and it retries nothing unasked (openai's client retries twice by
default, which turns "the server is down" into a long wait).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .. import limits
from ..errors import ServerError
from ..params import DRY_ALLOWED_LENGTH, DRY_BASE, DRY_BREAKERS, DRY_LAST_N, GenerationParams
from ..spec import ModelSpec
from ..templating import Message

log = logging.getLogger(__name__)

# (path, body key for the text) of the tokenize endpoints these servers have; all answer with the
# token list (as {"tokens": [...]}, or TGI's bare list). The first that answers is used, and it
# also tells which server this is (see GRAMMAR_FIELDS).
TOKENIZE_ROUTES = (
    ("/extras/tokenize", "input"),  # llama-cpp-python's server
    ("/tokenize", "content"),  # llama.cpp's llama-server
    ("/tokenize", "prompt"),  # vLLM
    ("/tokenize", "inputs"),  # TGI
)
SERVER_FAMILIES = {
    ("/extras/tokenize", "input"): "llama.cpp",
    ("/tokenize", "content"): "llama.cpp",
    ("/tokenize", "prompt"): "vllm",
    ("/tokenize", "inputs"): "tgi",
}
# How each server takes a GBNF grammar in a chat-completions request (its structured output):
# llama.cpp's servers a `grammar` field; vLLM `structured_outputs.grammar` (since 0.10.2; its older
# `guided_grammar` was removed in 0.12). TGI's chat route constrains only to JSON (tools), not to a
# text grammar, and an unknown server may refuse fields it does not know: both get none, and the
# caller recovers the reply's structure from free text.
GRAMMAR_FIELDS = {
    "llama.cpp": lambda gbnf: {"grammar": gbnf},
    "vllm": lambda gbnf: {"structured_outputs": {"grammar": gbnf}},
}
# llama.cpp's DRY penalty as its server takes it; vLLM and TGI have none, and llama-cpp-python's
# `llama_cpp.server` ignores these fields.
DRY_FIELDS = {
    "llama.cpp": lambda multiplier: {
        "dry_multiplier": multiplier,
        "dry_base": DRY_BASE,
        "dry_allowed_length": DRY_ALLOWED_LENGTH,
        "dry_sequence_breakers": list(DRY_BREAKERS),
        "dry_penalty_last_n": DRY_LAST_N,
    },
}
# Tokens a chat template adds around each message (ChatML and Llama 3 add 5) and once per chat
# (a default system prompt or date header: SmolLM2's is ~20 tokens, Llama 3.2's ~25): generous.
MESSAGE_OVERHEAD_TOKENS = 8
CHAT_OVERHEAD_TOKENS = 48
# A server hides its vocabulary, so a user's text is kept from forging the control tokens of the
# common chat templates (ChatML, Llama 3, Gemma, Mistral, Phi-3).
CONTROL_TEXTS = frozenset(
    {
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "<eos>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
    }
)

# How a request on a kept-alive connection the server has closed fails (reset, or closed unanswered).
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# A stream that ends before its finish reason: what a server does with a prompt beyond its context.
EARLY_END = (
    "ended the reply early; the conversation may be longer than its context "
    "(set FINCH_CONTEXT_TOKENS to the server's). Try a shorter message."
)


@dataclass
class ChatPrompt:
    """What the server engine streams from: the messages (the server templates them) and their
    estimated token count, which `len()` gives, like the token ids of the local engines."""

    messages: list[Message]
    tokens: int

    def __len__(self) -> int:
        return self.tokens


def server_root(url: str) -> str:
    """The server's root URL: OpenAI clients take `.../v1`, the tokenize routes sit beside it."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ServerEngine:
    """Streams chat completions from a server; many may run at once (the server batches them)."""

    name = "server"
    max_concurrent = 1  # a Space sets FINCH_MAX_CONCURRENT to pass more through to its server

    def __init__(self, spec: ModelSpec):
        self.model = spec.server_model
        self.root = server_root(spec.server_url)
        self.host = urlsplit(spec.server_url).hostname  # for logs: no credentials, no path
        self._key = spec.server_api_key
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        timeout = httpx.Timeout(limits.SERVER_TIMEOUT_SECONDS, connect=min(10.0, limits.SERVER_TIMEOUT_SECONDS))
        self.client = httpx.Client(headers=headers, timeout=timeout)
        self.timeout = limits.SERVER_TIMEOUT_SECONDS
        # The server's own context is not in the OpenAI API: FINCH_CONTEXT_TOKENS says it (default 4096).
        self.context_tokens = limits.CONTEXT_TOKENS or limits.DEFAULT_CONTEXT_CAP
        self.special_texts = CONTROL_TEXTS
        self.system_role = spec.system_role
        self.label = f"{spec.label} · inference server"
        self._route: tuple[str, str] | None | bool = False  # False: not probed yet; None: no route
        self._count = functools.lru_cache(maxsize=4096)(self._count_text)
        # No request here: the app starts while the server is still down, and works once it is up.

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> ChatPrompt:
        """The messages and their estimated token count (content tokens + template allowance)."""
        tokens = CHAT_OVERHEAD_TOKENS + sum(MESSAGE_OVERHEAD_TOKENS + self._count(m["content"]) for m in messages)
        return ChatPrompt(list(messages), tokens)

    def stream(self, prompt: ChatPrompt, params: GenerationParams, cancel: threading.Event) -> Iterator[str]:
        """Send the request now (so a down server or an error status is raised before any text) and
        return the reply's pieces; closing them closes the connection, and the server stops."""
        return self._stream(self._body(prompt, params), cancel)

    def _body(self, prompt: ChatPrompt, params: GenerationParams) -> dict:
        """The chat completion request for a prompt and the user's settings."""
        body = {
            "model": self.model,
            "messages": prompt.messages,
            "stream": True,
            # The OpenAI API's own fields: temperature 0 is greedy on vLLM, TGI and llama.cpp.
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            # Not OpenAI fields (its frequency/presence penalties are additive, a different thing):
            # the multiplicative penalty the sliders mean is `repetition_penalty` on vLLM and TGI,
            # `repeat_penalty` on llama.cpp's servers; each ignores the other's name.
            "repetition_penalty": params.repetition_penalty,
            "repeat_penalty": params.repetition_penalty,
            # Same sampler as the local engines: temperature + top-p, no top-k (0 = off on
            # llama.cpp and vLLM; llama.cpp's default would be 40). At temperature 0, top-k 1: the
            # same greedy token, without llama.cpp sorting the whole vocabulary for top-p at every
            # token of every slot, one slot after another (4 users of a 128k-vocabulary model on 2 cores:
            # 34 tok/s together with the sort, 49 without).
            "top_k": 1 if params.temperature == 0 else 0,
        }
        if params.grammar is not None:
            body.update(self._grammar_fields(params.grammar))
        dry_fields = DRY_FIELDS.get(self._family()) if params.dry_multiplier else None
        if dry_fields:
            body.update(dry_fields(params.dry_multiplier))
        return body

    def _stream(self, body: dict, cancel: threading.Event) -> "_Pieces":
        """The reply's pieces for a request body, sent now."""
        try:
            return self._open_reply(body, cancel)
        except httpx.TransportError as err:
            # A server may close a kept-alive connection just after a failed reply while the next
            # request is already on it (llama-cpp-python's server does after a prompt beyond its
            # context, most often when busy): that reply is cut before any text. Nothing reached
            # the user, so it goes once more, on a fresh connection; a second cut is the answer.
            log.info("the inference server cut a reply before any text (%s): sending it once more", type(err).__name__)
        try:
            return self._open_reply(body, cancel)
        except httpx.TransportError as err:
            raise self._fail(f"{EARLY_END} Or try again ({type(err).__name__}).") from None

    def _open_reply(self, body: dict, cancel: threading.Event) -> "_Pieces":
        """The reply's pieces, its first piece already read; a cut before any text raises httpx's error."""
        return _Pieces(self._send("POST", "/v1/chat/completions", body, stream=True), cancel, self._fail)

    def _family(self) -> str | None:
        """Which kind of server this is ("llama.cpp", "vllm", "tgi"), from its tokenize route; None: unknown."""
        if self._route is False:
            self._route = self._find_route()
        return SERVER_FAMILIES.get(self._route)

    def _grammar_fields(self, gbnf: str) -> dict:
        """The request fields that make this server follow a GBNF grammar ({} when it has none)."""
        family = self._family()
        fields = GRAMMAR_FIELDS.get(family)
        if fields is None:
            log.info(
                "the inference server (%s) takes no text grammar on its chat route: the reply is free text",
                family or "unrecognised",
            )
            return {}
        return fields(gbnf)

    def _send(self, method: str, path: str, body: dict, stream: bool = False, probe: bool = False) -> httpx.Response:
        """One request; transport failures and error statuses become a ServerError (in a `probe`,
        a refusal other than auth is an answer: this server lacks the route)."""
        request = self.client.build_request(method, self.root + path, json=body)
        try:
            try:
                response = self.client.send(request, stream=stream)
            except STALE_CONNECTION:
                # A kept-alive connection the server had closed (as it does after a failed reply)
                # fails before any answer: send once more, on a fresh connection.
                response = self.client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise self._fail(f"did not answer within {self.timeout:g} s; it may be overloaded. Try again in a moment.")
        except httpx.TransportError as err:
            raise self._fail(
                f"is not reachable ({type(err).__name__}); it may be starting or down. Try again in a minute."
            )
        status = response.status_code
        if status >= 400 and not (probe and status < 500 and status not in (401, 403)):
            detail = _error_detail(response)
            response.close()
            raise self._fail(_status_advice(status, detail), status=status)
        return response

    def _fail(self, what: str, status: int | None = None) -> ServerError:
        """A ServerError for the page, logged for the operator; the API key never appears in either."""
        if self._key:
            what = what.replace(self._key, "***")
        log.warning("inference server at %s (model %s): %s", self.host, self.model, what)
        return ServerError(f"The inference server {what}", status)

    def _count_text(self, text: str) -> int:
        """Tokens of one message's text, by the server's tokenizer when it has an endpoint for it."""
        if self._route is False:
            self._route = self._find_route()
        if self._route is None:
            return len(text.encode("utf-8"))
        path, key = self._route
        tokens = _tokens_of(self._send("POST", path, {"model": self.model, key: text}))
        if tokens is None:
            raise self._fail("answered a tokenize request with something other than a token list; try again.")
        return len(tokens)

    def _find_route(self) -> tuple[str, str] | None:
        for path, key in TOKENIZE_ROUTES:
            # Down, or a key problem, raises here: the chat request would fail the same way.
            response = self._send("POST", path, {"model": self.model, key: "hi"}, probe=True)
            if response.status_code < 400 and _tokens_of(response) is not None:
                return path, key
        log.warning("the inference server has no tokenize endpoint: trimming counts UTF-8 bytes (an upper bound)")
        return None


def _tokens_of(response: httpx.Response) -> list | None:
    """The token list of a tokenize answer, or None when it is something else."""
    try:
        data = response.json()
        tokens = data["tokens"] if isinstance(data, dict) else data
    except (ValueError, KeyError):
        return None
    return tokens if isinstance(tokens, list) else None


def _error_detail(response: httpx.Response) -> str:
    """The server's own error message (OpenAI, FastAPI or TGI shape), cut short."""
    try:
        response.read()
    except httpx.HTTPError:
        return ""
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
    detail = error.get("message", error) if isinstance(error, dict) else error
    return " ".join(str(detail).split())[:200]


def _status_advice(status: int, detail: str) -> str:
    said = f" ({detail})" if detail else ""
    if status in (401, 403):
        return f"refused the API key (HTTP {status}){said}: the Space's FINCH_SERVER_API_KEY secret needs fixing."
    if status == 404:
        return f"has no such endpoint or model (HTTP 404){said}: check FINCH_SERVER_URL and FINCH_SERVER_MODEL."
    if status < 500:
        return (
            f"refused the request (HTTP {status}){said}. Shorten the conversation or lower max new tokens, then retry."
        )
    return f"failed (HTTP {status}){said}. Try again in a moment."


class _Pieces:
    """The text pieces of one streamed chat completion (server-sent `data:` lines of JSON chunks).

    A class, not a generator, so `close()` drops the connection even before the first piece."""

    notice = ""  # what the user should know of before this reply (llama-server: it was restarted)
    on_close = None  # called once when the reply is closed (llama-server: its slot is free again)

    def __init__(self, response: httpx.Response, cancel: threading.Event, fail):
        self.response, self.cancel, self.fail = response, cancel, fail
        self._pieces = self._read()
        # Wait for the first piece now: a server that fails after its 200 but before any text
        # (llama-cpp-python's says "prompt too long" only by ending the stream) is then reported
        # before the reply starts, where the apps show a notice.
        self._first = next(self._pieces, None)

    def __iter__(self) -> "_Pieces":
        return self

    def __next__(self) -> str:
        if self._first is not None:
            piece, self._first = self._first, None
            return piece
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()
        self.response.close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    def _read(self) -> Iterator[str]:
        finished = started = False
        try:
            for line in self.response.iter_lines():
                if self.cancel.is_set():
                    return
                # OpenAI streams only `data:` lines; blank lines, `: ping` comments and `event:` lines
                # of other servers carry no text. A hand-parse of this one line type beats a dependency.
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                piece, done = self._parse(data)
                finished = finished or done
                if piece:
                    started = True
                    yield piece
        except httpx.TimeoutException:
            raise self.fail("stopped sending the reply (timed out); try again.") from None
        except httpx.TransportError as err:
            if not started:
                raise  # before any text: the engine sends the request once more (ServerEngine.stream)
            raise self.fail(f"dropped the connection mid-reply ({type(err).__name__}); try again.") from None
        finally:
            self.response.close()
        if not finished:
            raise self.fail(EARLY_END)

    def _parse(self, data: str) -> tuple[str, bool]:
        """(text, finished) of one chunk; an error chunk or bad JSON raises."""
        try:
            chunk = json.loads(data)
            error = chunk.get("error")
            choice = (chunk.get("choices") or [{}])[0]  # a usage-only chunk has no choices
            text, finished = (choice.get("delta") or {}).get("content") or "", bool(choice.get("finish_reason"))
        except (ValueError, AttributeError, TypeError, IndexError):
            raise self.fail(
                "sent a reply that is not OpenAI-compatible JSON: is FINCH_SERVER_URL an OpenAI-compatible endpoint?"
            ) from None
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            raise self.fail(f"failed mid-reply ({str(message)[:200]}). Try again.")
        return text, finished
