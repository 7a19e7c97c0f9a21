"""A sigma sweep as a table: `dvc exp show --json` -> one row per sigma, mean ± 95% CI over seeds.

    dvc exp show --json | noisymaml sweep-table --dataset sinusoid

Only finished experiments count (queued, running and failed ones are left out). Sigma is
chosen on the validation tasks alone; the test columns are reported, never used to choose.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from noisymaml.errors import DataError
from noisymaml.metrics import mean_ci95
from noisymaml.paths import metrics_path

# (column title, method, metrics group, pre/post)
COLUMNS = (
    ("validation, post", "noisy_maml", "val", "post"),
    ("test, post", "noisy_maml", "test", "post"),
    ("memorisation index (training tasks, pre)", "noisy_maml", "train_tasks", "pre"),
    ("+ feedback, held-out test, post", "noisy_maml_feedback", "test_heldout_tasks", "post"),
    ("continued without feedback, held-out test, post", "noisy_maml_continued",
     "test_heldout_tasks", "post"),
)


@dataclass(frozen=True)
class SweepRun:
    name: str
    sigma: float
    seed: int
    metrics: dict[str, dict]  # metrics file path -> its content


def finished_runs(doc: list) -> list[SweepRun]:
    """The finished experiments of a `dvc exp show --json` document."""
    runs = []
    for baseline in doc:
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {"state": "success"}
            if executor.get("state") != "success":  # queued, running or failed
                continue
            rev = experiment["revs"][0]
            if rev.get("error") or not rev.get("data"):
                continue
            params = rev["data"]["params"]["params.yaml"]["data"]
            metrics = {path: m["data"] for path, m in rev["data"]["metrics"].items() if "data" in m}
            runs.append(SweepRun(rev["name"], params["noise"]["sigma"], params["seed"], metrics))
    return runs


def sweep_table(runs: list[SweepRun], dataset: str) -> str:
    """Markdown: a row per sigma, mean ± 1.96·SE over seeds, and the sigma chosen on validation."""
    if not runs:
        raise DataError("no finished experiments in the document (run `dvc queue start`, then "
                        "`dvc exp show --json`)")
    key = "acc" if dataset == "omniglot" else "loss"
    by_sigma: dict[float, list[SweepRun]] = defaultdict(list)
    for run in runs:
        by_sigma[run.sigma].append(run)
    lines = ["| sigma | seeds | " + " | ".join(title for title, *_ in COLUMNS) + " |",
             "| --: | :-- |" + " --: |" * len(COLUMNS)]
    validation = {}
    for sigma in sorted(by_sigma):
        group = by_sigma[sigma]
        cells = []
        for title, method, part, stage in COLUMNS:
            values = [_value(run, dataset, method, part, f"{key}_{stage}") for run in group]
            mean, half = mean_ci95(torch.tensor(values, dtype=torch.float64))
            cells.append(_format(mean, half, key))
            if part == "val":
                validation[sigma] = mean
        seeds = ", ".join(str(s) for s in sorted(run.seed for run in group))
        lines.append(f"| {sigma:g} | {seeds} | " + " | ".join(cells) + " |")
    best = (max if key == "acc" else min)(validation, key=validation.get)
    lines.append("")
    lines.append(f"Chosen on validation {'accuracy' if key == 'acc' else 'MSE'} alone: "
                 f"sigma = {best:g}.")
    return "\n".join(lines)


def _value(run: SweepRun, dataset: str, method: str, part: str, key: str) -> float:
    path = metrics_path(dataset, method).as_posix()
    try:
        return float(run.metrics[path][part][key])
    except KeyError:
        raise DataError(f"experiment {run.name}: no `{part}.{key}` in {path}") from None


def _format(mean: float, half: float, key: str) -> str:
    if key == "acc":
        return f"{100 * mean:.2f} ± {100 * half:.2f} %"
    return f"{mean:.3f} ± {half:.3f}"
