"""Is the fine-tune better than its base? Held-out loss, replies of both on the runtime's engines,
a judge's 1-5 rubric scores and pairwise verdicts (both orders), and a report folder.

In story mode (`--story_titles`) each row is a story (title, genre, tone) and each model's reply is
the storymaker's opening turn, told by the runtime's StoryTeller exactly as the app tells it, judged
on the story rubric.

Stages write what they finish to the output folder as they go (`replies.jsonl`, `loss.json`,
`judged.jsonl`), so a killed run, or one whose judge went away, resumes where it stopped when the
same command runs again. The report files are written last, each whole or not at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chat_runtime import ChatService, GenerationParams, ModelSpec, validate
from chat_runtime.engines import load_engine
from chat_runtime.spec import base_of_adapter
from chat_runtime.story import Story, StoryTeller, format_turn
from chat_runtime.votes import settings_of

from . import judge as judging

log = logging.getLogger(__name__)

SIDES = ("base", "finetuned")
SETTINGS_FILE, REPLIES_FILE, LOSS_FILE, JUDGED_FILE = "evaluation.json", "replies.jsonl", "loss.json", "judged.jsonl"
REPORT_FILES = ("report.md", "report.json", "report.png")
# Settings that change no stored result: a rerun with another value of these still resumes.
FREE_SETTINGS = ("output_dir", "overwrite", "judge_api_key_env")
# Story mode tells each story under the storymaker's own narrator instructions, read from the app's
# folder like the judge's rubrics from training/eval (the training code never imports the app: Gradio).
STORYMAKER_SYSTEM_PROMPT = Path(__file__).resolve().parents[2] / "storymaker_app" / "system_prompt.md"
STORY_RUBRIC = judging.DEFAULT_RUBRIC.with_name("story_rubric.md")
STORY_KEYS = ("title", "genre", "tone")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class EvalArgs:
    adapter: str | None = _help(
        "the fine-tune: a LoRA adapter (folder or Hub id), a merged model, or a .gguf file", default=None
    )
    base: str | None = _help(
        "the base to compare with (Hub id, folder or .gguf); default: the adapter's own base", default=None
    )
    prompts_file: str | None = _help(
        "prompts to answer, one a line (no loss: there are no reference replies)", default=None
    )
    dataset: str | None = _help("a dataset (Hub id or local file) whose conversations are the prompts", default=None)
    dataset_format: str = _help("auto, sharegpt, messages, alpaca, prompt_response", default="auto")
    dataset_split: str = _help("split of a Hub --dataset", default="test")
    story_titles: str | None = _help(
        'story mode: a JSONL file of stories, one {"title", "genre", "tone"} object a line (genre and tone '
        "optional), e.g. training/eval/story_titles.jsonl; each model's reply is the storymaker's opening turn "
        "of each story, judged on training/eval/story_rubric.md (no loss: there are no reference replies)",
        default=None,
    )
    max_rows: int = _help(
        "use at most this many prompts / rows / stories (default source: the run's held-out split)", default=20
    )
    system_prompt: str | None = _help(
        "system prompt for prompts without one (default: the model template's)", default=None
    )
    temperature: float = _help("sampling of both models' replies (0 = greedy, reproducible)", default=0.0)
    top_p: float = _help("top-p of both models' replies", default=0.9)
    max_new_tokens: int = _help("longest reply of either model, in tokens", default=128)
    repetition_penalty: float = _help("repetition penalty of both models' replies", default=1.1)
    max_seq_length: int = _help("rows longer than this many tokens are cut for the loss", default=2048)
    judge_gguf: str | None = _help(
        "local judge: a .gguf path, owner/repo/file.gguf, or `embedded` (the default "
        "when no --judge_url: a 135M judge, weak)",
        default=None,
    )
    judge_url: str | None = _help("judge on an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1", default=None)
    judge_model: str | None = _help("the model name the judge server serves", default=None)
    judge_api_key_env: str = _help(
        "environment variable holding the judge server's key (never logged)", default="FINCH_JUDGE_API_KEY"
    )
    judge_max_new_tokens: int = _help("longest judge answer, in tokens", default=64)
    rubric: str | None = _help(
        "rubric file the judge applies (default: training/eval/rubric.md; with --story_titles, "
        "training/eval/story_rubric.md)",
        default=None,
    )
    output_dir: str | None = _help("report folder (default: `evaluation` beside a local adapter folder)", default=None)
    overwrite: bool = _help("start over instead of resuming the evaluation in output_dir", default=False)
    trust_remote_code: bool = _help("run a model repo's own Python code (off unless you trust it)", default=False)


class EvaluationError(RuntimeError):
    """The evaluation cannot run or cannot go on; the message says what to do."""


def check(args: EvalArgs) -> None:
    """Refuse impossible settings at start, every problem at once."""
    problems = []
    if not args.adapter:
        problems.append(
            "--adapter is required: the fine-tune to evaluate (adapter folder, Hub id, merged model or .gguf)"
        )
    if args.prompts_file and args.dataset:
        problems.append("give --prompts_file or --dataset, not both")
    if args.story_titles and (args.prompts_file or args.dataset):
        problems.append("give --story_titles (stories) or --prompts_file / --dataset (prompts), not both")
    if args.story_titles and args.system_prompt:
        problems.append(
            "--system_prompt does not apply with --story_titles: stories are told under the storymaker's own "
            "(storymaker_app/system_prompt.md); leave it out"
        )
    if args.judge_url and args.judge_gguf:
        problems.append("give --judge_url (a server) or --judge_gguf (a local file), not both")
    if args.judge_url and not args.judge_model:
        problems.append("--judge_url needs --judge_model (the name the server serves; GET /v1/models lists it)")
    if args.max_rows < 1 or args.judge_max_new_tokens < 1:
        problems.append("max_rows and judge_max_new_tokens must be at least 1")
    try:
        sampling(args)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise EvaluationError("The evaluation cannot run:\n  - " + "\n  - ".join(problems))


def sampling(args: EvalArgs) -> GenerationParams:
    """One set of sampling settings for both models, checked by the runtime's own rules."""
    return validate(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )


