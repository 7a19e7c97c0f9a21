"""The sigma sweep's report: tabulate and plot the finished experiments.

    noisymaml sweep run --dataset sinusoid        # queue, run one at a time, write the report
    noisymaml sweep run --dataset omniglot --shard 2/3 --jobs 4   # this machine's third, 4 at once
    noisymaml sweep save --dataset sinusoid       # add the finished experiments to reports/results/
    noisymaml sweep report --dataset sinusoid     # (re)write it from reports/results/sinusoid.json

Every run is a `dvc exp run` (queued by `reporting.experiments`) of the noisy chain at one
(noise.where, noise.sigma, seed); sigma 0 is run once per seed (noise off: the placement means
nothing) and is plain MAML. Rows are means ± 95% CI over seeds. The configuration is chosen on
the validation tasks alone; the test columns are reported, never used to choose. Failed
experiments are listed, not dropped silently.

A grid spread over machines: each queues only its share of the grid points (`Shard`; the
shares partition the grid whatever their number), runs it and pushes its experiments
(`dvc exp push`) to the shared git and DVC remotes; after `dvc exp pull` anywhere, the report
covers every share, as if one machine had run the whole grid. The results data
(`reporting.results`, written by `sweep run` and `sweep save`) needs neither: committed, it
rebuilds the report on any clone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from noisymaml.core.metrics import mean_ci95
from noisymaml.datasets import DATASETS
from noisymaml.errors import DataError
from noisymaml.pipeline.paths import metrics_path
from noisymaml.reporting.experiments import PLACEMENTS
from noisymaml.reporting.figures import legend_below, save_png
from noisymaml.reporting.results import results_path

NO_NOISE = "off"
SWEPT = ("noise", "seed")  # the params.yaml sections a sweep varies
# (column title, method, metrics group, pre/post)
COLUMNS = (
    ("validation, post", "noisy_maml", "val", "post"),
    ("test, post", "noisy_maml", "test", "post"),
    ("memorisation index (training tasks, pre)", "noisy_maml", "train_tasks", "pre"),
    ("+ feedback, test, post", "noisy_maml_feedback", "test", "post"),
    ("continued without feedback, test, post", "noisy_maml_continued", "test", "post"),
    ("+ feedback, feedback tasks, post", "noisy_maml_feedback", "test_feedback_tasks", "post"),
    ("continued without feedback, feedback tasks, post", "noisy_maml_continued",
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
    `dvc exp show --json` document (queued and running ones are left out). A document of
    another shape is a DataError."""
    if not isinstance(doc, list) or not all(isinstance(baseline, dict) for baseline in doc):
        raise DataError("not the JSON of `dvc exp show --json` (expected a list of baseline objects)")
    try:
        return _collect(doc, dataset)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
        raise DataError(f"not the JSON of `dvc exp show --json` ({type(err).__name__}: {err} in an "
                        "experiment)") from None


def _collect(doc: list[dict], dataset: str) -> tuple[list[SweepRun], list[FailedRun]]:
    read = [_read(experiment, baseline, dataset)
            for baseline in doc for experiment in baseline.get("experiments") or []]
    return (_one_per_grid_point([r for r in read if isinstance(r, SweepRun)]),
            [r for r in read if isinstance(r, FailedRun)])


