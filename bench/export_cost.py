"""Item 7: export cost. Time and peak RAM of `gguf/export.py` (merge + convert + quantize) for a
LoRA on the embedded model, projected to Llama 3.2 1B and 3B by parameter count, and beside the
projection the 1B shape's own convert + quantize (measured when bench/roofline.py built it).

    .venv/bin/python bench/export_cost.py             # adapter on the embedded model -> q8_0 and q4_k_m
    .venv/bin/python bench/export_cost.py --quick     # the same; the 1B line only if already built

Peak RAM is the export's whole process tree (the converter runs as a child), polled every 50 ms.
The projection scales what the export adds above a bare start (a process importing the same
libraries, measured alike) linearly with parameters (135M -> 1.24B / 3.21B): the work is per weight.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import benchlib

PARAMS = {"embedded": 134.5e6, "llama-3.2-1b": 1.24e9, "llama-3.2-3b": 3.21e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quants", nargs="+", default=["q8_0", "q4_k_m"])
    parser.add_argument("--quick", action="store_true", help="smoke run: q8_0 only")
    args = parser.parse_args()
    if args.quick:
        args.quants = ["q8_0"]

    sys.path.insert(0, str(benchlib.BENCH))
    from gguf_vs_transformers import make_adapter

    from chat_runtime import embedded

    benchlib.header("export cost: merge + convert + quantize (gguf/export.py)")
    adapter = make_adapter(str(embedded.hf_dir()), "embedded")
    with tempfile.TemporaryDirectory(prefix="finch-export-bench-") as out:
        cmd = [
            sys.executable,
            str(benchlib.ROOT / "gguf" / "export.py"),
            "--adapter",
            str(adapter),
            "--model",
            str(embedded.hf_dir()),
            "--quant",
            *args.quants,
            "--output_dir",
            out,
            "--no_verify",
        ]  # the cost is merge + convert + quantize; the fidelity check is its own step
        seconds, peak, result = benchlib.run_peak_rss(cmd)
    if result.returncode != 0:
        raise SystemExit(f"export failed:\n{result.stdout[-2000:]}")
    bare_s, bare_mib, _ = benchlib.run_peak_rss(
        [sys.executable, "-c", "import torch, transformers, peft, gguf_export.pipeline"]
    )
    steps = next((line for line in result.stdout.splitlines() if line.startswith("steps:")), "")
    print(f"# embedded + LoRA -> {', '.join(args.quants)}: {seconds:.1f} s wall, peak RSS {peak:,.0f} MiB; {steps}")
    print(f"# bare start (imports only): {bare_s:.1f} s, {bare_mib:,.0f} MiB; load average at end: {benchlib.load()}")
    print(f"{'model':14} {'params':>8} {'time s':>8} {'peak MiB':>9}  how")
    for name, params in PARAMS.items():
        scale = params / PARAMS["embedded"]
        how = "measured" if name == "embedded" else "projected from embedded"
        time_s, mib = bare_s + (seconds - bare_s) * scale, bare_mib + (peak - bare_mib) * scale
        print(f"{name:14} {params / 1e9:7.2f}B {time_s:8.0f} {mib:9,.0f}  {how}")
    built = benchlib.cache() / "llama-3.2-1b-gguf" / "export-cost.json"
    if built.is_file():
        cost = json.loads(built.read_text())
        print(
            f"{'llama-3.2-1b':14} {PARAMS['llama-3.2-1b'] / 1e9:7.2f}B {cost['seconds']:8.0f} {cost['peak_rss_mib']:9,.0f}  "
            f"measured: convert + q8_0 + q4_k_m, no merge (load {cost['load_before']} -> {cost['load_after']})"
        )
    benchlib.result("embedded export wall time", seconds, "s")
    benchlib.result("embedded export peak RSS", peak, "MiB")


if __name__ == "__main__":
    main()