def rubric_file(args: EvalArgs) -> Path:
    """The rubric the judge applies: --rubric, else the story rubric in story mode, else the default."""
    if args.rubric:
        return Path(args.rubric).expanduser()
    return STORY_RUBRIC if args.story_titles else judging.DEFAULT_RUBRIC


def output_dir(args: EvalArgs) -> Path:
    if args.output_dir:
        return Path(args.output_dir).expanduser().resolve()
    adapter = Path(args.adapter).expanduser()
    return (adapter.resolve().parent / "evaluation") if adapter.exists() else Path("evaluation").resolve()


# --- what is compared ---------------------------------------------------------------------------


def side_specs(args: EvalArgs) -> dict[str, ModelSpec]:
    """The runtime spec of each side: a GGUF on llama.cpp, else transformers (+ peft)."""
    trust = args.trust_remote_code
    tuned, base = args.adapter, args.base
    if _is_gguf(tuned):
        finetuned = ModelSpec(engine="llamacpp", gguf=tuned)
    elif _is_adapter(tuned):
        finetuned = ModelSpec(
            base=base if base and not _is_gguf(base) else None, adapter=tuned, trust_remote_code=trust
        )
        base = base or base_of_adapter(tuned)
    else:
        finetuned = ModelSpec(base=tuned, trust_remote_code=trust)
    if not base:
        raise EvaluationError(
            f"{tuned} is not a LoRA adapter, so it does not name its base: give --base "
            "(the model it was fine-tuned from)"
        )
    base_spec = (
        ModelSpec(engine="llamacpp", gguf=base) if _is_gguf(base) else ModelSpec(base=base, trust_remote_code=trust)
    )
    return {"base": base_spec, "finetuned": finetuned}


