"""Shared measurement helpers for the bench/ scripts: interleaved repetitions and medians, ratio
lines, machine facts (load average, threads, versions), peak RSS of a child, and the
Llama-3.2-shaped GGUFs cached under ~/.cache/finch/bench (never in the repository).

Every script prints one `ratio NAME: VALUE (target OP X) PASS|MISS` line per measurement with a
target (a `result NAME: VALUE UNIT` line where the issue sets none); tests/test_bench.py checks them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "tokenizers",
    "llama-cpp-python",
    "gradio",
    "gradio_client",
    "numpy",
)


def cache() -> Path:
    """Where the benchmarks keep what is slow to build (shaped models): FINCH_CACHE/bench."""
    from chat_runtime.embedded import cache_dir

    path = cache_dir() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def header(title: str) -> None:
    """Print what the numbers depend on: machine, cores, load, versions."""
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES if _version(p))
    print(f"# {title}")
    print(
        f"# {platform.processor() or platform.machine()} {cpu_model()}, {len(os.sched_getaffinity(0))} cores, python "
        f"{platform.python_version()}"
    )
    print(f"# {versions}")
    print(f"# load average at start: {load()}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def interleaved(sides: dict[str, Callable[[], dict[str, float]]], reps: int) -> dict[str, dict[str, float]]:
    """Run each side once per round, alternating the order every round (A B, B A, ...), so load
    from other processes hits both sides alike; return the median of every metric per side."""
    names = list(sides)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            for metric, value in sides[name]().items():
                samples[name].setdefault(metric, []).append(value)
    return {n: {m: statistics.median(v) for m, v in s.items()} for n, s in samples.items()}


def ratio(name: str, value: float, target: float, higher_is_better: bool = True, unit: str = "x") -> bool:
    """Print one result line against its target; return whether it meets it."""
    ok = value >= target if higher_is_better else value <= target
    op = ">=" if higher_is_better else "<="
    print(f"ratio {name}: {value:.3f}{unit} (target {op} {target:g}{unit}) {'PASS' if ok else 'MISS'}", flush=True)
    return ok


def result(name: str, value: float, unit: str) -> None:
    """Print one result line that has no target in the issue (the smoke test checks for it too)."""
    print(f"result {name}: {value:,.1f} {unit}", flush=True)


def table(rows: dict[str, dict[str, float]], fmt: str = "{:.2f}") -> None:
    """Print medians side by side: one row per side, one column per metric."""
    metrics = list(next(iter(rows.values())))
    width = max(len(n) for n in rows)
    print(f"{'':{width}}  " + "  ".join(f"{m:>14}" for m in metrics))
    for name, values in rows.items():
        print(f"{name:{width}}  " + "  ".join(f"{fmt.format(values[m]):>14}" for m in metrics))


def run_peak_rss(cmd: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a command; return (seconds, peak RSS of it and its descendants in MiB, result).

    /proc is polled every 50 ms and summed over the process tree: the converter runs as a
    grandchild beside its parent, and getrusage would only report the largest single process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    done.set()
    watcher.join()
    seconds = time.perf_counter() - start
    return seconds, peak[0] / 2**20, subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
        except (OSError, ValueError):
            continue
    return total


def shaped_hf(shape: str) -> Path:
    """A Llama-shaped HF folder with random weights (bench/shaped_model.py), built once into the cache."""
    sys.path.insert(0, str(BENCH))
    from shaped_model import build

    folder = cache() / f"{shape}-hf"
    if not (folder / "config.json").is_file():
        print(f"# building {folder} (once)", flush=True)
        tmp = folder.with_name(folder.name + ".tmp")
        build(shape, tmp, None)
        os.replace(tmp, folder)
    return folder


SHAPED_QUANTS = ("q8_0", "q4_k_m")


def shaped_gguf(shape: str, quant: str) -> Path:
    """`{shape}-{quant}.gguf` in the cache, exported once (q8_0 and q4_k_m together) by our own
    `gguf/export.py` in a subprocess; the export's time and peak RSS are kept beside it as JSON
    (bench/export_cost.py reports them)."""
    folder = cache() / f"{shape}-gguf"
    path = folder / f"{shape}-{quant}.gguf"
    if not path.is_file():
        hf = shaped_hf(shape)
        print(f"# exporting {shape} to {', '.join(SHAPED_QUANTS)} with gguf/export.py (once)", flush=True)
        cmd = [
            sys.executable,
            str(ROOT / "gguf" / "export.py"),
            "--model",
            str(hf),
            "--quant",
            *SHAPED_QUANTS,
            "--output_dir",
            str(folder),
            "--name",
            shape,
        ]
        load_before = load()
        seconds, peak_mib, result = run_peak_rss(cmd)
        if result.returncode != 0:
            raise RuntimeError(f"export of {shape} failed:\n{result.stdout[-2000:]}")
        (folder / "export-cost.json").write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "peak_rss_mib": peak_mib,
                    "load_before": load_before,
                    "load_after": load(),
                    "command": " ".join(cmd),
                    "summary": result.stdout.strip().splitlines()[-8:],
                },
                indent=1,
            )
        )
    return path


def gguf_weight_bytes(path: Path) -> tuple[int, int]:
    """(bytes of all tensors, bytes read per decoded token) of a GGUF, from its tensor table.

    Per token, every weight matrix is read once, but of the token embedding only one row; with tied
    embeddings the output head reads the whole matrix (so it counts once, as the head)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    total = sum(sizes.values())
    per_token = total
    if "output.weight" in sizes and "token_embd.weight" in sizes:
        per_token -= sizes["token_embd.weight"]  # untied: the embedding lookup reads one row
    return total, per_token


