"""A study's report, reports/<study>.md and its convergence figures, from the study's results
file alone (reports/results/study_<study>.json): any clone rebuilds it with `noisymaml study report`.

Every ± is a 95% interval of the mean over seeds (Student's t for the number of seeds, shown as
n); a figure from a single seed shows that run's 95% interval over its episodes (1.96·SE)
instead, marked "1 seed". Selection tables show validation numbers only: the noise is chosen on
them, and the test tasks are read once, for the arms' tables: levels, and differences paired by
seed (against the first arm listed, and the first generator), which the spread the cells of one
seed share does not blur.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path

import torch
from matplotlib.figure import Figure

from noisymaml.core.files import write_text
from noisymaml.core.metrics import mean_ci95
from noisymaml.errors import DataError
from noisymaml.pipeline.paths import curve_path, metrics_path
from noisymaml.reporting.figures import legend_below, save_png
from noisymaml.reporting.study import (
    Cell,
    Study,
    arm_cells,
    candidates,
    chosen,
    feedback_cells,
    planned_count,
    results_file,
    selection_cells,
    shown,
    value,
)

Interval = tuple[float, float, int]  # mean, 95% half-width, number of seeds
CURVES = (("val_acc_post", "validation accuracy after adaptation"),
          ("train_acc_pre", "memorisation index (training batches, pre-adaptation)"))
ONLINE_GROUP = "online_stream"


def over_seeds(values: list[tuple[float, float]]) -> Interval | None:
    """(mean, half-width, n) of per-seed (value, own 95% half-width) pairs: Student's t over
    seeds, or the single run's own interval; None without values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0][0], values[0][1], 1
    mean, half = mean_ci95(torch.tensor([v for v, _ in values], dtype=torch.float64))
    return mean, half, len(values)


def _shown(cell: Interval | None, percent: bool = True) -> str:
    if cell is None:
        return "not run yet"
    mean, half, n = cell
    scale, unit = (100, " %") if percent else (1, "")
    if math.isnan(half):  # one seed scored on one task: no interval to give
        return f"{scale * mean:.2f}{unit} (1 seed, 1 task)"
    seeds = "1 seed" if n == 1 else f"n={n}"
    return f"{scale * mean:.2f} ± {scale * half:.2f}{unit} ({seeds})"


def _finished(results: dict, cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.name in results["cells"]]


def _metric(results: dict, cells: list[Cell], dataset: str, group: str, key: str,
            method: str | None = None) -> Interval | None:
    """Over the finished cells' seeds; a single run's own interval, none (NaN) where it
    scored one task (its recorded half-width of 0 is no interval)."""
    def own(cell: Cell) -> tuple[float, float]:
        one_task = value(results, cell, dataset, group, "tasks", method) < 2
        return (value(results, cell, dataset, group, key, method),
                math.nan if one_task else value(results, cell, dataset, group, f"{key}_ci95", method))
    return over_seeds([own(c) for c in _finished(results, cells)])


# --- tables ---------------------------------------------------------------------------------

def selection_table(study: Study, results: dict, generator: str) -> list[str]:
    cells = selection_cells(study, generator)
    choice = chosen(study, results, generator)
    labels = [f"sel-{study.selection.reference}"] if study.selection.reference else []
    labels += [label for label, _ in candidates(study)]
    settings = dict(candidates(study))
    lines = ["| candidate | validation accuracy, post | memorisation index | |", "| :-- | --: | --: | :-- |"]
    for label in labels:
        group = [c for c in cells if c.arm == label]
        described = ", ".join(f"{k} = {shown(v)}" for k, v in settings[label].items()) if label in settings \
            else f"{study.selection.reference} (reference, not a candidate)"
        mark = "**chosen**" if choice and choice[0] == label else ""
        lines.append(f"| {described} | {_shown(_metric(results, group, study.dataset, 'val', 'acc_post'))} | "
                     f"{_shown(_metric(results, group, study.dataset, 'train_tasks', 'acc_pre'))} | {mark} |")
    return lines