def _is_gguf(source: str | None) -> bool:
    return bool(source) and source.lower().endswith(".gguf")


def _is_adapter(source: str) -> bool:
    local = Path(source).expanduser()
    if local.is_dir():
        return (local / "adapter_config.json").is_file()
    try:
        from huggingface_hub import file_exists

        return file_exists(source, "adapter_config.json")
    except Exception:  # offline: treat a Hub id as an adapter; loading it says what is wrong
        return True


# --- the prompts --------------------------------------------------------------------------------


@dataclass
class Rows:
    """Conversations to answer; with references (a last assistant turn) the loss is measured too."""

    conversations: list[list[dict]]
    with_reference: bool
    source: str
    # Story mode: row i is the opening turn of stories[i], and its conversation is what the model is sent.
    stories: list[Story] | None = None

    def prompt(self, i: int) -> list[dict]:
        """The conversation up to and including the last user turn."""
        messages = self.conversations[i]
        return messages[:-1] if self.with_reference else messages


def load_rows(args: EvalArgs) -> Rows:
    """Stories from --story_titles, prompts from --prompts_file, --dataset, or the held-out split of the
    adapter's own run."""
    from . import data

    if args.story_titles:
        return story_rows(Path(args.story_titles).expanduser(), args.max_rows)
    if args.prompts_file:
        path = Path(args.prompts_file).expanduser()
        if not path.is_file():
            raise EvaluationError(f"prompts file {path} does not exist: give a text file with one prompt a line")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise EvaluationError(f"prompts file {path} has no prompts: write one prompt a line")
        return Rows([[{"role": "user", "content": p}] for p in lines[: args.max_rows]], False, str(path))
    try:
        if args.dataset:
            raw = data.load_source(args.dataset, args.dataset_split)
            clean, dropped = data.convert(raw, args.dataset_format)
            source = f"{args.dataset} ({args.dataset_split})"
        else:
            clean, source = _held_out(args), f"the held-out split of {args.adapter}'s run"
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise EvaluationError(f"Could not read the prompts: {err}") from None
    if not len(clean):
        raise EvaluationError(f"{source} has no usable conversations")
    conversations = clean.select(range(min(args.max_rows, len(clean))))["messages"]
    return Rows(conversations, True, source)


def story_rows(path: Path, max_rows: int) -> Rows:
    """Each story's conversation as the storymaker sends it: its narrator's system prompt and the opening
    request (title, genre, tone). The judge reads the same conversation, then the turn."""
    stories = read_stories(path)[:max_rows]
    system = STORYMAKER_SYSTEM_PROMPT.read_text(encoding="utf-8").strip()
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": story.opening_request()}]
        for story in stories
    ]
    return Rows(
        conversations, False, f"the story titles in {path} (each reply: the storymaker's opening turn)", stories
    )


def read_stories(path: Path) -> list[Story]:
    """Stories from a JSONL file of {"title", "genre", "tone"} rows; a bad row is an error naming its line."""
    shape = 'one {"title": ..., "genre": ..., "tone": ...} object a line (genre and tone optional)'
    if not path.is_file():
        raise EvaluationError(f"story titles file {path} does not exist: give a JSONL file with {shape}")
    stories = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise EvaluationError(f"{path}, line {n}: not JSON; write {shape}") from None
        if not isinstance(row, dict) or not row.get("title"):
            raise EvaluationError(f'{path}, line {n}: no "title"; write {shape}')
        unknown = sorted(set(row) - set(STORY_KEYS))
        if unknown:  # a misspelt "genre" would otherwise be dropped without a word
            raise EvaluationError(f"{path}, line {n}: unknown key(s) {', '.join(unknown)}; write {shape}")
        try:
            stories.append(Story.new(*(row.get(key, "") for key in STORY_KEYS)))
        except ValueError as err:  # a title that is not text, or only blanks
            raise EvaluationError(f"{path}, line {n}: {err}") from None
    if not stories:
        raise EvaluationError(f"story titles file {path} has no stories: write {shape}")
    return stories


