"""Engines by name: a small table, so the backend choice lives in one place."""

from __future__ import annotations

from ..spec import ModelSpec
from .base import Engine


def _transformers(spec: ModelSpec) -> Engine:
    from .transformers_engine import TransformersEngine

    return TransformersEngine(spec)


def _llamacpp(spec: ModelSpec) -> Engine:
    from .llamacpp_engine import LlamaCppEngine

    return LlamaCppEngine(spec)


def _server(spec: ModelSpec) -> Engine:
    from .server_engine import ServerEngine

    return ServerEngine(spec)


def _llama_server(spec: ModelSpec) -> Engine:
    from .llama_server import LlamaServerEngine

    return LlamaServerEngine(spec)


ENGINES = {"transformers": _transformers, "llamacpp": _llamacpp, "llama-server": _llama_server, "server": _server}


def load_engine(spec: ModelSpec) -> Engine:
    """Load the engine a (resolved) spec names."""
    spec = spec.resolved()
    return ENGINES[spec.engine](spec)
