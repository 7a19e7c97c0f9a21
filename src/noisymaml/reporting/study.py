"""A study: a named grid of DVC experiments (generator x arm x seed, a validation choice, a
feedback ablation), run in slices, its results kept as committed data.

The study file (studies/<name>.yaml) states every cell as params.yaml settings; each cell is one
`dvc exp run --queue -n <cell name> -S ... <target stage>`. The name carries a digest of the
cell's settings and target, so editing the study file makes the edited cells new ones while the
others keep their results. `noisymaml study run` queues the cells the results file
(reports/results/study_<name>.json) lacks, runs them, and saves every finished one to that file as
it finishes: stop it anywhere (`noisymaml study stop` also ends the queue's work), commit the
file, and the next run (here or on another clone) resumes where the queue stopped.

The noisy arm the study compares is chosen per generator on the validation tasks of short
runs (`selection`); its long cells exist once every candidate has finished for every seed.

Finished cells are found by their names among git's experiment refs (any baseline commit, run
here or pulled), failures in `dvc queue status`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import re
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML, YAMLError

from noisymaml.core.files import write_json
from noisymaml.errors import DataError, ParamError
from noisymaml.pipeline.paths import curve_path, metrics_path
from noisymaml.reporting.experiments import checked_output, git_file, queue_names, start_workers

FORMAT = "noisymaml-study/1"
FEEDBACK_VARIANTS = ("", "_feedback", "_continued")  # the feedback stage's files: <method><variant>
Settings = dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selection(_Strict):
    arm: str
    method: str
    grid: dict[str, list[Any]] = Field(min_length=1)
    reference: str | None = None


class Arm(_Strict):
    method: str
    set: Settings = {}


class FeedbackPart(_Strict):
    arm: str
    generator: str
    runs: dict[str, Settings] = Field(min_length=1)


class Study(_Strict):
    name: str
    dataset: str
    seeds: list[int] = Field(min_length=1)
    budgets: dict[str, Settings]
    generators: dict[str, Settings] = Field(min_length=1)
    selection: Selection | None = None
    arms: dict[str, Arm] = Field(min_length=1)
    feedback: FeedbackPart | None = None
    reach: list[float] = [0.3]  # validation accuracies whose first crossing the report gives


def load_study(path: Path) -> Study:
    """The study file at `path`; a missing, malformed or inconsistent file is a ParamError
    naming the file and the key."""
    try:
        data = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ParamError(f"{path}: cannot read the study file ({err})") from None
    except YAMLError as err:
        raise ParamError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping (dataset, seeds, budgets, generators, arms, ...)")
    try:
        study = Study.model_validate({"name": Path(path).stem, **data})
    except ValidationError as err:
        raise ParamError(f"{path}: {_first_problem(err)}") from None
    problem = _consistency_problem(study)
    if problem:
        raise ParamError(f"{path}: {problem}")
    return study


def _all_values(study: Study) -> list[Any]:
    """Every value the study sets (grid values one by one)."""
    settings = [*study.budgets.values(), *study.generators.values(), *(a.set for a in study.arms.values()),
                *(study.feedback.runs.values() if study.feedback else [])]
    grid = [v for values in study.selection.grid.values() for v in values] if study.selection else []
    return [v for s in settings for v in s.values()] + grid


def _first_problem(err: ValidationError) -> str:
    """One clause for the first problem, a misspelt key before the missing one it explains."""
    problem = sorted(err.errors(), key=lambda p: p["type"] != "extra_forbidden")[0]
    where = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"unknown key `{where}` (misspelt?)"
    if problem["type"] == "missing":
        return f"missing key `{where}`"
    return f"`{where}` = {problem['input']!r}: {problem['msg']}"


def _consistency_problem(study: Study) -> str | None:
    from noisymaml.datasets import DATASETS

    if study.dataset not in DATASETS:
        return f"`dataset` = {study.dataset!r}: not one of {', '.join(DATASETS)}"
    if DATASETS[study.dataset].measure.key != "acc":
        return f"`dataset` = {study.dataset!r}: studies report accuracies; use `noisymaml sweep` for a regression"
    if any(isinstance(v, dict) for v in _all_values(study)):
        return "a setting's value is a mapping: set each key of it as its own dotted key"
    if "long" not in study.budgets or (study.selection and "short" not in study.budgets):
        return "`budgets` needs `long` (every arm) and `short` (the selection)"
    if study.selection and study.selection.arm not in study.arms:
        return f"`selection.arm` = {study.selection.arm!r} is not one of `arms`"
    if study.feedback and study.feedback.arm not in study.arms:
        return f"`feedback.arm` = {study.feedback.arm!r} is not one of `arms`"
    if study.feedback and study.feedback.generator not in study.generators:
        return f"`feedback.generator` = {study.feedback.generator!r} is not one of `generators`"
    return None


# --- cells ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One experiment of the study: what it sets, the stage it runs, the files it is read by."""

    part: str           # selection | arms | feedback
    generator: str
    arm: str            # an arm, a selection candidate's label, or a feedback run
    seed: int
    method: str         # whose metrics file and curve the study reads
    settings: Settings = field(hash=False)
    target: str

    @property
    def name(self) -> str:
        digest = hashlib.sha1(json.dumps([self.settings, self.target], sort_keys=True).encode()).hexdigest()
        return f"{self.generator}-{self.arm}-s{self.seed}-{digest[:6]}"

    def files(self, dataset: str) -> list[str]:
        if self.part == "feedback":
            return [metrics_path(dataset, self.method + v).as_posix() for v in FEEDBACK_VARIANTS]
        return [metrics_path(dataset, self.method).as_posix(), curve_path(dataset, self.method).as_posix()]

    def command(self, queued: bool = True) -> list[str]:
        """`dvc exp run --queue -n <name>` with the cell's settings; queued=False: the same run
        without the queue and the name, to run by hand."""
        settings = [arg for key, value in self.settings.items() for arg in ("-S", f"{key}={shown(value)}")]
        named = ["--queue", "-n", self.name] if queued else []
        return ["dvc", "exp", "run", *named, *settings, self.target]


