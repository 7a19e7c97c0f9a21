"""The `report` stage: one Markdown page comparing every method the pipeline trained.

Reads the metrics JSON files and learning-curve CSVs of the methods that params.yaml names
(`methods`, `noisy_methods`, and the feedback runs on `feedback.method`), and writes
`report.md` with a results table per dataset, the figures the literature reports for the same
protocol, and PNG plots next to it. The output depends only on those files and the params, so
identical inputs give byte-identical files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from noisymaml.core.metrics import MEMORISATION_TASKS, format_mean_ci
from noisymaml.datasets import DATASETS
from noisymaml.datasets.base import Measure
from noisymaml.errors import DataError
from noisymaml.methods import METHODS
from noisymaml.pipeline.params import (
    NOISY,
    AlgorithmsParams,
    FeedbackParams,
    NoiseParams,
    Section,
    parse_dataset,
    parse_datasets,
    parse_section,
    parse_seed,
    read_params,
    trained_methods,
)
from noisymaml.pipeline.paths import curve_path, metrics_path
from noisymaml.pipeline.steps import FEEDBACK_VARIANTS, ONLINE_GROUP
from noisymaml.reporting.figures import save_png

REPORTS = Path("reports")
PALETTE = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray", "tab:green", "tab:red")
REPORT_FILE = "report.md"
FIGURES = "figures"
REQUIRED_GROUPS = ("test", "train_tasks")
# Table columns after the method label: (header, metrics group, pre or post adaptation).
COLUMNS = (("test, post", "test", "post"),
           ("test, pre", "test", "pre"),
           ("feedback tasks, post", "test_feedback_tasks", "post"),
           ("memorisation index (training tasks, pre)", "train_tasks", "pre"),
           ("training tasks, post", "train_tasks", "post"))

NOISE_WHERE = {"inner": "inner-loop", "outer": "outer-loop", "both": "inner- and outer-loop"}

Curve = dict[str, list[float]]


def measure_of(dataset: str) -> Measure:
    return DATASETS[dataset].measure


def method_labels(methods: list[str], sigma: float) -> dict[str, str]:
    """Readable names: noisy_mr_maml_w -> "noisy MR-MAML(W) (sigma = 0.1)", and feedback runs."""
    labels = {}
    for name in methods:
        for variant in FEEDBACK_VARIANTS:
            if name.endswith("_" + variant):
                base = labels[name.removesuffix("_" + variant)].split(" (sigma")[0]
                labels[name] = (f"{base} + feedback" if variant == "feedback"
                                else f"{base}, continued without feedback")
                break
        else:
            algorithm = METHODS[name.removeprefix(NOISY)].label
            labels[name] = (f"noisy {algorithm} (sigma = {sigma:g})" if name.startswith(NOISY)
                            else algorithm)
    return labels


def load_metrics(dataset: str, methods: list[str]) -> dict[str, dict]:
    """The metrics of every method whose file exists, in the order of `methods`."""
    measure = measure_of(dataset)
    return {method: _checked_metrics(metrics_path(dataset, method), measure)
            for method in methods if metrics_path(dataset, method).exists()}


def _checked_metrics(path: Path, measure: Measure) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object of metric groups, got {type(data).__name__}")
    missing = [group for group in REQUIRED_GROUPS if group not in data]
    if missing:
        raise DataError(f"{path}: missing metric group(s) {', '.join(missing)}")
    keys = [f"{measure.column(stage)}{suffix}" for stage in ("pre", "post") for suffix in ("", "_ci95")]
    for group in dict.fromkeys(group for group in [*(g for _, g, _ in COLUMNS), ONLINE_GROUP] if group in data):
        summary = data[group]
        if not isinstance(summary, dict) or not all(_is_number(summary.get(k)) for k in [*keys, "tasks"]):
            raise DataError(f"{path}: group `{group}` needs finite numbers for {', '.join(keys)}, tasks")
    return data


def _is_number(value) -> bool:
    """A finite int or float: NaN/inf is a failed evaluation, never shown as a score."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_curves(dataset: str, methods: list[str]) -> dict[str, Curve]:
    """The learning curves of every method whose CSV exists: {method: {column: values}}."""
    measure = measure_of(dataset)
    columns = ("iteration", f"train_{measure.column('pre')}", f"val_{measure.column('post')}")
    return {method: _read_curve(curve_path(dataset, method), columns)
            for method in methods if curve_path(dataset, method).exists()}


