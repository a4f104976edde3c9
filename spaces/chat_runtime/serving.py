"""Where and how an app listens: 127.0.0.1 on your machine, 0.0.0.0 only inside a Space."""

from __future__ import annotations

import os


def on_space() -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def server_name() -> str:
    """Bind address: the Space's container must listen on all interfaces; a laptop must not."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space() else "127.0.0.1")


def server_port() -> int:
    """Port: GRADIO_SERVER_PORT, else Gradio's usual 7860."""
    return int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