def _held_out(args: EvalArgs):
    """The run's own eval split, rebuilt from the recipe the adapter carries (same data, same seed)."""
    from . import data
    from .run import RECIPE_FILE, saved_recipe

    r = saved_recipe(Path(args.adapter).expanduser())
    if r is None:
        raise EvaluationError(
            f"{args.adapter} is not a Finch run's adapter folder (no {RECIPE_FILE}), so it has "
            "no held-out split: give --prompts_file or --dataset"
        )
    if not r.get("eval_fraction"):
        raise EvaluationError("the run held out no rows (eval_fraction 0): give --prompts_file or --dataset")
    prepared = data.prepare(
        r["dataset"],
        r["dataset_format"],
        r["dataset_weight"],
        r["eval_fraction"],
        r["seed"],
        r.get("max_rows"),
        r.get("dataset_split", "train"),
    )
    return prepared.eval


# --- stored results (append as they come, read back to resume) ----------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """Complete lines of a JSONL file; a line cut short by a kill is ignored (it is redone)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all (a temp file renamed into place)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def prepare_folder(out: Path, settings: dict, overwrite: bool) -> None:
    """Create the folder, or check that what it holds was made with these settings (then resume)."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / SETTINGS_FILE
    if overwrite:
        for name in (SETTINGS_FILE, REPLIES_FILE, LOSS_FILE, JUDGED_FILE, *REPORT_FILES):
            (out / name).unlink(missing_ok=True)
    elif saved.is_file():
        old = json.loads(saved.read_text())
        drift = sorted(k for k in set(old) | set(settings) if k not in FREE_SETTINGS and old.get(k) != settings.get(k))
        if drift:
            raise EvaluationError(
                f"{out} holds an evaluation made with other settings ({', '.join(drift)}): run the "
                "same command to resume it, or use --overwrite true or another --output_dir."
            )
    write_atomic(saved, json.dumps(settings, indent=1))


# --- replies and loss ---------------------------------------------------------------------------


def answer(service: ChatService, prompt: list[dict], default_system: str | None, params: GenerationParams) -> str:
    """One reply through the runtime (templating, trimming, the engine), as the apps get it."""
    system = next((m["content"] for m in prompt if m["role"] == "system"), default_system)
    turns = [m for m in prompt if m["role"] != "system"]
    text = ""
    try:
        for reply in service.reply(turns[-1]["content"], turns[:-1], system, params):
            text = reply.text
    except ValueError as err:  # a prompt the runtime refuses (too long): recorded, judged as empty
        log.warning("a prompt was not answered: %s", err)
    return text


def opening_turn(service: ChatService, prompt: list[dict], story: Story, params: GenerationParams) -> str:
    """The story's opening turn as the storymaker tells it (StoryTeller: its grammar, its fallbacks) under
    the prompt's system prompt, stored as the text of the turn: the scene, "Choices:", the numbered choices."""
    system = next(m["content"] for m in prompt if m["role"] == "system")
    *_, last = StoryTeller(service, system).tell(story, None, params)
    return format_turn(last.turn.scene, last.turn.choices)


def reply_to(service: ChatService, rows: Rows, i: int, args: EvalArgs, params: GenerationParams) -> str:
    """Row i's reply: a story's opening turn in story mode, else the chat reply to the prompt."""
    if rows.stories:
        return opening_turn(service, rows.prompt(i), rows.stories[i], params)
    return answer(service, rows.prompt(i), args.system_prompt, params)