def shown(value: Any) -> str:
    """A value as `dvc exp run -S` reads it back (Hydra's override grammar), one shell word."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


def _label(value: Any) -> str:
    """A value as part of a cell name (a git ref name: letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", shown(value)).strip("._") or "_"


def target_of(dataset: str, method: str) -> str:
    """The stage that trains and evaluates `method` (noisy_<algorithm>: the noisy chain)."""
    if method.startswith("noisy_"):
        return f"evaluate_noisy@{dataset}-{method.removeprefix('noisy_')}"
    return f"evaluate@{dataset}-{method}"


def _cell(study: Study, part: str, generator: str, arm: str, seed: int, method: str, budget: str,
          *extra: Settings, target: str | None = None) -> Cell:
    settings = {**study.generators[generator], **study.budgets[budget]}
    for more in extra:
        settings.update(more)
    settings["seed"] = seed
    return Cell(part, generator, arm, seed, method, settings, target or target_of(study.dataset, method))


def candidates(study: Study) -> list[tuple[str, Settings]]:
    """The selection's grid points as (label, settings), in the grid's order."""
    keys = list(study.selection.grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*study.selection.grid.values())]
    return [("sel-" + "-".join(_label(v) for v in point.values()), point) for point in points]


def selection_cells(study: Study, generator: str) -> list[Cell]:
    selection = study.selection
    cells = []
    for seed in study.seeds:
        if selection.reference:
            arm = study.arms.get(selection.reference, Arm(method=selection.reference))
            cells.append(_cell(study, "selection", generator, f"sel-{selection.reference}", seed,
                               arm.method, "short", arm.set))
        cells += [_cell(study, "selection", generator, label, seed, selection.method, "short",
                        study.arms[selection.arm].set, point) for label, point in candidates(study)]
    return cells


def chosen(study: Study, results: dict, generator: str) -> tuple[str, Settings] | None:
    """The candidate with the best mean validation score over seeds, once every candidate has
    finished for every seed (None before). Only validation numbers enter."""
    labels = dict(candidates(study))
    cells = [c for c in selection_cells(study, generator) if c.arm in labels]
    if any(c.name not in results["cells"] for c in cells):
        return None
    means = {label: statistics.fmean(value(results, c, study.dataset, "val", "acc_post")
                                      for c in cells if c.arm == label)
             for label in labels}
    best = max(means, key=means.get)
    return best, labels[best]


def arm_cells(study: Study, results: dict, generator: str, arm: str) -> list[Cell]:
    """An arm's long cells on a generator; the selection's arm only once it is chosen."""
    spec = study.arms[arm]
    extra: Settings = {}
    if study.selection and arm == study.selection.arm:
        choice = chosen(study, results, generator)
        if choice is None:
            return []
        extra = choice[1]
    return [_cell(study, "arms", generator, arm, seed, spec.method, "long", spec.set, extra)
            for seed in study.seeds]


