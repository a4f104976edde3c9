"""The few Hub helpers every stage shares: the token (never shown) and errors that say what to do."""

from __future__ import annotations

from huggingface_hub import get_token

from .errors import UserError


def hub_token() -> str:
    """The Hub token from HF_TOKEN or `hf auth login`; a UserError says how to get one. Never printed."""
    token = get_token()
    if not token:
        raise UserError("No Hugging Face token: set HF_TOKEN or run `hf auth login`, then try again.")
    return token


def describe_error(err: BaseException, secret: str | None = None) -> str:
    """One line about a failed Hub call, with the token (if it appears anywhere) blanked out."""
    first = (str(err).splitlines() or [""])[0][:200]
    text = f"{type(err).__name__}: {first}"
    return text.replace(secret, "hf_***") if secret else text