def mean_loss(engine, conversations: list[list[dict]], max_seq_length: int) -> float | None:
    """Token-weighted loss on the assistant replies (the training masks), for a transformers engine."""
    import torch
    from datasets import Dataset

    from . import masking

    rows, _ = masking.tokenize(
        Dataset.from_list([{"messages": c} for c in conversations]), engine.tokenizer, max_seq_length
    )
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=engine.model.device)
            labels = torch.tensor([row["labels"]], device=engine.model.device)
            counted = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one
            if counted:
                total += float(engine.model(input_ids=ids, labels=labels).loss) * counted
                tokens += counted
    return total / tokens if tokens else None


def run_side(side: str, spec: ModelSpec, rows: Rows, args: EvalArgs, out: Path) -> None:
    """Replies (and loss, with references on a transformers engine) of one side, skipping what is stored."""
    from tqdm.auto import tqdm

    done = {r["index"] for r in read_jsonl(out / REPLIES_FILE) if r["side"] == side}
    losses = json.loads((out / LOSS_FILE).read_text()) if (out / LOSS_FILE).is_file() else {}
    todo = [i for i in range(len(rows.conversations)) if i not in done]
    if not todo and (side in losses or not rows.with_reference):
        return
    engine = load_engine(spec)
    service, params = ChatService(engine), sampling(args)
    for i in tqdm(todo, desc=f"Replies ({side})", unit="prompt"):
        append_jsonl(
            out / REPLIES_FILE,
            {
                "side": side,
                "index": i,
                "model": engine.label,
                "reply": reply_to(service, rows, i, args, params),
            },
        )
    if rows.with_reference and side not in losses:
        loss = None
        if engine.name == "transformers":
            # In a worker thread, like generation: torch run on the main thread slows later generate threads.
            with ThreadPoolExecutor(1) as pool:
                loss = pool.submit(mean_loss, engine, rows.conversations, args.max_seq_length).result()
        losses[side] = {"loss": loss, "engine": engine.name}
        write_atomic(out / LOSS_FILE, json.dumps(losses, indent=1))


# --- judging ------------------------------------------------------------------------------------


def judge_tasks(n: int) -> list[tuple[str, int]]:
    """Every judgement, keyed: a score per side, and the pair in both orders (fine-tune first, base first)."""
    kinds = ("score:base", "score:finetuned", "pair:finetuned_first", "pair:base_first")
    return [(kind, i) for i in range(n) for kind in kinds]


def run_judge(judge: judging.Judge, rows: Rows, replies: dict, out: Path) -> None:
    """Ask the judge everything not yet in judged.jsonl; a judge that goes away stops here, results kept."""
    from tqdm.auto import tqdm

    done = {(r["kind"], r["index"]) for r in read_jsonl(out / JUDGED_FILE)}
    tasks = [t for t in judge_tasks(len(rows.conversations)) if t not in done]
    if done:
        log.info("resuming: %d judgements already made, %d to go", len(done), len(tasks))
    for kind, i in tqdm(tasks, desc="Judging", unit="judgement"):
        prompt, base, tuned = rows.prompt(i), replies[("base", i)], replies[("finetuned", i)]
        try:
            if kind.startswith("score:"):
                verdict, raw = judge.score(prompt, replies[(kind.split(":")[1], i)])
            else:
                a, b = (tuned, base) if kind == "pair:finetuned_first" else (base, tuned)
                verdict, raw = judge.compare(prompt, a, b)
        except judging.JudgeUnavailable as err:
            made = len(read_jsonl(out / JUDGED_FILE))
            raise EvaluationError(
                f"{err}\n{made} of {len(judge_tasks(len(rows.conversations)))} judgements are kept in "
                f"{out / JUDGED_FILE}; start the judge again and rerun the same command to resume."
            ) from None
        append_jsonl(out / JUDGED_FILE, {"kind": kind, "index": i, "verdict": verdict, "raw": raw})


# --- the report ---------------------------------------------------------------------------------


