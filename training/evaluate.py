"""Is the fine-tune better than its base? Held-out loss and perplexity of both, replies of both
(the runtime's engines, one set of sampling settings), a judge's 1-5 rubric scores and pairwise
verdicts asked in both orders; a report folder (report.md, report.json, report.png).

    python training/evaluate.py --adapter runs/cpu-smollm2-sample/adapter                  # the run's held-out split, embedded judge
    python training/evaluate.py --config training/eval/quick.yaml --adapter runs/cpu-smollm2-sample/adapter   # 4 prompts
    python training/evaluate.py --adapter you/your-adapter --dataset you/your-data --dataset_split test
    python training/evaluate.py --adapter model-q8_0.gguf --base base-f16.gguf --prompts_file prompts.txt
    python training/evaluate.py --config training/eval/story.yaml --adapter runs/cpu-smollm2-story/adapter   # story mode: 20 opening turns
    FINCH_JUDGE_API_KEY=... python training/evaluate.py --adapter runs/NAME/adapter \\
        --judge_url http://gpu-host:8000/v1 --judge_model Qwen/Qwen2.5-72B-Instruct          # a strong judge

Defaults < YAML (--config) < command line; `--help` lists every option. Results are stored as they
come: run the same command again after a kill, or after the judge went away, and it resumes.
"""

from __future__ import annotations

import logging
import sys

from trl import TrlParser

from finetune.evaluation import EvalArgs, EvaluationError, evaluate, summary_table

log = logging.getLogger("finch.evaluate")


def main(args: EvalArgs) -> int:
    try:
        report, out = evaluate(args)
    except (EvaluationError, OSError, ValueError) as err:  # OSError: a model or file that cannot be read
        print(f"Evaluation stopped: {err}", file=sys.stderr)
        return 1
    print(f"\n{summary_table(report)}\n\nReport: {out / 'report.md'} (and report.json, report.png)")
    if report["judge"]["weak"]:
        print("The judge is a small model: treat its scores as a smoke test (see the report).")
    return 0


def make_parser() -> TrlParser:
    return TrlParser((EvalArgs,), allow_abbrev=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    (parsed,) = make_parser().parse_args_and_config()
    sys.exit(main(parsed))
