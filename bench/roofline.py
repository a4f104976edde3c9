"""Item 2: decode speed against the memory-bandwidth roofline, on a GGUF with Llama 3.2 1B's exact
shape and random weights (target >= 0.6x of the roofline's tokens/s at q4_k_m and q8_0).

    .venv/bin/python bench/roofline.py                   # llama-3.2-1b shape, q4_k_m and q8_0
    .venv/bin/python bench/roofline.py --quick           # tiny shape, smoke run

roofline tokens/s = measured read bandwidth / weight bytes read per token (every tensor in the
GGUF's table once; of an untied token embedding only one row). Bandwidth: numpy sums over a
1 GiB array with as many threads as llama.cpp uses, measured between decode rounds. Decode goes
through Finch's LlamaCppEngine (benchlib.llamacpp_decode). The GGUFs are built once
(bench/shaped_model.py -> gguf/export.py) into ~/.cache/finch/bench.
"""

from __future__ import annotations

import argparse
import statistics

import benchlib

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.2-1b", help="a shape of bench/shaped_model.py")
    parser.add_argument("--quants", nargs="+", default=list(benchlib.SHAPED_QUANTS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny shape, 2 rounds of 16 tokens")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.reps, args.max_new_tokens = "tiny", 2, 16

    from chat_runtime import ModelSpec
    from chat_runtime.engines.llamacpp_engine import LlamaCppEngine

    benchlib.header(f"decode vs memory-bandwidth roofline, {args.shape} shape")
    engines = {q: LlamaCppEngine(ModelSpec(gguf=str(benchlib.shaped_gguf(args.shape, q)))) for q in args.quants}
    threads = next(iter(engines.values())).llm.n_threads
    for engine in engines.values():
        benchlib.llamacpp_decode(engine, PROMPT, 8)  # warm-up: pages the weights in
    # Bandwidth is measured between decode rounds too, so both see the same background load.
    bandwidth: list[float] = []

    def side(engine):
        def run() -> dict[str, float]:
            bandwidth.append(benchlib.read_bandwidth(threads, reps=3))
            return {"tok_s": benchlib.llamacpp_decode(engine, PROMPT, args.max_new_tokens)}

        return run

    results = benchlib.interleaved({q: side(e) for q, e in engines.items()}, args.reps)
    bw = statistics.median(bandwidth)
    print(
        f"# threads {threads}; read bandwidth {bw / 1e9:.1f} GB/s (median of {len(bandwidth)}, numpy sum, "
        f"{threads} threads); {args.max_new_tokens} new tokens; load average at end: {benchlib.load()}"
    )
    print(f"{'quant':8} {'file MB':>9} {'read/token MB':>14} {'roofline tok/s':>15} {'measured tok/s':>15}")
    for quant, engine in engines.items():
        total, per_token = benchlib.gguf_weight_bytes(benchlib.shaped_gguf(args.shape, quant))
        roof = bw / per_token
        results[quant]["roof"] = roof
        print(f"{quant:8} {total / 1e6:9.1f} {per_token / 1e6:14.1f} {roof:15.1f} {results[quant]['tok_s']:15.1f}")
    for quant in engines:
        benchlib.ratio(f"{quant} decode / roofline", results[quant]["tok_s"] / results[quant]["roof"], 0.6)


if __name__ == "__main__":
    main()