def arms_table(study: Study, results: dict) -> list[str]:
    """Per arm and generator: held-out test accuracy, memorisation index, validation accuracy."""
    header = ["arm"] + [f"{g}: {what}" for g in study.generators
                        for what in ("test accuracy", "memorisation index", "validation accuracy")]
    lines = ["| " + " | ".join(header) + " |", "| :-- |" + " --: |" * (len(header) - 1)]
    for arm in study.arms:
        row = [arm]
        for generator in study.generators:
            cells = arm_cells(study, results, generator, arm)
            row += [_shown(_metric(results, cells, study.dataset, group, key))
                    for group, key in (("test", "acc_post"), ("train_tasks", "acc_pre"), ("val", "acc_post"))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def paired_difference(results: dict, dataset: str, cells: list[Cell], baseline: list[Cell]) -> Interval | None:
    """Held-out test accuracy of `cells` minus `baseline`'s, paired by seed (same tasks and
    episodes): (mean, Student's t 95% half-width over the seeds both finished, n); one seed has
    no interval (NaN)."""
    base = {c.seed: c for c in _finished(results, baseline)}
    def test(cell: Cell) -> float:
        return value(results, cell, dataset, "test", "acc_post")
    return _differences([(test(c), test(base[c.seed])) for c in _finished(results, cells) if c.seed in base])


def _differences(pairs: list[tuple[float, float]]) -> Interval | None:
    """Mean of a − b over the seeds' (a, b) pairs, Student's t over seeds; one seed has no interval (NaN)."""
    return over_seeds([(a - b, math.nan) for a, b in pairs])


def _shown_difference(cell: Interval | None) -> str:
    if cell is None:
        return "not run yet"
    mean, half, n = cell
    return f"{100 * mean:+.2f} (1 seed)" if n == 1 else f"{100 * mean:+.2f} ± {100 * half:.2f} (n={n})"


def differences_table(study: Study, results: dict) -> list[str]:
    """Test accuracy differences in points, paired by seed: each arm against the first arm
    listed, on each generator; each generator against the first, per arm."""
    reference, (first, *others) = next(iter(study.arms)), list(study.generators)
    header = ["arm"] + [f"{g}: − {reference}" for g in study.generators] + [f"{g} − {first}" for g in others]
    lines = ["| " + " | ".join(header) + " |", "| :-- |" + " --: |" * (len(header) - 1)]
    def difference(generator: str, arm: str, base_generator: str, base_arm: str) -> str:
        return _shown_difference(paired_difference(results, study.dataset, arm_cells(study, results, generator, arm),
                                                   arm_cells(study, results, base_generator, base_arm)))
    for arm in study.arms:
        row = [arm] + [difference(g, arm, g, reference) if arm != reference else "" for g in study.generators]
        row += [difference(g, arm, first, arm) for g in others]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def feedback_table(study: Study, results: dict) -> list[str]:
    """Feedback against the same stream or extra iterations without it: on the held-out test
    tasks, and on the feedback tasks themselves (online: each scored on arrival)."""
    method = _feedback_method(study)
    lines = ["| run | held-out test: no further training | + feedback | continued, unweighted | "
             "feedback tasks: no further training | + feedback | continued, unweighted |",
             "| :-- |" + " --: |" * 6]
    for run, group in _feedback_runs(study, results):
        row = [run]
        for group_name, stream in (("test", "test"), ("test_feedback_tasks", _fed_stream(study, results, group))):
            row.append(_shown(_metric(results, group, study.dataset, group_name, "acc_post", method)))
            row += [_shown(_metric(results, group, study.dataset, stream, "acc_post", f"{method}_{variant}"))
                    for variant in ("feedback", "continued")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def feedback_gain_table(study: Study, results: dict) -> list[str]:
    """+ feedback minus continued, unweighted, in points, paired by seed: both variants of a seed
    start from the same trained model and are scored on the same episodes and feedback tasks."""
    lines = ["| run | held-out test: + feedback − continued | feedback tasks: + feedback − continued |",
             "| :-- | --: | --: |"]
    for run, group in _feedback_runs(study, results):
        gains = [_shown_difference(_feedback_gain(study, results, group, stream))
                 for stream in ("test", _fed_stream(study, results, group))]
        lines.append("| " + " | ".join([run, *gains]) + " |")
    return lines


def _feedback_gain(study: Study, results: dict, group: list[Cell], stream: str) -> Interval | None:
    method = _feedback_method(study)
    def score(cell: Cell, variant: str) -> float:
        return value(results, cell, study.dataset, stream, "acc_post", f"{method}_{variant}")
    return _differences([(score(c, "feedback"), score(c, "continued")) for c in _finished(results, group)])


def _feedback_method(study: Study) -> str:
    return study.arms[study.feedback.arm].method


def _feedback_runs(study: Study, results: dict) -> list[tuple[str, list[Cell]]]:
    cells = feedback_cells(study, results)
    return [(run, [c for c in cells if c.arm == f"fb-{run}"]) for run in study.feedback.runs]


def _fed_stream(study: Study, results: dict, group: list[Cell]) -> str:
    """The group holding the feedback tasks' scores: online, each task scored on arrival."""
    fed = metrics_path(study.dataset, f"{_feedback_method(study)}_feedback").as_posix()
    done = _finished(results, group)
    online = done and all(ONLINE_GROUP in results["cells"][c.name]["files"].get(fed, {}) for c in done)
    return ONLINE_GROUP if online else "test_feedback_tasks"


# --- convergence ----------------------------------------------------------------------------

def curve(results: dict, cell: Cell, dataset: str) -> dict[str, list[float]]:
    """A finished cell's learning curve, column -> values."""
    path = curve_path(dataset, cell.method).as_posix()
    try:
        rows = list(csv.DictReader(io.StringIO(results["cells"][cell.name]["files"][path])))
        return {key: [float(row[key]) for row in rows] for key in ("iteration", *(k for k, _ in CURVES))}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"study results: cell {cell.name} has no readable curve {path}") from None


Band = tuple[list[float], list[float], list[float], list[float]]


def _band(curves: list[dict[str, list[float]]], key: str) -> Band:
    """Iterations, mean, and the 95% t band over seeds (the mean itself with one seed) of an
    accuracy curve column, over the iterations every seed logged. The band is clipped to
    [0, 1]: with two or three seeds the t quantile can reach past what an accuracy can be."""
    length = min(len(c["iteration"]) for c in curves)
    means, lows, highs = [], [], []
    for i in range(length):
        mean, half, _ = over_seeds([(c[key][i], 0.0) for c in curves])
        means.append(mean)
        lows.append(max(0.0, mean - half))
        highs.append(min(1.0, mean + half))
    return curves[0]["iteration"][:length], means, lows, highs


def plot_convergence(study: Study, results: dict, generator: str, path: Path) -> bool:
    """One figure per generator: validation accuracy and memorisation index against
    iteration, per arm the mean over seeds and its 95% t band (clipped to [0, 100]).
    False when no arm has finished."""
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    panels = figure.subplots(1, 2, sharex=True)
    drawn = False
    for index, arm in enumerate(study.arms):
        cells = _finished(results, arm_cells(study, results, generator, arm))
        if not cells:
            continue
        drawn = True
        curves = [curve(results, c, study.dataset) for c in cells]
        for axes, (key, _) in zip(panels, CURVES):
            x, mean, low, high = _band(curves, key)
            color = f"C{index}"
            axes.plot(x, [100 * m for m in mean], color=color, label=f"{arm} (n={len(cells)})")
            axes.fill_between(x, [100 * v for v in low], [100 * v for v in high], color=color, alpha=0.15)
    if not drawn:
        return False
    chance = 100 / _ways(study, results)
    for axes, (_, label) in zip(panels, CURVES):
        axes.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance (1/ways)")
        axes.set(title=label, xlabel="meta-iteration", ylabel="accuracy (%)")
        axes.grid(alpha=0.3)
    legend_below(figure, panels[0], columns=4)
    figure.suptitle(f"{study.dataset}, generator {generator}: mean over seeds, "
                    "band = 95% t-interval clipped to [0, 100]")
    save_png(figure, path)
    return True


def _ways(study: Study, results: dict) -> int:
    """The ways of the study's tasks, as its finished cells ran them."""
    params = next(iter(results["cells"].values()))["params"]
    try:
        return int(params[study.dataset]["tasks"]["ways"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"study results: no {study.dataset}.tasks.ways in the saved params") from None


def convergence_table(study: Study, results: dict, generator: str) -> list[str]:
    """Per arm: first logged iteration where the seed-mean validation accuracy reaches each of
    `study.reach`, the final validation accuracy, its spread over seeds (SD), and the largest
    fall from a seed's best validation accuracy to its last (divergence shows here)."""
    reach = [f"first iteration, validation ≥ {100 * level:.0f} %" for level in study.reach]
    header = ["arm", *reach, "final validation accuracy (curve)", "SD over seeds at the end", "fall from best to last"]
    lines = ["| " + " | ".join(header) + " |", "| :-- |" + " --: |" * (len(header) - 1)]
    for arm in study.arms:
        cells = _finished(results, arm_cells(study, results, generator, arm))
        if not cells:
            lines.append(f"| {arm} | not run yet |" + " |" * (len(header) - 2))
            continue
        curves = [curve(results, c, study.dataset) for c in cells]
        x, mean, _, _ = _band(curves, "val_acc_post")
        reached = [next((str(int(i)) for i, m in zip(x, mean) if m >= level), "not reached") for level in study.reach]
        finals = [c["val_acc_post"][-1] for c in curves]
        final = over_seeds([(f, 0.0) for f in finals])
        spread = torch.tensor(finals, dtype=torch.float64).std().item() if len(finals) > 1 else math.nan
        fall = max(max(c["val_acc_post"]) - c["val_acc_post"][-1] for c in curves)
        lines.append(f"| {arm} | {' | '.join(reached)} | "
                     f"{_shown(final) if len(finals) > 1 else f'{100 * finals[0]:.2f} % (1 seed)'} | "
                     f"{'n/a' if math.isnan(spread) else f'{100 * spread:.2f} points'} | {100 * fall:.2f} points |")
    return lines


# --- the page -------------------------------------------------------------------------------

def _command_line(cell: Cell) -> str:
    return f"- {cell.generator} / {cell.arm}: `{shlex.join(cell.command(queued=False))}`"


def _commands(study: Study, results: dict) -> list[str]:
    """One `dvc exp run` per selection candidate, arm and feedback run on each generator, for
    the first seed (the others differ in `-S seed=N` alone)."""
    first, others = study.seeds[0], ", ".join(map(str, study.seeds[1:]))
    seeds = f"; the other seeds ({others}) differ only in `-S seed=N`." if others else "."
    lines = [f"Seed {first}{seeds}", ""]
    selection = [c for g in study.generators for c in selection_cells(study, g)] if study.selection else []
    lines += [_command_line(c) for c in selection if c.seed == first]
    for generator in study.generators:
        for arm in study.arms:
            cells = arm_cells(study, results, generator, arm)
            lines.append(_command_line(cells[0]) if cells
                         else f"- {generator} / {arm}: set once the selection has finished")
    feedback = feedback_cells(study, results) if study.feedback else []
    return lines + [_command_line(c) for c in feedback if c.seed == first]


def write_study_report(study: Study, results: dict, out_dir: Path) -> Path:
    """reports/<study>.md and reports/<study>_<generator>.png from the results (beside it, not
    in reports/figures/, which the report stage owns and rewrites)."""
    done, planned = len(results["cells"]), planned_count(study)
    study_file = f"studies/{study.name}.yaml"
    lines = [f"# Study {study.name}: {study.dataset}", "",
             f"{done} of {planned} cells finished. Rebuild this page on any clone from the committed results "
             f"data (`{results_file(study).as_posix()}`): `noisymaml study report {study_file}`; run or resume "
             f"the study (queues only the cells not in that file): `noisymaml study run {study_file}`.", "",
             "Every ± is a 95% interval of the mean over seeds (Student's t; n = the seeds finished); a "
             "figure from one seed shows that run's 95% interval over its episodes (1.96·SE). Test accuracy "
             "is over the held-out test episodes (test characters not set aside for feedback); the "
             "memorisation index is the accuracy on training tasks before adaptation (chance = 1/ways).", "",
             "Settings per cell (params.yaml keys), budgets: "
             + "; ".join(f"{name}: {', '.join(f'{k} = {shown(v)}' for k, v in s.items())}"
                         for name, s in study.budgets.items()) + ".", ""]
    if study.selection:
        lines += ["## Noise chosen on validation (short budget)", "",
                  f"Candidates: {study.selection.method} over "
                  + ", ".join(f"{k} ∈ {{{', '.join(shown(v) for v in vs)}}}" for k, vs in study.selection.grid.items())
                  + f", chosen by mean validation accuracy over seeds; the choice runs long as arm "
                    f"`{study.selection.arm}`.", ""]
        for generator in study.generators:
            lines += [f"Generator `{generator}`:", "", *selection_table(study, results, generator), ""]
    lines += ["## Arms (long budget)", "", *arms_table(study, results), "",
              "Differences in held-out test accuracy (points), paired by seed: the cells of one seed are "
              "scored on the same test episodes (on every generator), and on one generator every arm but "
              "intershuffle trains on the same sequence of training classes, so the spread from seed to seed "
              "that they share cancels. ± = Student's t over the seeds both cells finished; one seed shows no "
              "interval.", "",
              *differences_table(study, results), "", "## Convergence", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    for generator in study.generators:
        image = f"{study.name}_{generator}.png"
        if plot_convergence(study, results, generator, out_dir / image):
            lines += [f"Generator `{generator}`:", "", f"![{generator}]({image})", "",
                      *convergence_table(study, results, generator), ""]
    if study.feedback:
        lines += ["## Feedback", "",
                  f"On arm `{study.feedback.arm}`, generator `{study.feedback.generator}`, long budget. "
                  "Held-out test: the test episodes no feedback task shares a class with.", "",
                  *feedback_table(study, results), "",
                  "Feedback against the same iterations unweighted, in points, paired by seed (both start from "
                  "the seed's trained model and are scored on the same episodes and feedback tasks); ± = "
                  "Student's t over seeds, one seed shows no interval.", "",
                  *feedback_gain_table(study, results), ""]
    lines += ["## Commands", "", *_commands(study, results)]
    if results["failed"]:
        lines += ["", "## Failed cells (not in the tables; `study run` retries them)", "",
                  *(f"- {name}: {error}" for name, error in results["failed"].items())]
    path = out_dir / f"{study.name}.md"
    write_text(path, "\n".join(lines) + "\n")
    return path

