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
import time
from collections.abc import Callable

from noisymaml.errors import DataError, NoisyMamlError

SIGMAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)  # log-spaced, and 0 (plain MAML)
SEEDS = (0, 1, 2)
PLACEMENTS = ("inner", "outer", "both")


def queue_commands(dataset: str, sigmas=SIGMAS, seeds=SEEDS, placements=PLACEMENTS,
                   feedback: bool = True) -> list[list[str]]:
    """`dvc exp run --queue` grids: sigma 0 once per seed, every other sigma per placement.

    With feedback each run goes up to the dataset's summary (noisy MAML, its evaluation, the
    feedback ablation, the summary metrics `dvc exp show` displays); without it, each run stops
    after evaluating noisy MAML (about half the time; its summary stays the baseline's)."""
    def grid(key: str, values) -> list[str]:
        return ["-S", f"{key}={','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}"]

    target = f"summary@{dataset}" if feedback else f"evaluate_noisy@{dataset}-maml"
    base = ["dvc", "exp", "run", "--queue", *grid("seed", seeds)]
    commands = []
    if 0 in sigmas:
        commands.append([*base, *grid("noise.sigma", [0.0]), target])
    noisy = [s for s in sigmas if s != 0]
    if noisy:
        commands.append([*base, *grid("noise.sigma", noisy), *grid("noise.where", placements), target])
    return commands


def run_queue(commands: list[list[str]], poll_seconds: float = 30.0, log=print) -> None:
    """Queue the experiments, run them one at a time (two torch runs on a small CPU each slow
    down several-fold), and wait until the queue is empty."""
    for command in commands:
        _checked(command)
    _checked(["dvc", "queue", "start", "--jobs", "1"])
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
