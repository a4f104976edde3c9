"""GGUF export and CPU chat for Finch: merge a LoRA into its base, convert with llama.cpp's own
converter, quantize through llama-cpp-python, write files atomically, card them, push them.

The import name is `gguf_export`, not `gguf`: `gguf` is llama.cpp's gguf-py, which transformers
imports. The entry scripts are `gguf/export.py` and `gguf/chat.py`; this package holds one module
per job. It may use the runtime (`chat_runtime`); the runtime never imports it.
"""

from .errors import ExportError

__all__ = ["ExportError"]