def _read_curve(path: Path, columns: tuple[str, ...]) -> Curve:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {column: [float(row[column]) for row in rows] for column in columns}
    except (KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise DataError(f"{path}: not a learning curve with numeric columns {', '.join(columns)}") from None


def align_curves(curves: dict[str, Curve], resumed: str) -> dict[str, Curve]:
    """Shift the feedback and continued curves (which count from 1) to follow the run they resume."""
    last = (curves.get(resumed, {}).get("iteration") or [0.0])[-1]
    resuming = {f"{resumed}_{variant}" for variant in FEEDBACK_VARIANTS}
    return {method: ({**curve, "iteration": [i + last for i in curve["iteration"]]}
                     if method in resuming else curve)
            for method, curve in curves.items()}


def results_table(metrics: dict[str, dict], measure: Measure, labels: dict[str, str]) -> str:
    """Markdown table: one row per method, mean ± 95% CI cells, n/a where a group is absent."""
    def cell(summary: dict | None, stage: str) -> str:
        return "n/a" if summary is None else format_mean_ci(summary, measure.column(stage), measure.percent)

    header = ["method", *(title for title, _, _ in COLUMNS), "test tasks"]
    rows = [[labels[method], *(cell(data.get(group), stage) for _, group, stage in COLUMNS),
             str(int(data["test"]["tasks"]))]
            for method, data in metrics.items()]
    return "\n".join(_table_row(row) for row in [header, [":--", *["--:"] * (len(header) - 1)], *rows])


def online_table(metrics: dict[str, dict], measure: Measure, labels: dict[str, str]) -> list[str]:
    """The online feedback stream (`feedback.mode: online`), only for the runs that have it:
    each feedback task scored as it arrived, before its gradient fed back."""
    online = {method: data[ONLINE_GROUP] for method, data in metrics.items() if ONLINE_GROUP in data}
    if not online:
        return []
    header = ["run", "arriving tasks, post", "arriving tasks, pre", "tasks"]
    rows = [[labels[method], *(format_mean_ci(summary, measure.column(stage), measure.percent)
                               for stage in ("post", "pre")), str(int(summary["tasks"]))]
            for method, summary in online.items()]
    return ["", "Online feedback (`feedback.mode: online`): each feedback task scored on arrival, "
                "adapted from the meta-parameters of that moment, before its support gradient fed "
                "back; mean ± 95% CI over the stream (Student's t).", "",
            *(_table_row(row) for row in [header, [":--", "--:", "--:", "--:"], *rows])]


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot_curves(curves: dict[str, Curve], measure: Measure, labels: dict[str, str], path: Path,
                chance: float | None = None) -> None:
    """Validation post-adaptation and training pre-adaptation (memorisation) metric vs iteration."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    panels = ((f"val_{measure.column('post')}", "validation tasks, post-adaptation"),
              (f"train_{measure.column('pre')}", "training tasks, pre-adaptation (memorisation)"))
    both = figure.subplots(1, 2, sharex=True)
    for axes, (column, title) in zip(both, panels):
        for method, curve in curves.items():
            axes.plot(curve["iteration"], [measure.shown(v) for v in curve[column]], marker=".",
                      color=_color(method, labels), label=labels[method])
        _chance_line(axes.axhline, chance, measure)
        axes.set(title=title, xlabel="meta-iteration", ylabel=measure.name)
        axes.grid(alpha=0.3)
    both[0].legend(fontsize="small")
    save_png(figure, path)


def plot_test(metrics: dict[str, dict], measure: Measure, labels: dict[str, str], path: Path,
              chance: float | None = None) -> None:
    """Horizontal bars of the test post-adaptation metric with 95% CI error bars."""
    figure = Figure(figsize=(8, 0.6 * len(metrics) + 1.4), layout="constrained")
    axes = figure.subplots()
    key = measure.column("post")
    tests = [data["test"] for data in metrics.values()]
    axes.barh(range(len(tests)), [measure.shown(t[key]) for t in tests],
              xerr=[measure.shown(t[f"{key}_ci95"]) for t in tests], capsize=4,
              color=[_color(method, labels) for method in metrics])
    axes.set_yticks(range(len(tests)), [labels[method] for method in metrics])
    axes.invert_yaxis()
    _chance_line(axes.axvline, chance, measure)
    axes.set(xlabel=f"test {measure.name}, post-adaptation (mean ± 95% CI; {measure.better})")
    axes.grid(axis="x", alpha=0.3)
    if chance is not None:
        axes.legend(fontsize="small")
    save_png(figure, path)


def _color(method: str, labels: dict[str, str]) -> str:
    """A fixed colour per method: its position among the report's methods."""
    return PALETTE[list(labels).index(method) % len(PALETTE)]


def _chance_line(draw: Callable, chance: float | None, measure: Measure) -> None:
    if chance is not None:
        draw(measure.shown(chance), color="grey", linestyle="--", label="chance")



@dataclass(frozen=True)
class Settings:
    """The params the report states: what produced the numbers."""

    seed: int
    methods: list[str]
    algorithms: AlgorithmsParams
    noise: NoiseParams
    feedback: FeedbackParams
    datasets: dict[str, Section]

    @classmethod
    def from_params(cls, params: dict) -> Settings:
        return cls(parse_seed(params), trained_methods(params),
                   parse_section(params, "algorithms", AlgorithmsParams),
                   parse_section(params, "noise", NoiseParams),
                   parse_section(params, "feedback", FeedbackParams),
                   {dataset: parse_dataset(params, dataset) for dataset in parse_datasets(params)})

    @property
    def reported_methods(self) -> list[str]:
        return with_feedback_runs(self.methods, self.feedback.method)

    def chance(self, dataset: str) -> float | None:
        """1/ways for classification datasets; None where there is no chance level."""
        return DATASETS[dataset].chance(self.datasets[dataset])


def with_feedback_runs(methods: list[str], resumed: str) -> list[str]:
    """Trained methods, then the feedback runs on `resumed` (`feedback.method`) when it is trained."""
    extra = [f"{resumed}_{v}" for v in FEEDBACK_VARIANTS] if resumed in methods else []
    return [*methods, *extra]


def reported_methods(params: dict) -> tuple[list[str], str]:
    """The methods a report or summary shows, from `methods`, `noisy_methods` and
    `feedback.method` alone; and `feedback.method`, whose curve the feedback runs continue."""
    resumed = parse_section(params, "feedback", FeedbackParams).method
    return with_feedback_runs(trained_methods(params), resumed), resumed


def write_default_report() -> Path:
    """The `report` stage: reports/report.md from params.yaml and the files on disk."""
    write_report(REPORTS, read_params())
    return REPORTS / REPORT_FILE


def write_report(out_dir: Path, params: dict) -> None:
    """Write out_dir/report.md and its PNG plots (in out_dir/figures/, so that other reports,
    e.g. sweeps, can live beside them) from the metrics and curves on disk."""
    settings = Settings.from_params(params)
    labels = method_labels(settings.reported_methods, settings.noise.sigma)
    (out_dir / FIGURES).mkdir(parents=True, exist_ok=True)
    sections = [_dataset_section(dataset, settings, labels, out_dir) for dataset in settings.datasets]
    text = "\n\n".join(["# noisymaml report", _how_to_read(settings), _settings_list(settings), *sections])
    (out_dir / REPORT_FILE).write_text(text + "\n")


def _how_to_read(settings: Settings) -> str:
    return (
        "## How to read\n\n"
        "Every method is trained on the same training tasks from the same initial weights and "
        "scored on the same fixed test episodes. Each meta-trained model is adapted to every test "
        "task with a few gradient steps on the task's support set; *pre* is the score before "
        "adaptation, *post* after it. Cells are the mean ± 95% confidence half-width over tasks "
        f"(Student's t; one seed, `seed` = {settings.seed}; means over seeds: `noisymaml sweep report`). The "
        "**memorisation index** is the "
        f"pre-adaptation score on {MEMORISATION_TASKS} fixed training tasks: a model that solves "
        "its training tasks without adapting has memorised them (meta-overfitting) instead of "
        "learning to adapt. For classification, memorisation shows as pre-adaptation accuracy well above "
        "chance (1/ways); for the sinusoid, as a low pre-adaptation MSE. *Feedback tasks* are "
        f"{settings.feedback.tasks} episodes over test classes set aside for feedback; their "
        "support gradients weighted the re-meta-training of the *+ feedback* run. The *test* "
        "episodes are held out: they share no class and no image with the feedback tasks, so "
        "they are the fair test score for that run. The *continued without feedback* run goes "
        "on from the same training state for the same extra iterations without the weighting, "
        "so its difference to *+ feedback* is the effect of feedback rather than of training longer.")


def _settings_list(settings: Settings) -> str:
    noise, feedback = settings.noise, settings.feedback
    iterations = ", ".join(f"{dataset} {config.train.iterations}"
                           for dataset, config in settings.datasets.items())
    lines = [
        "## Settings",
        "",
        f"- seed: {settings.seed}",
        f"- methods: {', '.join(settings.methods)}",
        f"- meta-training iterations: {iterations}",
        f"- noise (noisy_ methods only): sigma = {noise.sigma:g} on the {NOISE_WHERE[noise.where]} "
        f"gradients (noise.where = {noise.where}), mean {noise.mean:g}, schedule {noise.schedule}, "
        f"outer std = {noise.outer_scale:g} × sigma",
        f"- feedback on {feedback.method}: {feedback.iterations} extra iterations continuing its "
        f"training run, tasks weighted by softmax({feedback.similarity} similarity of their "
        f"{feedback.compare} gradients / {feedback.temperature:g}) to the support gradients of "
        f"{feedback.tasks} feedback tasks"
        + (f", fed back online (re-training every {feedback.online_every} arriving tasks)"
           if feedback.mode == "online" else ""),
    ]
    algorithms = dict.fromkeys(m.removeprefix(NOISY) for m in settings.methods)
    for name in algorithms:
        described = METHODS[name](**getattr(settings.algorithms, name).model_dump()).describe()
        lines += [f"- {described}"] if described else []
    return "\n".join(lines)


def literature_table(dataset: str, config: Section, seed: int) -> list[str]:
    """The papers' figures beside this project's setting, which is marked when it is reduced."""
    spec = DATASETS[dataset]
    reported = spec.reported
    if not reported:
        return []
    tasks = config.tasks
    ours = f"this project's table above: {tasks.mode}, {tasks.ways}-way {tasks.shots}-shot, seed {seed}"
    reduced = spec.reductions(config)
    if reduced:
        ours += (f" — a reduced setting ({', '.join(reduced)}; the papers: {spec.paper_scale()}); "
                 "not comparable number for number")
    elif spec.paper_iterations:
        ours += " (paper scale)"
    rows = [[r.setting, r.method, r.value, r.source] for r in reported]
    return ["", "Reported in the literature (quoted, not reproduced here):", "",
            *(_table_row(row) for row in [["setting", "method", "reported test accuracy", "source"],
                                          [":--", ":--", "--:", ":--"], *rows]),
            "", f"Compare with {ours}."]


def _dataset_section(dataset: str, settings: Settings, labels: dict[str, str], out_dir: Path) -> str:
    measure, chance = measure_of(dataset), settings.chance(dataset)
    methods = settings.reported_methods
    metrics, curves = load_metrics(dataset, methods), load_curves(dataset, methods)
    lines = [f"## {dataset}", "",
             f"Metric: {measure.name}, {measure.better}."
             + ("" if chance is None else f" Chance level (1/ways): {measure.shown(chance):.2f}.")
             + (f" {protocol}" if (protocol := DATASETS[dataset].protocol(settings.datasets[dataset])) else "")]
    if metrics:
        lines += ["", results_table(metrics, measure, labels), *online_table(metrics, measure, labels)]
    lines += literature_table(dataset, settings.datasets[dataset], settings.seed)
    lines += _missing("results (not in the table)", metrics, metrics_path, dataset, labels)
    lines += _missing("learning curves", curves, curve_path, dataset, labels)
    if curves:
        plot_curves(align_curves(curves, settings.feedback.method), measure, labels,
                    out_dir / _image(dataset, "curves"), chance)
        lines += ["", f"![{dataset} learning curves]({_image(dataset, 'curves')})"]
    if metrics:
        plot_test(metrics, measure, labels, out_dir / _image(dataset, "test"), chance)
        lines += ["", f"![{dataset} test post-adaptation]({_image(dataset, 'test')})"]
    return "\n".join(lines)


def _image(dataset: str, kind: str) -> str:
    """A plot's path relative to the report."""
    return f"{FIGURES}/{dataset}_{kind}.png"


def _missing(what: str, found: dict, path_of: Callable[[str, str], Path], dataset: str,
             labels: dict[str, str]) -> list[str]:
    absent = [f"{labels[method]} (`{path_of(dataset, method).as_posix()}`)"
              for method in labels if method not in found]
    return ["", f"Missing {what}: {'; '.join(absent)}."] if absent else []
