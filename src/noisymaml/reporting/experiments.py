"""The sweep's DVC experiments: its grid, queueing it, and reading the finished runs back.

No torch or matplotlib here: the command line imports this module at start for the grid's
defaults, and `noisymaml --help` must answer at once.

`dvc exp show --json` lists only the metrics dvc.yaml declares, the small per-dataset
summaries; the sweep's table needs more of noisy MAML's numbers (validation, the feedback
ablation). The per-method files are plain outputs kept out of DVC's cache, so every experiment
commit holds them: `with_method_files` reads them from git into the document, under the same
keys as declared metrics, which also works for experiments pulled from a remote
(`dvc exp pull`) in a fresh clone.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from noisymaml.errors import DataError, NoisyMamlError

SIGMAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)  # log-spaced, and 0 (plain MAML)
SEEDS = (0, 1, 2)
PLACEMENTS = ("inner", "outer", "both")


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
                   feedback: bool = True, shard: Shard = Shard(),
                   done: frozenset[tuple[str, float, int]] = frozenset()) -> list[list[str]]:
    """One `dvc exp run --queue` per grid point of the shard that is not `done` ((placement,
    sigma, seed) of the runs the results file holds; placement "off" for sigma 0).

    With feedback each run goes up to the dataset's summary (noisy MAML, its evaluation, the
    feedback ablation, the summary metrics `dvc exp show` displays); without it, each run stops
    after evaluating noisy MAML (about half the time; its summary stays the baseline's)."""
    target = f"summary@{dataset}" if feedback else f"evaluate_noisy@{dataset}-maml"
    return [["dvc", "exp", "run", "--queue",
             *(arg for key, value in point.items() for arg in ("-S", f"{key}={_shown(value)}")), target]
            for point in shard.take(grid_points(sigmas, seeds, placements)) if _key(point) not in done]


def _key(point: dict) -> tuple[str, float, int]:
    sigma = float(point["noise.sigma"])
    return ("off" if sigma == 0 else str(point["noise.where"])), sigma, int(point["seed"])


def _shown(value: float | str | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_queue(commands: list[list[str]], jobs: int = 1, poll_seconds: float = 30.0, log=print,
              on_poll: Callable[[], None] | None = None) -> None:
    """Queue the experiments, run them with `jobs` workers, and wait until the queue is empty,
    calling `on_poll` at every look (e.g. to save what finished).

    One worker on a small CPU (two torch runs each slow down several-fold); on a machine with N
    GPUs, N workers: every run's stages take a GPU of their own (`device: auto`)."""
    for command in commands:
        checked_output(command)
    start_workers(jobs)
    while True:
        waiting = queue_names("Queued", "Running")
        if on_poll:
            on_poll()
        if not waiting:
            return
        log(f"[queue] {len(waiting)} experiment(s) queued or running")
        time.sleep(poll_seconds)


def queue_names(*states: str) -> list[str]:
    """The names of the experiments `dvc queue status` lists in one of `states` (Queued,
    Running, Success, Failed)."""
    lines = checked_output(["dvc", "queue", "status"]).splitlines()
    return [line.split()[1] for line in lines if len(line.split()) > 2 and line.split()[-1] in states]


def start_workers(jobs: int) -> None:
    """`dvc queue start`: its workers outlive it and inherit its output, so the output goes to
    files, not pipes, whose reader would wait for the last worker to end."""
    command = ["dvc", "queue", "start", "--jobs", str(jobs)]
    with tempfile.TemporaryFile() as out:
        code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out).returncode
        if code != 0:
            out.seek(0)
            raise NoisyMamlError(f"`{' '.join(command)}` failed: {_last_line(out.read().decode(errors='replace'))}")


def checked_output(command: list[str]) -> str:
    """A command's standard output; a failure is one line naming the command and its error."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NoisyMamlError(f"`{' '.join(command)}` failed: {_last_line(result.stderr or result.stdout)}")
    return result.stdout


def _last_line(output: str) -> str:
    """A command's last non-empty output line (DVC and git end with the error itself)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def exp_show() -> list:
    """The experiments of the current commit, as `dvc exp show --json` lists them."""
    result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"`dvc exp show --json` failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def git_file(rev: str, path: str) -> str | None:
    """A file's text at a git commit; None where the commit or the file is not there."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def with_method_files(doc: list, paths: list[str],
                      read: Callable[[str, str], str | None] = git_file) -> list:
    """The document with each baseline's and finished experiment's `paths` (JSON files) added to
    its metrics from its commit, unless the document already holds them. A document of another
    shape is a DataError."""
    if not isinstance(doc, list) or not all(isinstance(baseline, dict) for baseline in doc):
        raise DataError("not the JSON of `dvc exp show --json` (expected a list of baseline objects)")
    try:
        return _with_method_files(doc, paths, read)
    except (AttributeError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"not the JSON of `dvc exp show --json` ({type(err).__name__}: {err} in an "
                        "experiment)") from None


def _with_method_files(doc: list[dict], paths: list[str], read: Callable[[str, str], str | None]) -> list:
    for baseline in doc:
        finished = [exp["revs"][0] for exp in baseline.get("experiments") or []
                    if (exp.get("executor") or {"state": "success"}).get("state") == "success"]
        for rev in [baseline, *finished]:
            if not rev.get("data") or rev.get("error") or rev.get("rev") in (None, "workspace"):
                continue
            metrics = rev["data"]["metrics"] = rev["data"].get("metrics") or {}
            for path in paths:
                text = None if path in metrics else read(rev["rev"], path)
                if text is not None:
                    metrics[path] = {"data": _json(text, rev, path)}
    return doc


def _json(text: str, rev: dict, path: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"experiment {rev.get('name') or rev['rev']}: {path} is not valid JSON ({err})") from None
