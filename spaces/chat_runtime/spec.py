"""What to load: a base model (+ optional LoRA adapter) for transformers, a GGUF for llama.cpp, or
an OpenAI-compatible inference server to talk to (vLLM, TGI, llama.cpp's llama-server, ...).

On a Space the spec comes from environment variables (set by the deploy command):
  FINCH_ENGINE        auto | transformers | llamacpp | llama-server | server
                      (auto: a server URL -> server; a GGUF -> llama-server where llama.cpp's
                      server is installed, else llamacpp; otherwise transformers.
                      llama-server: the GGUF on llama.cpp's own server, run by the app, several
                      users decoded together; llamacpp: the GGUF in the app's process, one reply
                      at a time)
  FINCH_MODEL         base model, or a whole fine-tuned one (full or merged): Hub id or local folder
                      (read from the adapter when unset)
  FINCH_ADAPTER       peft adapter (LoRA, prefix tuning, p-tuning): Hub id or local folder
  FINCH_GGUF          GGUF file: local path, or `owner/repo/file.gguf` on the Hub
  FINCH_GGUF_LORA     optional LoRA GGUF loaded beside FINCH_GGUF
  FINCH_LOAD_IN_4BIT  1 to load the base in 4-bit (bitsandbytes; CUDA only)
  FINCH_TRUST_REMOTE_CODE  1 to run a model repo's own code (off unless you ask)
  FINCH_SERVER_URL    base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1
  FINCH_SERVER_MODEL  the model name that server serves (its GET /v1/models lists it)
  FINCH_SERVER_API_KEY  optional bearer key for that server (a Space secret; never logged or shown)
  FINCH_SYSTEM_ROLE   native | fold: how the server's model takes a system prompt (fold: at the start of
                      the first user message, for Gemma 2 and Mistral); local engines read it from the template
With none of them set, the embedded SmolLM2-135M-Instruct GGUF runs on llama.cpp (its server where
installed). Code that needs one engine (evaluation, a judge, benchmarks) names it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from . import embedded

ENGINE_NAMES = ("transformers", "llamacpp", "llama-server", "server")
# The engines that run a GGUF: llama.cpp in the app's process, or llama.cpp's server as its child.
GGUF_ENGINES = ("llamacpp", "llama-server")


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve. Exactly one of (base and/or adapter), gguf or server_url is set."""

    engine: str = "auto"
    base: str | None = None
    adapter: str | None = None
    gguf: str | None = None
    gguf_lora: str | None = None
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    server_url: str | None = None
    server_model: str | None = None
    server_api_key: str | None = field(default=None, repr=False)  # a secret: kept out of repr and labels
    system_role: str = "native"  # the server engine's; local engines read their template's (chat_runtime.families)

    def resolved(self) -> "ModelSpec":
        """Fill in the engine and the base model; raise ValueError for an impossible spec."""
        spec = self
        if spec.server_url or spec.engine == "server":
            return spec._resolved_server()
        if not (spec.base or spec.adapter or spec.gguf):
            spec = replace(spec, gguf=str(embedded.gguf_path()))
        if spec.gguf and (spec.base or spec.adapter):
            raise ValueError(
                "Set either a GGUF (FINCH_GGUF) or a base model/adapter (FINCH_MODEL/FINCH_ADAPTER), not both. "
                "To serve a fine-tune on llama.cpp, export it with gguf/export.py first."
            )
        engine = spec.engine
        if engine == "auto":
            engine = gguf_engine() if spec.gguf else "transformers"
        if engine not in ENGINE_NAMES:
            raise ValueError(f"unknown engine {engine!r}: use one of auto, {', '.join(ENGINE_NAMES)}")
        if engine in GGUF_ENGINES and not spec.gguf:
            raise ValueError(f"the {engine} engine runs a GGUF file: set FINCH_GGUF (or use FINCH_ENGINE=transformers)")
        if engine == "transformers" and spec.gguf:
            raise ValueError(
                "the transformers engine needs FINCH_MODEL/FINCH_ADAPTER, not a GGUF; use FINCH_ENGINE=llamacpp"
            )
        if spec.load_in_4bit and engine != "transformers":
            raise ValueError("FINCH_LOAD_IN_4BIT applies to the transformers engine only (a GGUF is quantized already)")
        base = spec.base or (base_of_adapter(spec.adapter) if spec.adapter else None)
        return replace(spec, engine=engine, base=base)

    def _resolved_server(self) -> "ModelSpec":
        """Checks for the server engine: a URL and a model name, and nothing to load locally."""
        if self.engine not in ("auto", "server"):
            raise ValueError(f"FINCH_SERVER_URL is for the server engine, not {self.engine!r}: unset one of them")
        if self.base or self.adapter or self.gguf or self.gguf_lora or self.load_in_4bit:
            raise ValueError(
                "Set either an inference server (FINCH_SERVER_URL) or a model to load here "
                "(FINCH_MODEL/FINCH_ADAPTER/FINCH_GGUF/FINCH_LOAD_IN_4BIT), not both."
            )
        if self.system_role not in ("native", "fold"):
            raise ValueError(f"FINCH_SYSTEM_ROLE must be native or fold, got {self.system_role!r}")
        if not self.server_url:
            raise ValueError("the server engine needs FINCH_SERVER_URL, e.g. http://127.0.0.1:8000/v1")
        url = urlsplit(self.server_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            # The URL itself is not repeated: it may carry credentials.
            raise ValueError("FINCH_SERVER_URL must be an http(s) URL such as http://127.0.0.1:8000/v1")
        if not self.server_model:
            raise ValueError("set FINCH_SERVER_MODEL to the model name the server serves (its GET /v1/models lists it)")
        return replace(self, engine="server")

    @property
    def label(self) -> str:
        """A short human name for the page: model, adapter and engine."""
        if self.server_url:
            return f"{self.server_model}"  # the endpoint stays off the page: it may be private
        if self.gguf:
            name = Path(self.gguf).name
            return f"{name}" + (f" + LoRA {Path(self.gguf_lora).name}" if self.gguf_lora else "")
        return f"{self.base}" + (f" + adapter {self.adapter}" if self.adapter else "")


def gguf_engine() -> str:
    """The engine `auto` serves a GGUF on: llama.cpp's server wherever one is installed (setup.sh's
    build, or a GGUF Space's portable llama-cpp-python), since it decodes several users' replies
    together; else llama.cpp in the app's process, one reply at a time."""
    from .engines.llama_server import binary  # here, not above: the engines import this module

    return "llama-server" if binary() else "llamacpp"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def from_env() -> ModelSpec:
    """The spec described by FINCH_* environment variables (see the module docstring)."""
    get = lambda name: (os.environ.get(name) or "").strip() or None  # noqa: E731
    return ModelSpec(
        engine=get("FINCH_ENGINE") or "auto",
        base=get("FINCH_MODEL"),
        adapter=get("FINCH_ADAPTER"),
        gguf=get("FINCH_GGUF"),
        gguf_lora=get("FINCH_GGUF_LORA"),
        load_in_4bit=_flag("FINCH_LOAD_IN_4BIT"),
        trust_remote_code=_flag("FINCH_TRUST_REMOTE_CODE"),
        server_url=get("FINCH_SERVER_URL"),
        server_model=get("FINCH_SERVER_MODEL"),
        server_api_key=get("FINCH_SERVER_API_KEY"),
        system_role=get("FINCH_SYSTEM_ROLE") or "native",
    )


def base_of_adapter(adapter: str) -> str:
    """The base model an adapter was trained on, from its own adapter_config.json."""
    local = Path(adapter).expanduser()
    if local.is_dir():
        config_file = local / "adapter_config.json"
        if not config_file.is_file():
            if (local / "config.json").is_file():
                raise ValueError(
                    f"{adapter} is a whole model (a full fine-tune or a merged model), not an adapter: "
                    "serve it as the model (FINCH_MODEL, or --model)"
                )
            raise ValueError(f"{adapter} has no adapter_config.json: is it an adapter folder (LoRA, prefix, p-tuning)?")
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_file = Path(hf_hub_download(adapter, "adapter_config.json"))
        except Exception as err:  # offline, private, or not an adapter: say which and what to do
            raise ValueError(
                f"could not read adapter_config.json of {adapter!r} from the Hub ({type(err).__name__}). "
                "Check the id and your network, log in for a private repo (HF_TOKEN), or pass a local folder."
            ) from None
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}'s adapter_config.json names no base model: set FINCH_MODEL (or --model)")
    return base


# Weight files that are Python pickles: loading one can run any code the file's author chose.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(source: str, what: str, hub_file: str | None = None) -> None:
    """Refuse weights that are not safetensors, before anything is loaded.

    A local folder must hold a .safetensors file; a Hub id is checked for `hub_file` when given
    (transformers' own `use_safetensors=True` covers full models; peft would fall back to a pickle).
    """
    folder = Path(source).expanduser()
    fix = (
        "Finch loads safetensors only, because a pickle weight file can run code when it is loaded. "
        "Where you trust the file, re-save it once with `save_pretrained(folder)` (it writes safetensors)."
    )
    if folder.is_dir():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles and not any(folder.glob("*.safetensors")):
            raise ValueError(f"{what} {source} has its weights only in {', '.join(pickles)}, no .safetensors. {fix}")
        return  # safetensors (read first, and only, by the loaders), or no weights: the loader says so
    if hub_file is None:
        return
    try:
        from huggingface_hub import file_exists

        present = file_exists(source, hub_file)
    except Exception:  # offline or private: the load itself says so, and it reads safetensors first
        return
    if not present:
        raise ValueError(f"{what} {source} has no {hub_file} on the Hub. {fix}")
