"""The sigma sweep: queue it as DVC experiments, then tabulate and plot what finished.

    noisymaml sweep run --dataset sinusoid        # queue, run one at a time, write the report
    noisymaml sweep run --dataset omniglot --shard 2/3 --jobs 4   # this machine's third, 4 at once
    noisymaml sweep report --dataset sinusoid     # (re)write it from `dvc exp show --json`

Every run is a `dvc exp run` of the noisy chain (`feedback@<dataset>`, which trains noisy MAML,
evaluates it and runs the feedback ablation; or only up to the evaluation) at one
(noise.where, noise.sigma, seed); sigma 0
is run once per seed (noise off: the placement means nothing) and is plain MAML. Rows are
means ± 95% CI over seeds. The configuration is chosen on the validation tasks alone; the test
columns are reported, never used to choose. Failed experiments are listed, not dropped silently.

A grid spread over machines: each queues only its share of the grid points (`Shard`; the
shares partition the grid whatever their number), runs it and pushes its experiments
(`dvc exp push`) to the shared git and DVC remotes; after `dvc exp pull` anywhere, the report
covers every share, as if one machine had run the whole grid.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from noisymaml.core.metrics import mean_ci95
from noisymaml.datasets import DATASETS
from noisymaml.errors import DataError, NoisyMamlError
from noisymaml.pipeline.paths import metrics_path

SIGMAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)  # log-spaced, and 0 (plain MAML)
SEEDS = (0, 1, 2)
PLACEMENTS = ("inner", "outer", "both")
NO_NOISE = "off"
SWEPT = ("noise", "seed")  # the params.yaml sections a sweep varies
# (column title, method, metrics group, pre/post)
COLUMNS = (
    ("validation, post", "noisy_maml", "val", "post"),
    ("test, post", "noisy_maml", "test", "post"),
    ("memorisation index (training tasks, pre)", "noisy_maml", "train_tasks", "pre"),
    ("+ feedback, held-out test, post", "noisy_maml_feedback", "test_heldout_tasks", "post"),
    ("continued without feedback, held-out test, post", "noisy_maml_continued",
     "test_heldout_tasks", "post"),
    ("+ feedback, feedback test tasks, post", "noisy_maml_feedback", "test_feedback_tasks", "post"),
    ("continued without feedback, feedback test tasks, post", "noisy_maml_continued",
     "test_feedback_tasks", "post"),
)
REQUIRED = "noisy_maml"  # every sweep run trains and evaluates it
PLOTTED = (("test, post", "test tasks, post-adaptation"),
           ("memorisation index (training tasks, pre)", "memorisation index (training tasks, pre)"))
PLACEMENT_COLORS = {NO_NOISE: "black", "inner": "tab:blue", "outer": "tab:orange", "both": "tab:green"}


@dataclass(frozen=True)
class SweepRun:
    name: str
    sigma: float
    where: str
    seed: int
    metrics: dict[str, dict]  # metrics file path -> its content

    @property
    def setting(self) -> tuple[str, float]:
        """(placement, sigma); every sigma-0 run is the one no-noise setting."""
        return (NO_NOISE, 0.0) if self.sigma == 0 else (self.where, self.sigma)


@dataclass(frozen=True)
class FailedRun:
    name: str
    params: str
    error: str


# --- queueing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """The `index`-th of `count` shares of a grid (1-based): every count-th point from the index-th,
    so the shares are disjoint, cover the grid, and differ in size by at most one point."""

    index: int = 1
    count: int = 1

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: expected i/n with 1 <= i <= n")

    def take(self, points: list) -> list:
        return points[self.index - 1::self.count]


def grid_points(sigmas=SIGMAS, seeds=SEEDS, placements=PLACEMENTS) -> list[dict[str, float | str | int]]:
    """The grid's experiments as params.yaml settings, seed by seed: sigma 0 once per seed (noise
    off: the placement means nothing, so it stays the baseline's), every other sigma per placement."""
    points: list[dict[str, float | str | int]] = []
    for seed in seeds:
        for sigma in sigmas:
            if sigma == 0:
                points.append({"noise.sigma": sigma, "seed": seed})
            else:
                points += [{"noise.sigma": sigma, "noise.where": where, "seed": seed} for where in placements]
    return points


def queue_commands(dataset: str, sigmas=SIGMAS, seeds=SEEDS, placements=PLACEMENTS,
                   feedback: bool = True, shard: Shard = Shard()) -> list[list[str]]:
    """One `dvc exp run --queue` per grid point of the shard.

    Without feedback each run stops after evaluating noisy MAML (about half the time)."""
    target = f"feedback@{dataset}" if feedback else f"evaluate_noisy@{dataset}-maml"
    return [["dvc", "exp", "run", "--queue",
             *(arg for key, value in point.items() for arg in ("-S", f"{key}={_shown(value)}")), target]
            for point in shard.take(grid_points(sigmas, seeds, placements))]


