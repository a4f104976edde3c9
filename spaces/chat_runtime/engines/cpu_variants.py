"""Which CPU code llama.cpp runs when its library was built for any x86-64 CPU.

A GGUF Space builds llama-cpp-python from source with llama.cpp's portable options (see
space_deploy.bundle): no `-march=native`, so the library itself uses only baseline x86-64, and the
matrix code comes as one shared library per CPU generation, `libggml-cpu-<variant>.so`, installed
into site-packages/bin. llama-cpp-python 0.3.36 loads none of them (a model then fails with "no
backends are loaded"), so the runtime loads one before the first model: the one ggml's own score
ranks best for this CPU, among those that compute right here. A build for one CPU (setup.sh's) has
its CPU code linked in and no variants: nothing to do.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "libggml-cpu-", ".so"
# Never loaded: gcc 12 (Debian 12's, which builds a Space's packages) miscompiles llama.cpp's AMX
# kernels, and a quantized decode then dies with SIGSEGV on CPUs with AMX (Xeon Sapphire Rapids on).
NEVER = frozenset({"sapphirerapids"})
# On CPUs with AVX2 but no VNNI (AMD Zen 3, Intel Skylake-X), llama.cpp's AVX2 kernels evaluated
# quantized prompts wrongly in batches; up to AVX + F16C they are right (setup.sh's build for them).
WITHOUT_AVX2 = frozenset({"x64", "sse42", "sandybridge", "ivybridge"})

_lock = threading.Lock()
_loaded: list[str | None] = []  # the variant loaded, once decided


def load_cpu_variant() -> str | None:
    """Load llama.cpp's CPU code for this CPU once per process; its variant name, or None for a
    build without variants. RuntimeError when no variant can run here."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def variants_dir() -> Path:
    """Where llama-cpp-python's install puts the variants (its wheel's bin/, in site-packages)."""
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).resolve().parent.parent / "bin" if spec and spec.origin else Path("/nonexistent")


def choose(folder: Path) -> Path | None:
    """The variant in `folder` to run on this CPU: the one ggml's score ranks best among those that
    compute right here; None when the folder holds none. RuntimeError when none can run here."""
    paths = {variant_name(p): p for p in sorted(folder.glob(f"{PREFIX}*{SUFFIX}"))}
    if not paths:
        return None
    import llama_cpp  # noqa: F401  (loads libggml-base first: the variants link against that very copy)

    # ggml's score is 0 where the CPU lacks an instruction set the variant was built with.
    scores = {name: ctypes.CDLL(str(paths[name])).ggml_backend_score() for name in allowed(list(paths), cpu_flags())}
    best = max(scores, key=scores.get, default=None)
    if best is None or scores[best] <= 0:
        raise RuntimeError(f"none of llama.cpp's CPU variants ({', '.join(paths)}) runs on this CPU")
    return paths[best]


def variant_name(path: Path) -> str:
    """ "zen4" for libggml-cpu-zen4.so."""
    return path.name[len(PREFIX) : -len(SUFFIX)]


def allowed(names: list[str], flags: set[str]) -> list[str]:
    """The variants that compute right on a CPU with these /proc/cpuinfo flags."""
    avx2_without_vnni = "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}
    return [n for n in names if n not in NEVER and (n in WITHOUT_AVX2 or not avx2_without_vnni)]


def _load() -> str | None:
    path = choose(variants_dir())
    if path is None:
        return None
    import llama_cpp

    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so.0"))  # libllama's own soname
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    if not ggml.ggml_backend_load(str(path).encode()):
        raise RuntimeError(f"llama.cpp could not load its CPU code {path}")
    name = variant_name(path)
    log.info("llama.cpp runs its %s CPU code (%s never loaded)", name, "/".join(NEVER))
    return name


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags, as /proc/cpuinfo names them (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            return set(next((line for line in info if line.startswith("flags")), ":").split(":", 1)[1].split())
    except OSError:
        return set()
