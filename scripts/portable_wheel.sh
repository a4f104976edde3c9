#!/usr/bin/env bash
# Build llama-cpp-python once as a wheel that runs on any x86-64 CPU, for GGUF Space bundles:
# `bash scripts/portable_wheel.sh` prints the wheel's path (cached in $FINCH_CACHE, default ~/.cache/finch).
#
# A Space that compiles llama-cpp-python itself gets `-march=native` for whatever machine builds it
# (an "illegal instruction" on a host with another CPU), with the gcc 12 that miscompiles llama.cpp's
# AMX kernels (DESIGN.md). This build uses llama.cpp's own portable options instead: no -march=native,
# and one CPU library per instruction-set level, the best one for the host chosen at run time
# (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS; chat_runtime loads them from llama_cpp/lib). The one
# variant with AMX (sapphirerapids) is left out of the wheel, so the AMX path never runs; such a host
# takes the next best variant (AVX-512 with VNNI and BF16).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
CACHE=${FINCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finch}
PY=${PYTHON:-.venv/bin/python}
WHEEL_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-portable"
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
# GGML_BACKEND_DIR is relative, so the variant libraries install into the wheel beside libllama.
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR=llama_cpp/lib"
EXCLUDED="llama_cpp/lib/libggml-cpu-sapphirerapids.so"

log() { echo "[portable_wheel] $*" >&2; }

if ! ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
  if [ ! -f "$SDIST" ]; then
    log "downloading the llama-cpp-python $LLAMA_CPP_VERSION sources"
    mkdir -p "$CACHE/sdist"
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$CACHE/sdist"
  fi
  log "building a portable llama-cpp-python $LLAMA_CPP_VERSION (all CPU variants; 10-20 minutes on 2 cores)"
  mkdir -p "$CACHE/wheels"
  tmp=$(mktemp -d "$CACHE/wheels/.portable-XXXX")
  CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir "$SDIST" -w "$tmp" \
    --config-settings="wheel.exclude=$EXCLUDED"
  printf 'CMAKE_ARGS=%s\nexcluded=%s\n' "$CMAKE_FLAGS" "$EXCLUDED" > "$tmp/build-flags.txt"
  rm -rf "$WHEEL_DIR"; mv "$tmp" "$WHEEL_DIR"   # whole or nothing at the final path
fi
ls "$WHEEL_DIR"/*.whl
