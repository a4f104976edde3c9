"""training/evaluate.py: the CPU recipe's fine-tune against its base, judged by the embedded model
on llama.cpp (at the end of training, `--evaluate true`) and through `python -m llama_cpp.server`;
resuming after a kill; a judge that is down; story mode (the storymaker's opening turns, on the
embedded GGUF). Plus the parsers, the tallies and the refusals, offline and fast."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chat_runtime import story
from finetune import evaluation, judge

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "training" / "eval" / "quick.yaml"
STORY = ROOT / "training" / "eval" / "story.yaml"
STORY_TITLES = ROOT / "training" / "eval" / "story_titles.jsonl"
# One llama.cpp thread for the judge: its threads spin on barriers, which crawls on a busy 2-core box.
ENV = {**os.environ, "FINCH_THREADS": "1"}


def evaluate(*args, config=QUICK, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, str(ROOT / "training" / "evaluate.py"), "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=600,
        **kwargs,
    )


def replies_only(run_dir: Path, out: Path, judged_lines: int = 0) -> Path:
    """A new evaluation folder holding the trained run's replies and losses (and some judgements):
    only the judging is left to do."""
    out.mkdir(parents=True)
    source = run_dir / "evaluation"
    for name in ("replies.jsonl", "loss.json"):
        shutil.copy(source / name, out / name)
    if judged_lines:
        lines = (source / "judged.jsonl").read_text().splitlines()[:judged_lines]
        (out / "judged.jsonl").write_text("\n".join(lines) + "\n")
    return out


# --- fast: parsing and tallies ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, score",
    [
        ("Score: 4", 4),
        ("score is 5/5", 5),
        ("**Score:** 2", 2),
        ("3", 3),
        ("4/5.", 4),
        ("The answer is 1.5.", None),
        ("Score: 7", None),
        ("", None),
        ("I rate it 10 out of 10", None),
    ],
)
def test_scores_are_read_only_from_the_asked_format(text, score):
    assert judge.parse_score(text) == score


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Verdict: A", "A"),
        ("verdict: tie", "tie"),
        ("Verdict: **B**", "B"),
        ("B", "B"),
        ("[A]", "A"),
        ("A is better because", None),
        ("The answer is:\n[End of reply B]", None),
    ],
)
def test_verdicts_are_read_only_from_the_asked_format(text, verdict):
    assert judge.parse_verdict(text) == verdict


def test_a_pair_counts_only_when_both_orders_agree():
    assert evaluation.outcome("A", "B") == "win"  # fine-tune first chosen, then fine-tune second chosen
    assert evaluation.outcome("B", "A") == "loss"
    assert evaluation.outcome("A", "A") == "tie"  # always the first shown: position bias, cancelled
    assert evaluation.outcome("tie", "tie") == "tie"
    assert evaluation.outcome(None, "B") == "unparsed"


def test_mean_score_has_a_confidence_interval():
    mean, ci = evaluation.mean_ci([3, 4, 5, 4])
    assert mean == 4.0 and ci[0] < 4.0 < ci[1]
    assert evaluation.mean_ci([]) == (None, None) and evaluation.mean_ci([2]) == (2.0, None)


def test_impossible_settings_are_all_listed_at_start():
    args = evaluation.EvalArgs(prompts_file="p.txt", dataset="d.jsonl", judge_url="http://x/v1", temperature=5)
    with pytest.raises(evaluation.EvaluationError) as err:
        evaluation.check(args)
    text = str(err.value)
    for part in ("--adapter is required", "not both", "--judge_url needs --judge_model", "temperature must be between"):
        assert part in text


def test_a_missing_rubric_says_which_file():
    with pytest.raises(FileNotFoundError, match="rubric file /nope.md does not exist"):
        judge.load_rubric("/nope.md")
    assert "Correctness" in judge.load_rubric(None)


def test_story_mode_refuses_prompts_beside_it_and_a_system_prompt_of_its_own():
    for other in (dict(prompts_file="p.txt"), dict(dataset="d.jsonl")):
        with pytest.raises(evaluation.EvaluationError, match="give --story_titles .* not both"):
            evaluation.check(evaluation.EvalArgs(adapter="a", story_titles=str(STORY_TITLES), **other))
    with pytest.raises(evaluation.EvaluationError, match="--system_prompt does not apply with --story_titles"):
        evaluation.check(evaluation.EvalArgs(adapter="a", story_titles=str(STORY_TITLES), system_prompt="Be brief."))


@pytest.mark.parametrize(
    "lines, problem",
    [
        (['{"title": "The Bottle Map"}', "The Lantern on the Cliff"], "line 2: not JSON"),
        (['{"title": "The Bottle Map"}', "", '{"genre": "mystery", "tone": "eerie"}'], 'line 3: no "title"'),
        (['["The Bottle Map"]'], 'line 1: no "title"'),
        (['{"title": "The Bottle Map", "genr": "mystery"}'], r"line 1: unknown key\(s\) genr"),
        (['{"title": 7}'], "line 1: The story's title must be text"),
        (["", "  "], "has no stories"),
        (None, "titles.jsonl does not exist"),
    ],
)
def test_a_bad_story_titles_file_is_refused_naming_its_line(tmp_path, lines, problem):
    titles = tmp_path / "titles.jsonl"
    if lines is not None:
        titles.write_text("\n".join(lines) + "\n")
    with pytest.raises(evaluation.EvaluationError, match=problem):
        evaluation.load_rows(evaluation.EvalArgs(adapter="a", story_titles=str(titles)))


def test_story_titles_become_the_storymakers_opening_requests_judged_on_the_story_rubric():
    rows = evaluation.load_rows(evaluation.EvalArgs(adapter="a", story_titles=str(STORY_TITLES), max_rows=3))
    system = (ROOT / "storymaker_app" / "system_prompt.md").read_text().strip()
    assert len(rows.conversations) == len(rows.stories) == 3 and not rows.with_reference
    for i, told in enumerate(rows.stories):
        assert rows.prompt(i) == [
            {"role": "system", "content": system},
            {"role": "user", "content": told.opening_request()},
        ]
    assert rows.stories[0] == story.Story.new("The lighthouse keeper's last winter", "mystery", "gloomy")
    assert evaluation.rubric_file(evaluation.EvalArgs(story_titles="t.jsonl")).name == "story_rubric.md"
    assert evaluation.rubric_file(evaluation.EvalArgs(story_titles="t.jsonl", rubric="mine.md")).name == "mine.md"
    assert evaluation.rubric_file(evaluation.EvalArgs()) == judge.DEFAULT_RUBRIC
    assert "Choices" in judge.load_rubric(str(evaluation.STORY_RUBRIC))


# --- the real thing on the embedded GGUF: story mode ----------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_story_mode_judges_the_storymakers_opening_turns_and_a_rerun_resumes(embedded_gguf, tmp_path):
    out = tmp_path / "story"
    args = ["--adapter", str(embedded_gguf), "--base", str(embedded_gguf), "--output_dir", str(out)]
    args += ["--max_rows", "2", "--max_new_tokens", "96"]  # two titles, short turns: the suite's budget
    proc = evaluate(*args, config=STORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == 2 and "story_titles.jsonl" in report["source"]
    assert report["rubric"] == str(evaluation.STORY_RUBRIC)
    assert report["settings"] == {"temperature": 0.0, "top_p": 0.9, "max_new_tokens": 96, "repetition_penalty": 1.1}
    assert "eval_loss" not in report["base"] and not (out / "loss.json").exists()
    titles = [json.loads(line)["title"] for line in STORY_TITLES.read_text().splitlines()[:2]]
    for row, title in zip(report["rows"], titles):
        assert f"“{title}”" in row["prompt"][-1]["content"]  # the judge was shown the request, then the turn
        for side in evaluation.SIDES:
            turn = story.split_turn(row[side])  # stored as the model writes a turn
            assert turn is not None and turn.scene and 2 <= len(turn.choices) <= 4, row[side]
        # the judge answers under the grammar on llama.cpp, so every answer is read
        assert row["base_score"] in range(1, 6) and row["finetuned_score"] in range(1, 6)
        assert set(row["verdicts"]) <= {"A", "B", "tie"} and row["outcome"] in ("win", "tie", "loss")
    stored = {name: (out / name).read_text() for name in ("replies.jsonl", "judged.jsonl")}
    assert len(stored["replies.jsonl"].splitlines()) == 4 and len(stored["judged.jsonl"].splitlines()) == 8
    print("\n" + (out / "report.md").read_text())

    again = evaluate(*args, config=STORY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Replies (" not in again.stderr and "resuming: 8 judgements already made, 0 to go" in again.stderr
    assert {name: (out / name).read_text() for name in stored} == stored  # nothing told or judged again
    assert json.loads((out / "report.json").read_text())["rows"] == report["rows"]


# --- the real thing on the trained CPU recipe -----------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_train_evaluates_the_fine_tune_against_its_base_and_the_card_has_the_table(trained_run):
    run_dir, proc = trained_run
    out = run_dir / "evaluation"
    report = json.loads((out / "report.json").read_text())
    n = report["prompts"]
    assert n == 3 and "held-out split" in report["source"]
    for side in ("base", "finetuned"):
        entry = report[side]
        assert set(entry) >= {"mean_score", "scored", "unparsed", "perplexity"}
        assert entry["scored"] + entry["unparsed"] == n  # parse failures counted, never dropped
    # the fine-tune fits held-out replies better: measured 1.579 against 7.576 (3 Dec, Zen 4)
    assert report["finetuned"]["perplexity"] < report["base"]["perplexity"]
    pairwise = report["pairwise"]
    assert sum(pairwise[k] for k in ("win", "tie", "loss", "unparsed")) == n
    assert report["judge"]["weak"] and report["judge"]["params"] < 2e8
    # the fine-tune's voice: measured 3 of 3 (3 Dec); one reply may keep the base's habit
    assert sum(r["finetuned"].startswith("Finch here") for r in report["rows"]) >= n - 1
    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    assert len(judged) == 4 * n and all("raw" in j for j in judged)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "A weak judge" in md and "| fine-tune vs base |" in md and "## Per prompt" in md and md.endswith("\n")
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "## Evaluation (`python training/evaluate.py`)" in card and "| fine-tune vs base |" in card
    print("\n" + md)


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_judge_on_an_openai_compatible_server_with_a_key_that_is_never_shown(trained_run, llama_servers, tmp_path):
    key = "sk-judge-secret-1234"
    server = llama_servers(api_key=key).start()
    out = replies_only(trained_run[0], tmp_path / "served")
    proc = evaluate(
        "--adapter",
        str(trained_run[0] / "adapter"),
        "--output_dir",
        str(out),
        "--judge_url",
        server.url,
        "--judge_model",
        server.MODEL,
        env={**ENV, "FINCH_JUDGE_API_KEY": key},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["model"] == f"{server.MODEL} · inference server" and not report["judge"]["weak"]
    assert report["base"]["scored"] + report["base"]["unparsed"] == 3
    assert len((out / "judged.jsonl").read_text().splitlines()) == 12
    assert "Replies (" not in proc.stderr  # the replies were stored: only the judging ran
    for text in (proc.stdout, proc.stderr, *(p.read_text() for p in out.iterdir() if p.suffix != ".png")):
        assert key not in text


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_killed_evaluation_resumes_where_it_stopped(trained_run, tmp_path):
    out = replies_only(trained_run[0], tmp_path / "killed")
    args = [
        sys.executable,
        str(ROOT / "training" / "evaluate.py"),
        "--config",
        str(QUICK),
        "--adapter",
        str(trained_run[0] / "adapter"),
        "--output_dir",
        str(out),
    ]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    judged = out / "judged.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not judged.is_file() or len(judged.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = judged.read_text().splitlines()
    assert 2 <= len(before) < 12 and not (out / "report.md").exists()
    again = evaluate("--adapter", str(trained_run[0] / "adapter"), "--output_dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    after = judged.read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 12  # kept, not redone
    assert f"resuming: {len(before)} judgements already made" in again.stderr
    assert json.loads((out / "report.json").read_text())["prompts"] == 3


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_dead_judge_gives_a_clear_message_and_keeps_what_was_scored(trained_run, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = replies_only(trained_run[0], tmp_path / "dead", judged_lines=3)
    proc = evaluate(
        "--adapter",
        str(trained_run[0] / "adapter"),
        "--output_dir",
        str(out),
        "--judge_url",
        f"http://127.0.0.1:{port}/v1",
        "--judge_model",
        "judge",
    )
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()
    assert any(line.startswith("Evaluation stopped: The inference server is not reachable") for line in message), (
        proc.stderr[-2000:]
    )
    assert "3 of 12 judgements are kept" in proc.stderr and "rerun the same command to resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len((out / "judged.jsonl").read_text().splitlines()) == 3 and not (out / "report.md").exists()
