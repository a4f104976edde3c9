"""Named limits, each overridable by an environment variable (a Space sets them as variables)."""

from __future__ import annotations

import os


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number; unset it or set e.g. {name}={default}") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; unset it or set e.g. {name}={default}") from None


# Longest message accepted from a user, in characters (longer ones are refused with a message).
MAX_MESSAGE_CHARS = _env_int("FINCH_MAX_MESSAGE_CHARS", 20_000)
# Upper bound of the max-new-tokens slider and of the API parameter.
MAX_NEW_TOKENS_LIMIT = _env_int("FINCH_MAX_NEW_TOKENS_LIMIT", 2048)
# Default reply length: short enough for a CPU, long enough for a real answer.
DEFAULT_MAX_NEW_TOKENS = min(_env_int("FINCH_DEFAULT_MAX_NEW_TOKENS", 256), MAX_NEW_TOKENS_LIMIT)
# Context window used for prompt + reply; 0 means "the model's own, capped at 4096".
CONTEXT_TOKENS = int(os.environ.get("FINCH_CONTEXT_TOKENS", "0") or 0)
DEFAULT_CONTEXT_CAP = 4096
# Generations running at once; more wait in the queue. Unset (None): the engine's own number, 1
# except llama.cpp's server (its parallel slots); the in-process llama.cpp engine runs one anyway.
MAX_CONCURRENT_GENERATIONS = (
    _env_int("FINCH_MAX_CONCURRENT", 1) if os.environ.get("FINCH_MAX_CONCURRENT", "").strip() else None
)
# MiB of RAM llama-server may fill with the prompts of conversations whose slot went to another
# user, so that their next message is not read again from the start (0: none). llama.cpp's own
# default, 8 GiB, would let a busy Space's memory grow by half of a cpu-basic Space's RAM.
PROMPT_CACHE_MIB = _env_int("FINCH_PROMPT_CACHE_MIB", 1024, minimum=0)
# Requests waiting in the app's queue; beyond this a client is told the app is busy.
QUEUE_SIZE = _env_int("FINCH_QUEUE_SIZE", 16)
# Longest story title (and genre, tone) the storymaker keeps, in characters; longer ones are cut.
MAX_TITLE_CHARS = _env_int("FINCH_MAX_TITLE_CHARS", 120)
# Seconds the server engine waits to connect and for each piece of a reply before telling the user
# the inference server is too slow (a long prompt's first piece is the slowest).
SERVER_TIMEOUT_SECONDS = _env_float("FINCH_SERVER_TIMEOUT", 60.0)
# Longest a ZeroGPU Space holds its GPU for one reply (@spaces.GPU's duration); a shorter one
# gets a user through ZeroGPU's queue sooner.
ZEROGPU_SECONDS = _env_int("FINCH_ZEROGPU_SECONDS", 60)
