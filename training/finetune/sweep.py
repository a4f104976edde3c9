"""Hyperparameter sweeps over train.py: each trial is a normal run folder named by its settings, so a
killed sweep continues where it stopped (finished trials are read back, an interrupted one resumes
from its newest checkpoint). A grid runs every combination; a search samples the same choices with
Optuna (random or TPE), its study kept in sqlite inside the sweep folder. Results: sweep.json,
sweep.md and plots."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chat_runtime.errors import UserError

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
STUDY = "sweep"


@dataclass
class Trial:
    """One run of the sweep and what it measured."""

    name: str
    params: dict
    run_dir: str
    eval_loss: float | None = None
    final_train_loss: float | None = None
    global_step: int | None = None
    done: bool = False
    log_history: list = field(default_factory=list, repr=False)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`key=v1,v2` items -> {key: [v1, v2]}, refusing a malformed one with the fix."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v for v in values.split(",") if v]
        if not sep or not key or not choices:
            raise UserError(f"--grid item {item!r} is not key=value1,value2 (e.g. learning_rate=1e-4,2e-4)")
        grid[key.removeprefix("--")] = choices
    return grid


def check_keys(grid: dict, known: set[str]) -> None:
    unknown = sorted(set(grid) - known)
    if unknown:
        raise UserError(f"--grid names settings train.py does not have: {', '.join(unknown)} (see train.py --help)")


def trial_name(params: dict) -> str:
    """A folder name that is the trial's settings, so the same settings find the same folder."""
    return ",".join(f"{k}={v}" for k, v in params.items()).replace("/", "_")


def combinations(grid: dict[str, list[str]]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def read_trial(params: dict, out: Path) -> Trial:
    """A trial's folder as it stands: finished (its metrics) or not."""
    name = trial_name(params)
    run_dir = out / "trials" / name
    trial = Trial(name, params, str(run_dir))
    metrics_file = run_dir / "adapter" / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        trial.eval_loss = metrics.get("eval", {}).get("loss")
        trial.final_train_loss = metrics.get("final_train_loss")
        trial.global_step = metrics.get("global_step")
        trial.log_history = metrics.get("log_history", [])
        trial.done = True
    return trial


def run_trial(params: dict, out: Path, config: str, passthrough: list[str]) -> Trial:
    """Train one trial (or resume it, or read it back when finished)."""
    trial = read_trial(params, out)
    if trial.done:
        return trial
    settings = [a for k, v in params.items() for a in (f"--{k}", v)]
    cmd = [sys.executable, str(TRAIN), "--config", config, *passthrough, *settings, "--output_dir", trial.run_dir]
    log_file = Path(trial.run_dir).parent / f"{trial.name}.log"  # names may hold dots (0.005)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    if code:
        raise UserError(f"trial {trial.name} failed (exit {code}); its output is in {log_file}")
    return read_trial(params, out)


def objective(trial: Trial) -> float:
    """Lower is better: the eval loss, or the final training loss where nothing was held out."""
    value = trial.eval_loss if trial.eval_loss is not None else trial.final_train_loss
    return math.inf if value is None else value


def search(grid: dict, out: Path, config: str, passthrough: list[str], trials: int, sampler: str) -> list[Trial]:
    """Optuna picks `trials` settings from the grid's choices; its study lives in out/sweep.db, and a
    trial a killed sweep left running is run again (its folder resumes)."""
    import optuna

    samplers = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{out / 'sweep.db'}",
        sampler=samplers[sampler](seed=0),
        direction="minimize",
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(stale.params)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    def run(t: optuna.Trial) -> float:
        params = {k: t.suggest_categorical(k, v) for k, v in grid.items()}
        return objective(run_trial(params, out, config, passthrough))

    study.optimize(run, n_trials=max(trials - done, 0), catch=())
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    unique = {trial_name(t.params): t.params for t in complete}
    return [read_trial(p, out) for p in unique.values()]


def summary(trials: list[Trial], grid: dict) -> dict:
    """sweep.json's content: every finished trial, and the best by objective."""
    finished = [t for t in trials if t.done]
    best = min(finished, key=objective) if finished else None
    return {
        "objective": "eval loss (final training loss where nothing was held out); lower is better",
        "grid": grid,
        "best": best.name if best else None,
        "best_params": best.params if best else None,
        "trials": [{k: v for k, v in asdict(t).items() if k != "log_history"} for t in finished],
    }


def table(result: dict) -> str:
    """sweep.md: one row per trial, best first marked."""
    keys = list(result["grid"])
    head = ["trial", *keys, "eval loss", "final train loss", "steps"]
    rows = sorted(result["trials"], key=lambda t: objective(Trial(**t)))
    lines = [
        f"# Sweep: {len(rows)} trials\n",
        f"Best: `{result['best']}` ({result['objective']}).\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for t in rows:
        mark = " (best)" if t["name"] == result["best"] else ""
        cells = [f"`{t['name']}`{mark}", *(str(t["params"][k]) for k in keys)]
        cells += [_fmt(t["eval_loss"]), _fmt(t["final_train_loss"]), str(t["global_step"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![training loss per epoch](train_loss_per_epoch.png)", "![eval loss](eval_loss.png)"]
    lines += [f"![final eval loss vs {k}](final_vs_{k}.png)" for k in keys]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def loss_per_epoch(history: list[dict]) -> dict[int, float]:
    """Mean logged training loss in each epoch (epoch 1 = the first pass, a part of it in short runs)."""
    by_epoch: dict[int, list[float]] = {}
    for e in history:
        if "loss" in e and "epoch" in e:
            by_epoch.setdefault(max(math.ceil(e["epoch"] - 1e-9), 1), []).append(e["loss"])
    return {k: sum(v) / len(v) for k, v in sorted(by_epoch.items())}


def plots(trials: list[Trial], grid: dict, out: Path) -> list[Path]:
    """Training loss per epoch and eval loss curves for every trial, and final eval loss vs each setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [t for t in trials if t.done]
    written = []
    for name, ylabel, series in (
        ("train_loss_per_epoch", "mean training loss", lambda t: loss_per_epoch(t.log_history)),
        ("eval_loss", "eval loss", lambda t: {e["step"]: e["eval_loss"] for e in t.log_history if "eval_loss" in e}),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for t in finished:
            points = series(t)
            ax.plot(list(points), list(points.values()), marker="o", label=t.name)
        ax.set_xlabel("epoch" if "epoch" in name else "step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
        written.append(_save(fig, out / f"{name}.png"))
    for key in grid:
        fig, ax = plt.subplots(figsize=(5, 4))
        xs = [str(t.params[key]) for t in finished]
        ax.scatter(xs, [objective(t) for t in finished])
        ax.set_xlabel(key)
        ax.set_ylabel("final eval loss")
        written.append(_save(fig, out / f"final_vs_{key}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}")
    fig.tight_layout()
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_results(trials: list[Trial], grid: dict, out: Path) -> dict:
    """sweep.json, sweep.md and the plots, each written whole."""
    result = summary(trials, grid)
    for name, text in (("sweep.json", json.dumps(result, indent=2)), ("sweep.md", table(result))):
        tmp = out / f".{name}"
        tmp.write_text(text)
        tmp.replace(out / name)
    plots(trials, grid, out)
    return result
