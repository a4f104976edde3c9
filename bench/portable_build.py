"""Decode speed of the llama.cpp a GGUF Space installs (built for any x86-64 CPU, its CPU code chosen
at run time) against setup.sh's build for this very CPU, on the Llama-3.2-1B-shaped q4_k_m
(target: portable >= 0.9x native).

    .venv/bin/python bench/portable_build.py            # llama-3.2-1b shape, 64 new tokens, 3 rounds
    .venv/bin/python bench/portable_build.py --quick    # smoke run: tiny shape, 16 tokens, 1 round

The portable side is a virtual environment holding exactly a GGUF Space's requirements, installed
offline from what `scripts/setup.sh --test` keeps (the wheel built from the bundle's own requirement
line), made once into ~/.cache/finch/bench. Both sides run the same decode through Finch's
LlamaCppEngine (this checkout's runtime), each in a child process per round, rounds alternating.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import benchlib

from chat_runtime import embedded
from space_deploy.bundle import GGUF_REQUIREMENTS

# One child: load the GGUF, warm up, decode `reps` greedy replies; print the median tokens/s and the
# CPU code llama.cpp runs.
CHILD = """
import json, statistics, sys
import benchlib
from chat_runtime import ModelSpec
from chat_runtime.engines.cpu_variants import load_cpu_variant
from chat_runtime.engines.llamacpp_engine import LlamaCppEngine
gguf, tokens, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = LlamaCppEngine(ModelSpec(gguf=gguf))
prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
benchlib.llamacpp_decode(engine, prompt, 8)
rates = [benchlib.llamacpp_decode(engine, prompt, tokens) for _ in range(reps)]
print(json.dumps({"tok_s": statistics.median(rates), "variant": load_cpu_variant() or "built for this CPU"}))
"""


def space_venv() -> str:
    """The python of a venv holding a GGUF Space's requirements (made once, offline)."""
    key = hashlib.md5(GGUF_REQUIREMENTS.encode()).hexdigest()[:12]
    wheels = embedded.cache_dir() / "gguf-space" / key / "wheels"
    if not wheels.is_dir():
        sys.exit("run `bash scripts/setup.sh --test` first: it builds a GGUF Space's packages once")
    venv = benchlib.cache() / f"gguf-space-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / "complete").is_file():
        print(f"# making {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        requirements = venv / "requirements.txt"
        requirements.write_text(GGUF_REQUIREMENTS)
        pip = [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
        subprocess.run([*pip, "-r", str(requirements)], check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
        (venv / "complete").touch()
    return str(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.2-1b", help="a shape of bench/shaped_model.py")
    parser.add_argument("--reps", type=int, default=3, help="rounds; each side decodes 3 replies per round")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny shape, 1 round of 16 tokens")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.reps, args.max_new_tokens = "tiny", 1, 16

    benchlib.header(f"portable llama.cpp (a GGUF Space's) vs the build for this CPU, {args.shape} q4_k_m")
    gguf = str(benchlib.shaped_gguf(args.shape, "q4_k_m"))
    # The portable venv has no Finch install: this checkout's runtime and bench helpers, by path.
    path = os.pathsep.join([str(benchlib.ROOT / "spaces"), str(benchlib.BENCH)])
    variants = {}

    def side(python: str):
        def run() -> dict[str, float]:
            cmd = [python, "-c", CHILD, gguf, str(args.max_new_tokens), "3"]
            out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"the decode failed:\n{out.stderr[-2000:]}")
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            variants[python] = measured["variant"]
            return {"tok_s": measured["tok_s"]}

        return run

    sides = {"native": sys.executable, "portable": space_venv()}
    results = benchlib.interleaved({name: side(python) for name, python in sides.items()}, args.reps)
    benchlib.table(results, "{:.1f}")
    print(f"# CPU code: native {variants[sides['native']]}; portable {variants[sides['portable']]} variant")
    print(f"# load average at end: {benchlib.load()}")
    benchlib.ratio("portable / native decode", results["portable"]["tok_s"] / results["native"]["tok_s"], 0.9)


if __name__ == "__main__":
    main()