def _shown(value: float | str | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_queue(commands: list[list[str]], jobs: int = 1, poll_seconds: float = 30.0, log=print) -> None:
    """Queue the experiments, run them with `jobs` workers, and wait until the queue is empty.

    One worker on a small CPU (two torch runs each slow down several-fold); on a machine with N
    GPUs, N workers: every run's stages take a GPU of their own (`device: auto`)."""
    for command in commands:
        _checked(command)
    _checked(["dvc", "queue", "start", "--jobs", str(jobs)])
    while True:
        status = _checked(["dvc", "queue", "status"])
        waiting = [line for line in status.splitlines() if " Queued " in f" {line} " or
                   " Running " in f" {line} "]
        if not waiting:
            return
        log(f"[sweep] {len(waiting)} experiment(s) queued or running")
        time.sleep(poll_seconds)


def _checked(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NoisyMamlError(f"`{' '.join(command)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


# --- collecting ---------------------------------------------------------------------------

def _params_of(rev: dict) -> dict:
    return ((rev.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data", {})


def _metrics_of(rev: dict) -> dict[str, dict]:
    metrics = (rev.get("data") or {}).get("metrics") or {}
    return {path: m["data"] for path, m in metrics.items() if "data" in m}


def _changes_more_than_noise(params: dict, base_params: dict) -> bool:
    """Whether an experiment changed params other than the sweep's own (`SWEPT`)."""
    return any(params.get(key) != base_params.get(key)
               for key in (params.keys() | base_params.keys()) - set(SWEPT))


def _own_metrics(params: dict, metrics: dict, base_params: dict,
                 base_metrics: dict[str, dict]) -> dict[str, dict]:
    """The metrics files an experiment produced itself. DVC lists every metrics file of the
    workspace: those of stages the experiment did not run (another dataset's, or feedback after
    `--no-feedback`) still hold the baseline's values although noise or seed changed."""
    if all(params.get(key) == base_params.get(key) for key in SWEPT):
        return metrics
    return {path: content for path, content in metrics.items() if content != base_metrics.get(path)}


def collect(doc: list, dataset: str) -> tuple[list[SweepRun], list[FailedRun]]:
    """Finished experiments that ran `dataset`'s noisy chain, and failed experiments, of a
    `dvc exp show --json` document (queued and running ones are left out)."""
    runs, failed = [], []
    required = metrics_path(dataset, REQUIRED).as_posix()
    for baseline in doc:
        base_params, base_metrics = _params_of(baseline), _metrics_of(baseline)
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {"state": "success"}
            rev = experiment["revs"][0]
            params = _params_of(rev)
            noise = params.get("noise", {})
            described = (f"noise.sigma={noise.get('sigma')} noise.where={noise.get('where')} "
                         f"seed={params.get('seed')}")
            if executor.get("state") == "failed" or rev.get("error"):
                failed.append(FailedRun(rev["name"], described, str(rev.get("error") or "failed")))
                continue
            if executor.get("state") != "success" or not rev.get("data"):
                continue
            if _changes_more_than_noise(params, base_params):
                continue  # another study (e.g. intershuffle tasks), not a point of the grid
            metrics = _metrics_of(rev)
            if required not in metrics:
                raise DataError(f"experiment {rev['name']}: no {required}")
            metrics = _own_metrics(params, metrics, base_params, base_metrics)
            if required not in metrics:
                continue  # the baseline's file: a run of another dataset's sweep
            runs.append(SweepRun(rev["name"], noise["sigma"], noise.get("where", "both"),
                                 params["seed"], metrics))
    return _one_per_grid_point(runs), failed


def _one_per_grid_point(runs: list[SweepRun]) -> list[SweepRun]:
    """One run per (setting, seed): a re-run of a grid point (e.g. with feedback added) replaces
    the run with fewer metrics files instead of counting as another seed."""
    kept: dict[tuple, SweepRun] = {}
    for run in runs:
        key = (*run.setting, run.seed)
        if key not in kept or len(run.metrics) > len(kept[key].metrics):
            kept[key] = run
    return list(kept.values())


@dataclass(frozen=True)
class Row:
    where: str
    sigma: float
    seeds: list[int]
    cells: dict[str, tuple[float, float] | None]  # column title -> (mean, 95% half-width)


def sweep_rows(runs: list[SweepRun], dataset: str) -> list[Row]:
    """One row per (placement, sigma), means ± 95% CI over seeds; the no-noise row first."""
    if not runs:
        raise DataError("no finished experiments in the document (queue them with `noisymaml "
                        "sweep run`, or wait for `dvc queue status` to show them done)")
    key = metric_key(dataset)
    groups: dict[tuple[str, float], list[SweepRun]] = defaultdict(list)
    for run in runs:
        groups[run.setting].append(run)
    order = sorted(groups, key=lambda s: (s[0] != NO_NOISE, PLACEMENTS.index(s[0])
                                          if s[0] in PLACEMENTS else -1, s[1]))
    rows = []
    for where, sigma in order:
        group = groups[(where, sigma)]
        cells = {}
        for title, method, part, stage in COLUMNS:
            values = [_value(run, dataset, method, part, f"{key}_{stage}") for run in group]
            if any(v is None for v in values):
                cells[title] = None
            elif len(values) == 1:  # one seed: the run's own CI over its episodes
                cells[title] = values[0]
            else:
                cells[title] = mean_ci95(torch.tensor([v[0] for v in values], dtype=torch.float64))
        rows.append(Row(where, sigma, sorted(run.seed for run in group), cells))
    return rows


def choose(rows: list[Row], dataset: str) -> Row:
    """The row with the best validation score: test columns never enter."""
    better = max if metric_key(dataset) == "acc" else min
    return better(rows, key=lambda row: row.cells["validation, post"][0])


def metric_key(dataset: str) -> str:
    return DATASETS[dataset].measure.key


def _value(run: SweepRun, dataset: str, method: str, part: str,
           key: str) -> tuple[float, float] | None:
    """(mean, 95% CI over episodes) of a metric of one run; None when a feedback file is absent
    (feedback not run), an error when noisy MAML's own file or a value is missing."""
    path = metrics_path(dataset, method).as_posix()
    if path not in run.metrics and method != REQUIRED:
        return None
    try:
        summary = run.metrics[path][part]
        return float(summary[key]), float(summary.get(f"{key}_ci95", 0.0))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"experiment {run.name}: no number `{part}.{key}` in {path}") from None


# --- writing ------------------------------------------------------------------------------

def sweep_table(rows: list[Row], dataset: str) -> str:
    key = metric_key(dataset)
    header = ["noise.where", "sigma", "seeds", *(title for title, *_ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "| :-- | --: | :-- |" + " --: |" * len(COLUMNS)]
    for row in rows:
        cells = [_format(row.cells[title], key) for title, *_ in COLUMNS]
        lines.append(f"| {row.where} | {row.sigma:g} | {', '.join(map(str, row.seeds))} | "
                     + " | ".join(cells) + " |")
    chosen = choose(rows, dataset)
    test = _format(chosen.cells["test, post"], key)
    lines += ["", f"Chosen on validation {'accuracy' if key == 'acc' else 'MSE'} alone: "
                  f"noise.where = {chosen.where}, sigma = {chosen.sigma:g}; its test score: {test}."]
    return "\n".join(lines)


def plot_sweep(rows: list[Row], dataset: str, path: Path) -> None:
    """Test post-adaptation score and memorisation index against sigma, one line per placement
    (each starting from the shared sigma-0 point), error bars = 95% CI over seeds."""
    key = metric_key(dataset)
    shown = (lambda v: 100 * v) if key == "acc" else (lambda v: v)
    unit = "accuracy (%)" if key == "acc" else "MSE"
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    panels = figure.subplots(1, 2, sharex=True)
    baseline = [row for row in rows if row.where == NO_NOISE]
    positive = [row.sigma for row in rows if row.sigma > 0]
    for axes, (title, label) in zip(panels, PLOTTED):
        for where in PLACEMENTS:
            line = baseline + [row for row in rows if row.where == where]
            if len(line) == len(baseline):
                continue
            cells = [row.cells[title] for row in line]
            axes.errorbar([row.sigma for row in line], [shown(c[0]) for c in cells],
                          yerr=[shown(c[1]) for c in cells], marker="o", capsize=3,
                          color=PLACEMENT_COLORS[where], label=f"noise.where = {where}")
        if positive:
            axes.set_xscale("symlog", linthresh=min(positive))
        axes.set(title=label, xlabel="sigma (0 = plain MAML)", ylabel=unit)
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize="small")
    figure.savefig(path, dpi=100, metadata={"Software": None})


def write_sweep_report(doc: list, dataset: str, out_dir: Path) -> Path:
    """reports/sweep_<dataset>.md and its plot, from a `dvc exp show --json` document."""
    runs, failed = collect(doc, dataset)
    rows = sweep_rows(runs, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = f"sweep_{dataset}.png"
    plot_sweep(rows, dataset, out_dir / image)
    unit = "accuracy" if metric_key(dataset) == "acc" else "MSE"
    lines = [f"# Sigma sweep: {dataset}", "",
             f"{len(runs)} finished experiments; cells are the mean ± 95% CI over seeds of the "
             f"per-run {unit} (each run's own value is a mean over its fixed episodes; a row with "
             "a single seed shows that run's 95% CI over its episodes instead). The "
             "memorisation index is the pre-adaptation score on training tasks. The feedback "
             "ablation (feedback against the same extra iterations without it) is scored on the "
             "held-out test tasks and on the test tasks that fed back their gradients.", "",
             sweep_table(rows, dataset), "", f"![{dataset} sweep]({image})"]
    if failed:
        lines += ["", "Failed experiments (not in the table):", "",
                  *(f"- {f.name} ({f.params}): {f.error}" for f in failed)]
    lines += ["", f"Re-run: `noisymaml sweep run --dataset {dataset}`; rewrite from the "
                  f"experiments: `noisymaml sweep report --dataset {dataset}`."]
    path = out_dir / f"sweep_{dataset}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _format(cell: tuple[float, float] | None, key: str) -> str:
    if cell is None:
        return "n/a"
    mean, half = cell
    if key == "acc":
        return f"{100 * mean:.2f} ± {100 * half:.2f} %"
    return f"{mean:.3f} ± {half:.3f}"