def read_bandwidth(threads: int, megabytes: int = 1024, reps: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of `reps` sums over a large float32 array, split across threads
    (numpy releases the GIL in reductions, so the threads run in parallel)."""
    import numpy as np

    data = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = float("inf")
    for _ in range(reps):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t)
    return data.nbytes / best


def llamacpp_decode(engine, messages: list[dict], max_new_tokens: int) -> float:
    """Decode tokens/s of one greedy reply through Finch's LlamaCppEngine: wall time from its first
    streamed text to its end, over llama.cpp's own count of the tokens it decoded."""
    import llama_cpp

    from chat_runtime import validate

    params = validate(temperature=0, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    ids = engine.encode_chat(messages)
    llama_cpp.llama_perf_context_reset(engine.llm.ctx)
    first = None
    for _piece in engine.stream(ids, params, threading.Event()):
        first = first or time.perf_counter()
    end = time.perf_counter()
    decoded = llama_cpp.llama_perf_context(engine.llm.ctx).n_eval  # every token after the prompt
    return (decoded - 1) / (end - first)


LLAMA3_VOCAB = "vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf"


def llama3_tokenizer() -> Path:
    """Llama 3's real tokenizer (the Llama 3.2 recipes' own), built offline once into the cache:
    llama.cpp ships its vocabulary as a test file (ggml-vocab-llama-bpe.gguf) in the llama-cpp-python
    sdist that gguf/export.py already caches; transformers reads a tokenizer from a GGUF. Its chat
    template is bench/llama3_chat_template.jinja (Llama 3's, abridged)."""
    import tarfile
    import tempfile

    from gguf_export import converter

    folder = cache() / "llama3-tokenizer-meta"
    if (folder / "tokenizer.json").is_file():
        return folder
    from transformers import AutoTokenizer

    version = converter.runtime_version()
    sdist_dir = cache().parent / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        sdist = converter._download_sdist(version, sdist_dir)
    print(f"# building Llama 3's tokenizer from {sdist.name} (once)", flush=True)
    with tempfile.TemporaryDirectory(dir=cache()) as tmp:
        with tarfile.open(sdist) as tar:
            member = tar.getmember(f"llama_cpp_python-{version}/{LLAMA3_VOCAB}")
            member.name = Path(LLAMA3_VOCAB).name
            tar.extract(member, tmp, filter="data")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=member.name)
        tokenizer.chat_template = (BENCH / "llama3_chat_template.jinja").read_text().strip()
        tokenizer.eos_token = "<|eot_id|>"  # as Llama 3.2 Instruct's config has it: turns end with eot
        tokenizer.save_pretrained(Path(tmp) / "out")
        # Meta's tokenizer.json takes a word that is in the vocabulary whole (as tiktoken, Llama 3's
        # reference tokenizer, does); the GGUF does not record it, so set it as Meta ships it.
        spec_file = Path(tmp) / "out" / "tokenizer.json"
        spec = json.loads(spec_file.read_text())
        spec["model"]["ignore_merges"] = True
        spec_file.write_text(json.dumps(spec, ensure_ascii=False))
        os.replace(Path(tmp) / "out", folder)
    return folder


def run_script(cmd: list[str]) -> str:
    """A benchmarked child process from the repository root; its stdout, or its stderr's tail as the error."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def finch_training(recipe: str, data: Path, out: Path, *options: str) -> dict:
    """training/train.py on `data` for one epoch, measured as a user runs it (no eval, no checkpoint,
    no fidelity check, one 1-token sample): the trainer's runtime and losses, and its precision."""
    quiet = ["--eval_fraction", "0", "--logging_steps", "1", "--save_steps", "100000"]
    quiet += ["--sample_prompts", "Hi", "--sample_max_new_tokens", "1", "--verify", "false", "--overwrite", "true"]
    cmd = [sys.executable, "training/train.py", "--config", recipe, "--dataset", str(data), *options, *quiet]
    run_script([*cmd, "--output_dir", str(out)])
    metrics = json.loads((out / "adapter" / "metrics.json").read_text())
    history = metrics["log_history"]
    return {
        "train_runtime": history[-1]["train_runtime"],
        "train_loss": history[-1]["train_loss"],
        "losses": [e["loss"] for e in history if "loss" in e],
        "precision": metrics["device"],
    }


def plain_training(script: str, data: Path, out: Path, model: str, *options: str) -> dict:
    """A plain-library training script in bench/ (it prints its result as JSON on its last line)."""
    cmd = [sys.executable, str(BENCH / script), "--data", str(data), "--model", model, "--out", str(out), *options]
    return json.loads(run_script(cmd).strip().splitlines()[-1])


def training_sides(
    runs: dict[str, Callable[[], dict]], tokens: int, precision: dict[str, str]
) -> dict[str, Callable[[], dict[str, float]]]:
    """Training runs as `interleaved` sides: each run's speed over the epoch's `tokens` and its
    losses; the precision each trained in goes to `precision` (printed beside the speeds)."""

    def side(name: str, go: Callable[[], dict]) -> Callable[[], dict[str, float]]:
        def measure() -> dict[str, float]:
            result = go()
            precision[name] = result.get("precision") or (
                f"bf16 {result['bf16']}, gradient checkpointing {result['gradient_checkpointing']}"
            )
            figures = {"runtime_s": result["train_runtime"], "tok_s": tokens / result["train_runtime"]}
            return {**figures, "mean_loss": result["train_loss"], "last_loss": result["losses"][-1]}

        return measure

    return {name: side(name, go) for name, go in runs.items()}


def sample_rows(source: Path, rows: int, dest: Path) -> Path:
    """The first `rows` lines of a JSONL data file, written to `dest`."""
    dest.write_text("\n".join(source.read_text().splitlines()[:rows]) + "\n")
    return dest


def recipe_lora():
    """The LoRA of Finch's CPU recipes, as the plain-library scripts (trl_plain, dpo_plain) give it to trl."""
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=targets)


def print_training_result(trainer, result, config, **extra) -> None:
    """A plain-library script's result: one JSON line that `plain_training` reads."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    figures = {"train_runtime": result.metrics["train_runtime"], "train_loss": result.metrics["train_loss"]}
    settings = {"bf16": config.bf16, "gradient_checkpointing": config.gradient_checkpointing}
    print(json.dumps({**figures, "losses": losses, **settings, "max_length": config.max_length, **extra}))


def ttft_arguments(doc: str, reps: int):
    """The command line of the time-to-first-token benchmarks: rounds, reply length, --quick (2 rounds)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--max_new_tokens", type=int, default=8, help="only the first token matters; keep it short")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.reps = 2
    return args


def story_titles() -> list[tuple[str, str, str]]:
    """(title, genre, tone) of the storymaker's evaluation titles (training/eval/story_titles.jsonl),
    which the story benchmarks and tests tell openings for."""
    lines = (ROOT / "training" / "eval" / "story_titles.jsonl").read_text().splitlines()
    return [(row["title"], row["genre"], row["tone"]) for row in map(json.loads, lines)]