def feedback_cells(study: Study, results: dict) -> list[Cell]:
    part = study.feedback
    base = {c.seed: c for c in arm_cells(study, results, part.generator, part.arm)}
    return [_cell(study, "feedback", part.generator, f"fb-{run}", seed, study.arms[part.arm].method, "long",
                  {k: v for k, v in base[seed].settings.items() if k != "seed"}, extra,
                  {"feedback.method": study.arms[part.arm].method}, target=f"feedback@{study.dataset}")
            for seed in base for run, extra in part.runs.items()]


def study_cells(study: Study, results: dict) -> list[Cell]:
    """Every cell that can run now, in queue order: the selection (short runs, seed by seed)
    first, since the chosen arm waits for all of it; then the arms seed by seed (a seed of
    every arm before the next seed); then feedback."""
    selection = [c for g in study.generators for c in selection_cells(study, g)] if study.selection else []
    arms = [c for a in study.arms for g in study.generators for c in arm_cells(study, results, g, a)]
    cells = [c for seed in study.seeds for c in selection if c.seed == seed]
    cells += [c for seed in study.seeds for c in arms if c.seed == seed]
    return cells + (feedback_cells(study, results) if study.feedback else [])


def planned_count(study: Study) -> int:
    """How many cells the study has once everything is chosen."""
    per_seed = (len(candidates(study)) + bool(study.selection.reference)) if study.selection else 0
    per_seed = per_seed * len(study.generators) + len(study.arms) * len(study.generators)
    per_seed += len(study.feedback.runs) if study.feedback else 0
    return per_seed * len(study.seeds)


# --- results data ---------------------------------------------------------------------------

def results_file(study: Study) -> Path:
    from noisymaml.reporting.results import RESULTS_DIR

    return RESULTS_DIR / f"study_{study.name}.json"


def empty_results(study: Study) -> dict:
    return {"format": FORMAT, "study": study.name, "dataset": study.dataset, "cells": {}, "failed": {}}


def load_results(path: Path, study: Study) -> dict:
    """The study's results file (empty results where it does not exist yet)."""
    if not Path(path).exists():
        return empty_results(study)
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a valid study results file ({err})") from None
    if not (isinstance(results, dict) and results.get("format") == FORMAT and results.get("study") == study.name
            and isinstance(results.get("cells"), dict) and isinstance(results.get("failed"), dict)):
        raise DataError(f"{path}: not the results of study {study.name!r} (expected \"format\": "
                        f"\"{FORMAT}\", \"study\", \"cells\" and \"failed\")")
    return results


def value(results: dict, cell: Cell, dataset: str, group: str, key: str, method: str | None = None) -> float:
    """One number of a finished cell's metrics file (`method`'s file; default the cell's)."""
    path = metrics_path(dataset, method or cell.method).as_posix()
    try:
        return float(results["cells"][cell.name]["files"][path][group][key])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"study results: cell {cell.name} has no number `{group}.{key}` in {path}") from None


@dataclass(frozen=True)
class ExperimentRef:
    """A finished experiment as git holds it: refs/exps/<baseline[:2]>/<baseline[2:]>/<name>."""

    name: str
    commit: str
    baseline: str


def experiment_refs() -> list[ExperimentRef]:
    """Every finished experiment of the repository, of any baseline commit (run here or
    `dvc exp pull`ed), newest first."""
    listing = checked_output(["git", "for-each-ref", "--sort=-committerdate",
                          "--format=%(refname) %(objectname)", "refs/exps"])
    refs = []
    for line in listing.splitlines():
        ref, commit = line.split()
        parts = ref.split("/")
        if len(parts) == 5:  # not refs/exps/celery/... or other DVC bookkeeping
            refs.append(ExperimentRef(parts[4], commit, parts[2] + parts[3]))
    return refs


def records(refs: list[ExperimentRef], cells: list[Cell], dataset: str, held: dict, read=git_file) -> dict:
    """The experiments among `refs` that are cells of the study not `held` already (the newest
    of several under one name): name -> record (commit, baseline, params.yaml values, and the
    cell's files, read from the experiment's commit)."""
    by_name = {c.name: c for c in cells}
    found = {}
    for ref in refs:
        if ref.name in by_name and ref.name not in held and ref.name not in found:
            found[ref.name] = _record(ref, by_name[ref.name], dataset, read)
    return found


