"""Generation parameters: defaults, ranges and validation shared by every engine and app."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import limits

# (minimum, maximum) of each parameter; the apps build their sliders from this table.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "max_new_tokens": (1, limits.MAX_NEW_TOKENS_LIMIT),
    "repetition_penalty": (1.0, 2.0),
}


# llama.cpp's defaults for its DRY sampler (its common sampling parameters), for the engines that
# have it: how fast the penalty grows with the repeat's length, the repeat length it starts at, and
# the breakers a repeat does not extend across.
DRY_BASE = 1.75
DRY_ALLOWED_LENGTH = 2
DRY_BREAKERS = ("\n", ":", '"', "*")
# The tokens DRY scans for repeats (llama.cpp's default is 64): a storymaker context's worth, so a
# turn does not repeat a line of the turns before either. llama-server refuses -1 ("the context").
DRY_LAST_N = 4096


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one reply. temperature 0 means greedy (deterministic) decoding."""

    temperature: float = 0.2  # SmolLM2's recommended setting; small models ramble when sampled hot
    top_p: float = 0.9
    max_new_tokens: int = limits.DEFAULT_MAX_NEW_TOKENS
    repetition_penalty: float = 1.1
    # A GBNF grammar the reply must follow, enforced while decoding by each engine's own constrained
    # generation (llama.cpp's grammars, xgrammar, a server's structured-output field). Set by the
    # runtime (the storymaker's turn shape), never by a slider or an API caller; None = free text.
    grammar: str | None = field(default=None, repr=False)
    # llama.cpp's DRY penalty on a token that extends a repeat of the prompt or the reply (0 = off):
    # set by the runtime (the storymaker, whose small model repeats a choice line under greedy
    # decoding), never by a slider; the llama.cpp engine and llama.cpp's server apply it, others not.
    dry_multiplier: float = field(default=0.0, repr=False)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


DEFAULTS = GenerationParams()


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        else:
            raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def validate(**values: object) -> GenerationParams:
    """Build GenerationParams from raw values (slider or API); raise ValueError saying what to fix.

    None means "use the default". Values outside their range are refused, not clamped, so an API
    caller learns the real limits instead of silently getting something else.
    """
    names = set(RANGES)  # the settings a person may set; `grammar` and `dry_multiplier` are the runtime's
    unknown = set(values) - names
    if unknown:
        raise ValueError(
            f"unknown generation parameter(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}"
        )
    clean: dict[str, float | int] = {}
    for name, raw in values.items():
        if raw is None:
            continue
        number = _number(name, raw)
        low, high = RANGES[name]
        if name == "max_new_tokens":
            if number != int(number):
                raise ValueError(f"max_new_tokens must be a whole number, got {raw}")
            number = int(number)
        if not low <= number <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}, got {raw}")
        clean[name] = number
    return GenerationParams(**clean)
