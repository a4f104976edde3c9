"""LLM-as-a-judge on the runtime's engines: a 1-5 score of one reply on a written rubric, and a
pairwise A/B verdict between two replies. The judge is any model the runtime can serve: a local
GGUF on llama.cpp, or an OpenAI-compatible server through the server engine.

The rubric (what "good" means) is a text file the user can replace; the answer format the
parsers read ("Score: N", "Verdict: A|B|tie") is fixed here. A verdict that does not parse is
returned as None and counted by the caller, never guessed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from chat_runtime import ChatService, GenerationParams, ModelSpec
from chat_runtime.engines import load_engine
from chat_runtime.errors import ServerError

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = Path(__file__).resolve().parents[1] / "eval" / "rubric.md"
# A judge smaller than this is called weak in the report: its verdicts are a smoke test, not a decision.
WEAK_JUDGE_PARAMS = 7e9

SYSTEM = "You are a strict, impartial judge of an AI assistant's replies.\n\n{rubric}"
SCORE_TASK = (
    "{conversation}\n\n[The assistant's reply]\n{reply}\n[End of reply]\n\n"
    "Rate the reply on the rubric. Answer with one line: `Score: N`, where N is 1, 2, 3, 4 or 5."
)
PAIR_TASK = (
    "{conversation}\n\n[Reply A]\n{a}\n[End of reply A]\n\n[Reply B]\n{b}\n[End of reply B]\n\n"
    "Which reply is better on the rubric? Answer with one line: `Verdict: A`, `Verdict: B` or `Verdict: tie`."
)

# The answer formats as GBNF grammars: an engine that can constrain its decoding (llama.cpp, a
# llama.cpp or vLLM server) then can only answer in the form the parsers read, which a small local
# judge otherwise rarely does; any other server answers freely and the parsers take what they can.
SCORE_GRAMMAR = 'root ::= "Score: " [1-5]'
VERDICT_GRAMMAR = 'root ::= "Verdict: " ("A" | "B" | "tie")'
SCORE_RE = re.compile(r"score\s*(?:is|=|:)?\s*\**\s*([1-5])(?!\d)", re.IGNORECASE)
BARE_SCORE_RE = re.compile(r"^\s*\**([1-5])\**(?:\s*/\s*5)?\s*\.?\s*$")
VERDICT_RE = re.compile(r"verdict\s*(?:is|=|:)?\s*[\*\[\"'`]*\s*(A|B|tie)\b", re.IGNORECASE)
BARE_VERDICT_RE = re.compile(r"^\s*[\*\[\"'`]*(A|B|tie)[\*\]\"'`]*\s*\.?\s*$", re.IGNORECASE)


class JudgeUnavailable(RuntimeError):
    """The judge cannot answer (a server that is down, refuses the key, times out)."""


def parse_score(text: str) -> int | None:
    """The 1-5 score in a judge's answer ("Score: 4", "score is 4/5", a bare "4"), or None."""
    found = SCORE_RE.search(text) or BARE_SCORE_RE.match(text)
    return int(found.group(1)) if found else None


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from a judge's answer ("Verdict: A", a bare "B"), or None."""
    found = VERDICT_RE.search(text) or BARE_VERDICT_RE.match(text)
    if not found:
        return None
    word = found.group(1)
    return "tie" if word.lower() == "tie" else word.upper()


def show_conversation(messages: list[dict]) -> str:
    """The conversation as the judge reads it: labelled plain text (content, not template markup)."""
    names = {"system": "System prompt given to the assistant", "user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"[{names.get(m['role'], m['role'])}]\n{m['content']}" for m in messages)


def load_rubric(path: str | None) -> str:
    """The rubric text; a missing or empty file is an error saying which file."""
    file = Path(path).expanduser() if path else DEFAULT_RUBRIC
    if not file.is_file():
        raise FileNotFoundError(f"rubric file {file} does not exist: give --rubric a text file (see {DEFAULT_RUBRIC})")
    text = file.read_text().strip()
    if not text:
        raise ValueError(f"rubric file {file} is empty: write the criteria the judge should apply")
    return text


@dataclass(frozen=True)
class JudgeSpec:
    """Which model judges: a local GGUF (path, `owner/repo/file.gguf`, or `embedded`) or a server."""

    gguf: str | None = None
    url: str | None = None
    model: str | None = None
    api_key_env: str = "FINCH_JUDGE_API_KEY"

    def model_spec(self) -> ModelSpec:
        if self.url:
            if not self.model:
                raise ValueError("--judge_url needs --judge_model: the model name the server serves (GET /v1/models)")
            return ModelSpec(
                server_url=self.url, server_model=self.model, server_api_key=os.environ.get(self.api_key_env) or None
            )
        if self.gguf in (None, "embedded"):
            from chat_runtime import embedded

            return ModelSpec(engine="llamacpp", gguf=str(embedded.gguf_path()))
        return ModelSpec(engine="llamacpp", gguf=self.gguf)


class Judge:
    """Asks one judge model for scores and verdicts, greedily (the same question gets the same answer)."""

    def __init__(self, spec: JudgeSpec, rubric: str, max_new_tokens: int):
        self.spec = spec
        self.service = ChatService(load_engine(spec.model_spec()))
        self.system = SYSTEM.format(rubric=rubric)
        self.params = GenerationParams(temperature=0.0, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
        self.label = self.service.engine.label
        self.params_count = self._params_count()

    def _params_count(self) -> int | None:
        """Parameters of a local judge (llama.cpp knows them); None for a server."""
        llm = getattr(self.service.engine, "llm", None)
        if llm is None:
            return None
        import llama_cpp

        return int(llama_cpp.llama_model_n_params(llm.model))

    @property
    def weak(self) -> bool:
        return self.params_count is not None and self.params_count < WEAK_JUDGE_PARAMS

    def ask(self, task: str, grammar: str | None = None) -> str:
        """The judge's whole answer to one task, in the form `grammar` allows where the engine can
        enforce it; JudgeUnavailable when the judge cannot answer."""
        text = ""
        params = replace(self.params, grammar=grammar)
        try:
            for reply in self.service.reply(task, [], self.system, params):
                text = reply.text
        except ServerError as err:
            raise JudgeUnavailable(str(err)) from None
        except ValueError as err:  # this one task does not fit the judge (too long): counted as unparsed
            log.warning("the judge could not take a task: %s", err)
            return f"(not judged: {err})"
        return text.strip()

    def score(self, conversation: list[dict], reply: str) -> tuple[int | None, str]:
        """(1-5 or None, the judge's raw answer) for one reply."""
        raw = self.ask(
            SCORE_TASK.format(conversation=show_conversation(conversation), reply=reply or "(empty)"), SCORE_GRAMMAR
        )
        return parse_score(raw), raw

    def compare(self, conversation: list[dict], a: str, b: str) -> tuple[str | None, str]:
        """("A" | "B" | "tie" | None, the raw answer) for reply A shown first, B second."""
        raw = self.ask(
            PAIR_TASK.format(conversation=show_conversation(conversation), a=a or "(empty)", b=b or "(empty)"),
            VERDICT_GRAMMAR,
        )
        return parse_verdict(raw), raw
