"""The runtime both apps share: model spec, engines, chat templating, limits, streaming.

It knows nothing about Gradio (apps import it, never the reverse) and nothing about training.
"""

from . import limits
from .chat import ChatService, Reply
from .params import DEFAULTS, RANGES, GenerationParams, validate
from .spec import ModelSpec, from_env

__all__ = [
    "ChatService",
    "Reply",
    "GenerationParams",
    "DEFAULTS",
    "RANGES",
    "validate",
    "ModelSpec",
    "from_env",
    "limits",
]