def _record(ref: ExperimentRef, cell: Cell, dataset: str, read) -> dict:
    files = {"params.yaml": None, **{path: None for path in cell.files(dataset)}}
    for path in files:
        text = read(ref.commit, path)
        if text is None:
            raise DataError(f"experiment {cell.name} ({ref.commit[:7]}): no {path} in its commit")
        try:
            files[path] = (json.loads(text) if path.endswith(".json") else
                           YAML(typ="safe", pure=True).load(text) if path.endswith(".yaml") else text)
        except (json.JSONDecodeError, YAMLError) as err:
            raise DataError(f"experiment {cell.name} ({ref.commit[:7]}): {path} is not valid "
                            f"({str(err).splitlines()[0]})") from None
    params = files.pop("params.yaml")
    return {"commit": ref.commit, "baseline": ref.baseline, "params": params, "files": files}


def save(study: Study, path: Path, refs: list[ExperimentRef] | None = None, failed: list[str] | None = None,
         read=git_file) -> tuple[int, int]:
    """Add the study's finished experiments (`refs`, default every experiment ref here) to the
    results file; `failed` names (default: those `dvc queue status` lists as failed) are listed
    until the cell finishes. Cells that finished ones make possible (the chosen arm after the
    selection) are looked for too. Returns (cells added, cells held)."""
    results = load_results(path, study)
    refs = experiment_refs() if refs is None else refs
    failed = queue_names("Failed") if failed is None else failed
    added = 0
    while True:
        finished = records(refs, study_cells(study, results), study.dataset, results["cells"], read)
        if not finished:
            break
        added += len(finished)
        results["cells"].update(finished)
    names = {c.name for c in study_cells(study, results)}
    failures = {**results["failed"], **{name: "failed (dvc queue logs <name>)" for name in failed if name in names}}
    failures = {name: error for name, error in failures.items() if name not in results["cells"]}
    if added or failures != results["failed"]:
        results["failed"] = failures
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(path), results)
    return added, len(results["cells"])


def stop(study: Study, path: Path, poll_seconds: float = 2.0, log=print) -> list[str]:
    """Save what finished, then take the study's cells off the queue: drop the queued ones,
    kill the running ones and forget them (a cell stopped here is unfinished, not failed: it
    is not listed as failed, and the next `study run` queues it again), and stop the queue's
    workers. Other experiments in the queue are left as they are. Returns the cells stopped."""
    save(study, path)
    names = {c.name for c in study_cells(study, load_results(path, study))}
    queued = [n for n in queue_names("Queued") if n in names]
    running = [n for n in queue_names("Running") if n in names]
    if running:
        checked_output(["dvc", "queue", "kill", *running])
    while set(running) & set(queue_names("Running")):
        time.sleep(poll_seconds)
    if queued or running:
        checked_output(["dvc", "queue", "remove", *queued, *running])
    checked_output(["dvc", "queue", "stop"])
    log(f"[study] stopped {len(running)} running and {len(queued)} queued cell(s); "
        f"{len(load_results(path, study)['cells'])} held in {path}")
    return running + queued


def pending(study: Study, results: dict, only: tuple[str, ...] = ()) -> list[Cell]:
    """Cells that can run now and have no saved result (`only`: globs over cell names, any of
    which a cell must match)."""
    return [c for c in study_cells(study, results) if c.name not in results["cells"]
            and (not only or any(fnmatch.fnmatch(c.name, pattern) for pattern in only))]


def run(study: Study, path: Path, jobs: int = 1, poll_seconds: float = 60.0, only: tuple[str, ...] = (),
        log=print) -> None:
    """Save what finished, queue the cells that can run now and have neither a result nor a
    place in the queue, start `jobs` workers; look again every `poll_seconds` (saving each
    finished cell, queueing the cells it made possible, e.g. the chosen arm) until nothing is
    left to run or wait for. Experiments that finished while no `study run` watched (it was
    stopped, the queue went on) are saved first, not queued twice; a failed cell is retried
    by the next `study run`, not by this one."""
    tried: set[str] = set()
    while True:
        added, held = save(study, path)
        if added:
            log(f"[study] {path}: {added} cell(s) added, {held} of {planned_count(study)} held")
        running = set(queue_names("Running"))
        waiting = running | set(queue_names("Queued"))
        todo = [c for c in pending(study, load_results(path, study), only) if c.name not in tried | waiting]
        tried |= waiting | {c.name for c in todo}
        if not todo and not waiting:
            return
        if todo:
            log(f"[study] queueing {len(todo)} cell(s); {len(waiting)} queued or running")
            for cell in todo:
                log("$ " + shlex.join(cell.command()))
                checked_output(cell.command())
        if todo or not running:  # queued cells with no worker (e.g. left by an ended session)
            start_workers(jobs)
        time.sleep(poll_seconds)