def mean_ci(scores: list[int]) -> tuple[float | None, list[float] | None]:
    """Mean and its 95% confidence interval (normal approximation; none below two scores)."""
    if not scores:
        return None, None
    mean = sum(scores) / len(scores)
    if len(scores) < 2:
        return round(mean, 3), None
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
    half = 1.96 * sd / math.sqrt(len(scores))
    return round(mean, 3), [round(mean - half, 3), round(mean + half, 3)]


def outcome(first: str | None, second: str | None) -> str:
    """The fine-tune's result on one prompt from both orders: A in the fine-tune-first order and B in
    the base-first order both mean the fine-tune. Orders that disagree cancel out as a tie."""
    if first is None or second is None:
        return "unparsed"
    mine = {"A": "win", "B": "loss", "tie": "tie"}[first]
    swapped = {"A": "loss", "B": "win", "tie": "tie"}[second]
    return mine if mine == swapped else "tie"


def summarize(
    rows: Rows, replies: dict, judged: dict, losses: dict, labels: dict, judge_info: dict, args: EvalArgs
) -> dict:
    """report.json: per side scores and perplexity, pairwise counts, per-prompt rows."""
    n = len(rows.conversations)
    report: dict = {
        "prompts": n,
        "source": rows.source,
        "judge": judge_info,
        # The person's settings only: a story turn's grammar and DRY penalty are StoryTeller's, not these.
        "settings": settings_of(sampling(args)),
        "rubric": str(rubric_file(args)),
    }
    for side in SIDES:
        scores = [judged[(f"score:{side}", i)] for i in range(n)]
        parsed = [s for s in scores if s is not None]
        mean, ci = mean_ci(parsed)
        entry = {
            "model": labels.get(side),
            "mean_score": mean,
            "ci95": ci,
            "scored": len(parsed),
            "unparsed": len(scores) - len(parsed),
        }
        loss = (losses.get(side) or {}).get("loss")
        if rows.with_reference:
            entry["eval_loss"] = round(loss, 4) if loss is not None else None
            entry["perplexity"] = round(math.exp(min(loss, 50)), 3) if loss is not None else None
        report[side] = entry
    outcomes = [outcome(judged[("pair:finetuned_first", i)], judged[("pair:base_first", i)]) for i in range(n)]
    pairwise = {k: outcomes.count(k) for k in ("win", "tie", "loss", "unparsed")}
    decided = n - pairwise["unparsed"]
    pairwise["win_rate"] = round((pairwise["win"] + 0.5 * pairwise["tie"]) / decided, 3) if decided else None
    pairwise["orders"] = {
        order: {v: sum(judged[(f"pair:{order}", i)] == v for i in range(n)) for v in ("A", "B", "tie", None)}
        for order in ("finetuned_first", "base_first")
    }
    for counts in pairwise["orders"].values():
        counts["unparsed"] = counts.pop(None)
    report["pairwise"] = pairwise
    report["rows"] = [
        {
            "index": i,
            "prompt": rows.prompt(i),
            "base": replies[("base", i)],
            "finetuned": replies[("finetuned", i)],
            "base_score": judged[("score:base", i)],
            "finetuned_score": judged[("score:finetuned", i)],
            "outcome": outcomes[i],
            "verdicts": [judged[("pair:finetuned_first", i)], judged[("pair:base_first", i)]],
        }
        for i in range(n)
    ]
    return report


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value[0]}-{value[1]}" if isinstance(value, list) else str(value)


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def summary_table(report: dict) -> str:
    """The headline tables (scores, perplexity, pairwise) in Markdown: the report's and the model card's."""
    lines = [
        "| model | mean score (1-5) | 95% CI | scored | unparsed | eval loss | perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, name in (("base", "base"), ("finetuned", "fine-tune")):
        s = report[side]
        lines.append(
            f"| {name}: {s['model']} | {_cell(s['mean_score'])} | {_cell(s['ci95'])} | {s['scored']} | "
            f"{s['unparsed']} | {_cell(s.get('eval_loss'))} | {_cell(s.get('perplexity'))} |"
        )
    p = report["pairwise"]
    lines += [
        "",
        "| fine-tune vs base | win | tie | loss | unparsed | win rate (ties count half) |",
        "|---|---|---|---|---|---|",
        f"| {report['prompts']} prompts, both orders | {p['win']} | {p['tie']} | {p['loss']} | {p['unparsed']} | "
        f"{_cell(p['win_rate'])} |",
    ]
    return "\n".join(lines)


def judge_note(judge_info: dict) -> str:
    if judge_info.get("weak"):
        millions = judge_info["params"] / 1e6
        return (
            f"> **A weak judge.** {judge_info['model']} has {millions:.0f}M parameters: a judge this small "
            "misreads rubrics and favours positions, so these scores are a smoke test of the pipeline, not a "
            "verdict on the fine-tune. Judge with a strong model (`--judge_url`, `--judge_model`) before deciding."
        )
    return ""


def markdown(report: dict) -> str:
    p = report["pairwise"]
    orders = p["orders"]
    lines = [
        "# Fine-tune vs base",
        "",
        f"Judge: **{report['judge']['model']}**. {report['prompts']} prompts from {report['source']}; both models "
        f"answered with the same settings ({', '.join(f'{k} {v}' for k, v in report['settings'].items())}). "
        f"Rubric: `{report['rubric']}`.",
        "",
        judge_note(report["judge"]),
        "",
        summary_table(report),
        "",
        "Scores exclude answers the judge gave in no readable form (counted as unparsed). Each pair was asked "
        "twice, the fine-tune shown first and then second; a prompt is a win or a loss only when both orders "
        "agree, otherwise a tie, so position bias cancels. Verdicts per order (A = shown first): fine-tune first: "
        f"{_counts(orders['finetuned_first'])}; base first: {_counts(orders['base_first'])}.",
        "",
        "![score distributions and pairwise outcomes](report.png)",
        "",
        "## Per prompt",
        "",
        "| # | prompt | base score | fine-tune score | pairwise |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        last = row["prompt"][-1]["content"].replace("\n", " ").replace("|", "\\|")
        lines.append(
            f"| {row['index']} | {last[:80]} | {_cell(row['base_score'])} | {_cell(row['finetuned_score'])} | "
            f"{row['outcome']} |"
        )
    lines += ["", "Replies and the judge's verdicts per prompt: `report.json` (`rows`)."]
    return "\n".join(lines) + "\n"


def plot(report: dict) -> bytes:
    """Score distributions of both models and the pairwise outcomes, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    xs = [1, 2, 3, 4, 5]
    for offset, side in ((-0.2, "base"), (0.2, "finetuned")):
        counts = [sum(r[f"{side}_score"] == x for r in report["rows"]) for x in xs]
        left.bar(
            [x + offset for x in xs],
            counts,
            width=0.4,
            label=f"{side} (mean {_cell(report[side]['mean_score'])}, {report[side]['unparsed']} unparsed)",
        )
    left.set(
        xlabel="judge score",
        ylabel="replies",
        title="Score distribution",
        xticks=xs,
        ylim=(0, max(1, report["prompts"]) + 0.5),
    )
    left.legend()
    keys = ("win", "tie", "loss", "unparsed")
    right.bar(keys, [report["pairwise"][k] for k in keys], color=["tab:green", "tab:gray", "tab:red", "tab:olive"])
    right.set(ylabel="prompts", title=f"Fine-tune vs base (win rate {_cell(report['pairwise']['win_rate'])})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_report(out: Path, report: dict) -> None:
    write_atomic(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    write_atomic(out / "report.png", plot(report))
    write_atomic(out / "report.md", markdown(report))


# --- the whole evaluation -----------------------------------------------------------------------


def evaluate(args: EvalArgs) -> tuple[dict, Path]:
    """Run (or resume) every stage and write the report; returns (report.json's content, the folder)."""
    check(args)
    out = output_dir(args)
    rubric = judging.load_rubric(str(rubric_file(args)))
    settings = {k: v for k, v in asdict(args).items() if k != "judge_api_key_env"}
    prepare_folder(out, settings, args.overwrite)
    specs = side_specs(args)
    rows = load_rows(args)
    log.info("%d prompts from %s; output in %s", len(rows.conversations), rows.source, out)
    for side in SIDES:
        run_side(side, specs[side], rows, args, out)
    stored = read_jsonl(out / REPLIES_FILE)
    replies = {(r["side"], r["index"]): r["reply"] for r in stored}
    labels = {r["side"]: r["model"] for r in stored}
    judge = judging.Judge(
        judging.JudgeSpec(
            gguf=args.judge_gguf, url=args.judge_url, model=args.judge_model, api_key_env=args.judge_api_key_env
        ),
        rubric,
        args.judge_max_new_tokens,
    )
    run_judge(judge, rows, replies, out)
    judged = {(r["kind"], r["index"]): r["verdict"] for r in read_jsonl(out / JUDGED_FILE)}
    unparsed = sum(v is None for v in judged.values())
    if unparsed * 2 > len(judged):
        log.warning(
            "the judge gave no readable verdict in %d of %d answers (its raw answers are in %s): use a stronger "
            "judge or raise --judge_max_new_tokens",
            unparsed,
            len(judged),
            out / JUDGED_FILE,
        )
    losses = json.loads((out / LOSS_FILE).read_text()) if (out / LOSS_FILE).is_file() else {}
    judge_info = {"model": judge.label, "params": judge.params_count, "weak": judge.weak}
    report = summarize(rows, replies, judged, losses, labels, judge_info, args)
    write_report(out, report)
    return report, out


# --- after training (train.py --evaluate true) --------------------------------------------------


def eval_args_from(config: str | None, **overrides) -> EvalArgs:
    """EvalArgs from evaluate.py's YAML (unknown keys are errors) with `overrides` on top."""
    from transformers import HfArgumentParser

    base = HfArgumentParser(EvalArgs).parse_yaml_file(config, allow_extra_keys=False)[0] if config else EvalArgs()
    for key, value in overrides.items():
        setattr(base, key, value)
    return base


def card_section(report: dict) -> str:
    """The model card's evaluation section."""
    return (
        f"## Evaluation (`python training/evaluate.py`)\n\n{report['prompts']} held-out prompts, judged by "
        f"{report['judge']['model']} on a 1-5 rubric and pairwise (both orders).\n\n{summary_table(report)}\n\n"
        f"{judge_note(report['judge'])}\n"
    )


def evaluate_run(adapter_dir: Path, run_dir: Path, config: str | None) -> dict | None:
    """Evaluate a just-trained adapter on its held-out split into `run_dir/evaluation` and add the table
    to its model card. Whatever goes wrong, the adapter is kept and the card says how to run it again."""
    from .run import saved_recipe

    overrides = dict(adapter=str(adapter_dir), output_dir=str(run_dir / "evaluation"), overwrite=True)
    if not (adapter_dir / "adapter_config.json").is_file():  # a full fine-tune names its base in its recipe
        overrides["base"] = (saved_recipe(adapter_dir) or {}).get("base_model_id")
    try:
        # A fresh adapter: results from an earlier run in the same folder are not resumed.
        report, _ = evaluate(eval_args_from(config, **overrides))
        section = card_section(report)
    except Exception as err:  # noqa: BLE001 - never lose a trained adapter to a failed evaluation
        log.warning("evaluation failed (%s: %s); the adapter is kept", type(err).__name__, err)
        report, section = (
            None,
            (
                "## Evaluation\n\nNot evaluated in this run. Run `python training/evaluate.py "
                "--adapter <this folder>`.\n"
            ),
        )
    card = adapter_dir / "README.md"
    write_atomic(card, card.read_text().rstrip("\n") + "\n\n" + section)
    return report