def _read(experiment: dict, baseline: dict, dataset: str) -> SweepRun | FailedRun | None:
    """A finished run of `dataset`'s grid, a failed run of a grid, or None: queued or running,
    or not the sweep's (another study's settings, another dataset's chain)."""
    base_params = _params_of(baseline)
    executor = experiment.get("executor") or {"state": "success"}
    rev = experiment["revs"][0]
    params = _params_of(rev)
    if params and _changes_more_than_noise(params, base_params):
        return None  # another study (e.g. intershuffle tasks, a study's cells), not a point of the grid
    noise = params.get("noise", {})
    if executor.get("state") == "failed" or rev.get("error"):
        described = f"noise.sigma={noise.get('sigma')} noise.where={noise.get('where')} seed={params.get('seed')}"
        return FailedRun(rev["name"], described, str(rev.get("error") or "failed"))
    if executor.get("state") != "success" or not rev.get("data"):
        return None
    required = metrics_path(dataset, REQUIRED).as_posix()
    metrics = _metrics_of(rev)
    if required not in metrics:
        raise DataError(f"experiment {rev['name']}: no {required}")
    metrics = _own_metrics(params, metrics, base_params, _metrics_of(baseline))
    if required not in metrics:
        return None  # the baseline's file: a run of another dataset's sweep
    return SweepRun(rev["name"], float(noise["sigma"]), noise.get("where", "both"), int(params["seed"]), metrics)


def sweep_experiments(doc: list, dataset: str) -> list:
    """The document with only the experiments `collect` reads for `dataset` (finished or failed
    grid points): what a sweep's results file keeps, without a study's cells or another
    dataset's runs that share the baseline."""
    collect(doc, dataset)  # refuses a document of another shape
    return [{**baseline, "experiments": [e for e in baseline.get("experiments") or []
                                         if _read(e, baseline, dataset) is not None]} for baseline in doc]


def done_points(doc: list, dataset: str, feedback: bool) -> frozenset[tuple[str, float, int]]:
    """(placement, sigma, seed) of the finished runs of a document (with the feedback ablation's
    files where `feedback`): the grid points a resumed sweep does not queue again."""
    feedback_file = metrics_path(dataset, "noisy_maml_feedback").as_posix()
    runs, _ = collect(doc, dataset)
    return frozenset((*run.setting, run.seed) for run in runs if not feedback or feedback_file in run.metrics)


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


def sweep_files(dataset: str) -> list[str]:
    """The per-method metrics files the table reads (not declared as DVC metrics)."""
    return [metrics_path(dataset, method).as_posix() for method in dict.fromkeys(m for _, m, _, _ in COLUMNS)]


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
    figure = Figure(figsize=(11, 4.6), layout="constrained")
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
    legend_below(figure, panels[0], columns=3)
    save_png(figure, path)


def write_sweep_report(doc: list, dataset: str, out_dir: Path) -> Path:
    """reports/sweep_<dataset>.md and its plot, from a `dvc exp show --json` document."""
    runs, failed = collect(doc, dataset)
    rows = sweep_rows(runs, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = f"sweep_{dataset}.png"
    plot_sweep(rows, dataset, out_dir / image)
    unit = "accuracy" if metric_key(dataset) == "acc" else "MSE"
    lines = [f"# Sigma sweep: {dataset}", "",
             f"{len(runs)} finished experiments; cells are the mean ± 95% CI over seeds (Student's t "
             f"for the number of seeds) of the per-run {unit} (each run's own value is a mean over "
             "its fixed episodes; a row with a single seed shows that run's 95% CI over its episodes instead). The "
             "memorisation index is the pre-adaptation score on training tasks. Test scores are over "
             "the held-out test episodes, whose classes the feedback episodes never use. The feedback "
             "ablation (feedback against the same extra iterations without it, both resuming the noisy "
             "run's optimiser, schedule and random streams) is scored on the held-out test tasks and "
             "on the feedback tasks that fed back their gradients.", "",
             sweep_table(rows, dataset), "", f"![{dataset} sweep]({image})"]
    if failed:
        lines += ["", "Failed experiments (not in the table):", "",
                  *(f"- {f.name} ({f.params}): {f.error}" for f in failed)]
    lines += ["", f"Rebuild this page on any clone from the committed results data "
                  f"(`{results_path(dataset).as_posix()}`): `noisymaml sweep report --dataset {dataset}`. "
                  f"Re-run the grid: `noisymaml sweep run --dataset {dataset}` (it adds to that file)."]
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
