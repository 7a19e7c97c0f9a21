"""The `noisymaml` command: `predict` on a user's images, `sweep run|save|report` for a sigma sweep,
`study run|save|stop|report` for a study defined in studies/<name>.yaml.

Only click and light modules load at start, so `noisymaml --help` answers at once: each command
imports torch, matplotlib and the library it needs in its own body.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from noisymaml.datasets import MODULES as DATASET_NAMES
from noisymaml.errors import DataError, stage
from noisymaml.reporting.experiments import PLACEMENTS, SEEDS, SIGMAS, Shard

REPORTS = Path("reports")


class ChoiceList(click.Choice):
    """Comma-separated values, each one of the choices (`--where inner,both`): a value outside
    them is refused while the command line is parsed, before any work."""

    name = "choice list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):  # already converted (a default given as a tuple)
            return value
        return tuple(super(ChoiceList, self).convert(part.strip(), param, ctx) for part in value.split(","))

    def get_metavar(self, param, ctx) -> str:
        return f"{super().get_metavar(param, ctx)},..."


def _numbers(kind):
    def parse(ctx, param, value: str):
        try:
            return tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__} values, got {value!r}") from None
    return parse


@click.group()
@click.version_option(package_name="noisymaml", prog_name="noisymaml")
def main() -> None:
    """noisymaml: noisy MAML against meta-overfitting (the pipeline runs with `dvc repro`)."""


@main.command(short_help="Adapt to a support folder, then classify query images.")
@click.option("--model", "model_file", required=True, type=click.Path(path_type=Path),
              help="Meta-parameters file written by the train stage (data/models/omniglot/<method>.pt).")
@click.option("--support", "support_dir", required=True, type=click.Path(path_type=Path),
              help="Folder with one sub-folder of images per class (label i = i-th class name in "
                   "sorted order); as many classes as the model's n_classes.")
@click.option("--query", "query_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of images to classify, directly in it or in sub-folders named like the "
                   "support classes (then the accuracy is printed).")
@click.option("--steps", default=None, type=click.IntRange(min=0),
              help="Gradient steps of adaptation on the support set [default: as the model's evaluation].")
@click.option("--inner-lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of the adaptation steps [default: as the model's evaluation].")
@click.option("--output", default=Path("predictions.csv"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write: file (relative to --query), predicted_class, probability.")
@stage
def predict(model_file: Path, support_dir: Path, query_dir: Path, steps: int | None,
            inner_lr: float | None, output: Path) -> None:
    """Adapt a meta-trained model to a labelled support set, then classify the query images,
    exactly as the evaluate stage adapts (method, inner loop and image handling come from the
    model file).

    Images of any size and format PIL reads are converted as in training: for Omniglot models
    grey, resized to the model's image size (LANCZOS), inverted so that dark strokes on light
    paper become bright; for RGB models (MiniImageNet, D'Claw) RGB, resized. Unreadable query
    images are reported and skipped; an unreadable support image stops the command.

    Note: the network normalises with batch statistics (batch norm without running
    statistics, as in MAML's transductive evaluation), so a query image's prediction depends
    on the other images of its batch: query images go through in sorted order, in batches
    of one evaluation episode's query set (ways x query shots).

    Runs on CUDA when available, else on the CPU.
    """
    from noisymaml.core.devices import resolve_device
    from noisymaml.predict import predict_folders, summary, write_predictions

    result = predict_folders(model_file, support_dir, query_dir, steps, inner_lr, resolve_device("auto"))
    for message in result.skipped:
        click.echo(f"skipped: {message}", err=True)
    write_predictions(output, result.rows)
    click.echo(summary(result, output))


def _shard(ctx, param, value: str) -> Shard:
    try:
        index, count = (int(part) for part in value.split("/"))
        return Shard(index, count)
    except ValueError:
        raise click.BadParameter(f"expected i/n with 1 <= i <= n (e.g. 2/3), got {value!r}") from None


JOBS_OPTION = click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
                           help="Experiments run at once: the number of GPUs (each run takes its own).")


@main.group()
def sweep() -> None:
    """A sigma x placement x seed sweep as DVC experiments, and its report in reports/."""


DATASET_OPTION = click.option("--dataset", required=True, type=click.Choice(DATASET_NAMES),
                              help="The dataset whose noisy MAML chain the sweep runs.")


@sweep.command("run", short_help="Queue the sweep, run it one experiment at a time, write the report.")
@DATASET_OPTION
@click.option("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS), show_default=True,
              callback=_numbers(float), help="noise.sigma values (0 = plain MAML, run once per seed).")
@click.option("--seeds", default=",".join(map(str, SEEDS)), show_default=True, callback=_numbers(int),
              help="seed values: every grid point runs once per seed.")
@click.option("--where", "placements", default=",".join(PLACEMENTS), show_default=True,
              type=ChoiceList(PLACEMENTS), help="noise.where values: where the noise goes.")
@click.option("--feedback/--no-feedback", default=True, show_default=True,
              help="Also run the feedback ablation in every experiment (about twice the time).")
@click.option("--shard", default="1/1", show_default=True, callback=_shard,
              help="Queue only the i-th of n shares of the grid (one per machine; the shares "
                   "partition it). Push them with `dvc exp push`, report after `dvc exp pull`.")
@JOBS_OPTION
@click.option("--poll", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds between looks at the queue.")
@stage
def sweep_run(dataset: str, sigmas, seeds, placements, feedback: bool, shard: Shard, jobs: int,
              poll: float) -> None:
    """Queue `dvc exp run` over the grid (or its --shard), run the queue with --jobs workers,
    then write reports/sweep_<dataset>.md from this machine's experiments. Grid points the
    results file (reports/results/<dataset>.json) already holds are not queued again: a sweep
    stopped anywhere resumes. Needs a finished `make repro` (the archives in DVC's cache)."""
    from noisymaml.reporting.experiments import exp_show, queue_commands, run_queue

    results = _default_results(dataset)
    done = _done_points(dataset, results, feedback)
    share = queue_commands(dataset, sigmas, seeds, placements, feedback, shard)
    if not share:
        click.echo(f"[sweep] shard {shard.index}/{shard.count}: no grid point falls to this share")
        return
    commands = queue_commands(dataset, sigmas, seeds, placements, feedback, shard, done)
    if len(commands) < len(share):
        click.echo(f"[sweep] {len(share) - len(commands)} grid point(s) already in {results}: not queued again")
    if not commands:
        return
    for command in commands:
        click.echo("$ " + " ".join(command))
    run_queue(commands, jobs, poll, log=click.echo)
    _save(dataset, exp_show(), results)
    _write_report(dataset, _results_document(dataset, results))


def _done_points(dataset: str, results: Path, feedback: bool) -> frozenset:
    if not results.exists():
        return frozenset()
    from noisymaml.reporting.experiments import with_method_files
    from noisymaml.reporting.sweep import done_points, sweep_files

    with _named(results):
        return done_points(with_method_files(_results_document(dataset, results), sweep_files(dataset)),
                           dataset, feedback)


INPUT_OPTION = click.option(
    "--input", "source", default=None, type=click.File("r"),
    help="JSON saved from `dvc exp show --json` (- = standard input) instead of running it here.")


def _results_option(help_text: str):
    return click.option("--results", "results", default=None, type=click.Path(dir_okay=False, path_type=Path),
                        help=help_text)


@sweep.command("save", short_help="Add the finished experiments to reports/results/<dataset>.json.")
@DATASET_OPTION
@INPUT_OPTION
@_results_option("Results file to merge into [default: reports/results/<dataset>.json].")
@stage
def sweep_save(dataset: str, source, results: Path | None) -> None:
    """Write every finished experiment of `dvc exp show` (name, commit, params.yaml values,
    metrics files, per-method files from its commit) and its baseline into the results file,
    merged with what it holds: keyed by experiment commit, so saving again adds nothing twice.
    Commit the file: `noisymaml sweep report` rebuilds the report from it on any clone."""
    with _named(source and source.name):
        doc = _shown_document(source)
    _save(dataset, doc, results or _default_results(dataset), source and source.name)


@contextmanager
def _named(source: str | Path | None) -> Iterator[None]:
    """DataErrors about a document's content, prefixed with the file they come from."""
    try:
        yield
    except DataError as err:
        if source is None or str(err).startswith(f"{source}:"):
            raise
        raise DataError(f"{source}: {err}") from None


@sweep.command("report", short_help="Write reports/sweep_<dataset>.md from the results file or the experiments.")
@DATASET_OPTION
@INPUT_OPTION
@_results_option("Results file written by `noisymaml sweep save` [default: reports/results/<dataset>.json "
                 "when it exists, else the experiments of `dvc exp show`].")
@stage
def sweep_report(dataset: str, source, results: Path | None) -> None:
    """Tabulate and plot the finished experiments: one row per (noise.where, sigma), mean ±
    95% CI over seeds, and the configuration chosen on validation tasks alone. From the
    committed results file (no experiment refs needed), or from `dvc exp show` (each
    experiment's per-method files read from its git commit, local or `dvc exp pull`ed)."""
    if source is not None and results is not None:
        raise click.UsageError("give --input or --results, not both")
    if source is None and results is None and _default_results(dataset).exists():
        results = _default_results(dataset)
    if results is not None:
        with _named(results):
            _write_report(dataset, _results_document(dataset, results))
    else:
        with _named(source and source.name):
            _write_report(dataset, _shown_document(source))


def _default_results(dataset: str) -> Path:
    from noisymaml.reporting.results import results_path

    return results_path(dataset)


def _shown_document(source) -> list:
    """The `dvc exp show --json` document: run here, or read from `source`."""
    from noisymaml.reporting.experiments import exp_show

    if source is None:
        return exp_show()
    try:
        return json.load(source)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{source.name}: not the JSON of `dvc exp show --json` ({err})") from None


def _results_document(dataset: str, path: Path) -> list:
    from noisymaml.reporting.results import as_document, load_results

    click.echo(f"[sweep] from the results in {path}")
    return as_document(load_results(path, dataset))


def _save(dataset: str, doc: list, path: Path, source: str | None = None) -> None:
    """Merge the document (from `source`, where it was read from a file) into the results file."""
    from noisymaml.reporting.experiments import with_method_files
    from noisymaml.reporting.results import save_results
    from noisymaml.reporting.sweep import sweep_experiments, sweep_files

    with _named(source):
        doc = sweep_experiments(with_method_files(doc, sweep_files(dataset)), dataset)  # refuses other shapes
    added, held = save_results(path, doc, dataset)
    click.echo(f"[sweep] {path}: {added} experiment(s) added, {held} held; commit it to keep them")


def _write_report(dataset: str, doc: list) -> None:
    from noisymaml.reporting.experiments import with_method_files
    from noisymaml.reporting.sweep import sweep_files, write_sweep_report

    path = write_sweep_report(with_method_files(doc, sweep_files(dataset)), dataset, REPORTS)
    click.echo(f"[sweep] wrote {path}")


@main.group()
def study() -> None:
    """A study (studies/<name>.yaml: generators x arms x seeds, a validation choice, feedback)
    as named DVC experiments, its results in reports/results/study_<name>.json, its report in
    reports/<name>.md."""


STUDY_FILE = click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))


@study.command("run", short_help="Queue the cells not done yet, run them, save each as it finishes.")
@STUDY_FILE
@click.option("--only", multiple=True, metavar="GLOB",
              help="Run only the cells whose name matches one of these globs (repeatable), e.g. "
                   "--only 'yin-maml-*' --only '*-s0-*'. Cell names: <generator>-<arm>-s<seed>-<digest>.")
@JOBS_OPTION
@click.option("--poll", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds between looks at the queue (each look saves what finished).")
@click.option("--dry-run", is_flag=True, help="List the commands it would queue, and queue nothing.")
@stage
def study_run(study_file: Path, only: tuple[str, ...], jobs: int, poll: float, dry_run: bool) -> None:
    """Queue every cell of the study that can run now and has no saved result, run the queue,
    and save each finished cell to reports/results/study_<study>.json; then queue the cells those
    made possible (the arm chosen on validation), until none is left; then write the report.
    Stopped anywhere (Ctrl-C, then `noisymaml study stop` to end the queue's work; a lost
    machine), it resumes where it stopped: commit the results file, run it again. Needs a
    finished `make repro` (the archives in DVC's cache)."""
    from noisymaml.reporting import study as studies

    spec = studies.load_study(study_file)
    path = studies.results_file(spec)
    if dry_run:
        for cell in studies.pending(spec, studies.load_results(path, spec), only):
            click.echo("$ " + shlex.join(cell.command()))
        return
    studies.run(spec, path, jobs, poll, only, log=click.echo)
    _write_study_report(spec, path)


@study.command("save", short_help="Add the study's finished experiments to its results file.")
@STUDY_FILE
@stage
def study_save(study_file: Path) -> None:
    """Write the study's finished experiments (found by their cell names among the experiment
    refs of every commit, run here or `dvc exp pull`ed: commit, params.yaml, metrics file and
    learning curve read from git) into reports/results/study_<study>.json. Commit the file:
    `noisymaml study report` rebuilds the report from it on any clone."""
    from noisymaml.reporting import study as studies

    spec = studies.load_study(study_file)
    path = studies.results_file(spec)
    with _named(path):
        added, held = studies.save(spec, path)
    click.echo(f"[study] {path}: {added} cell(s) added, {held} held; commit it to keep them")


@study.command("stop", short_help="Save what finished; take the study's cells off the queue.")
@STUDY_FILE
@stage
def study_stop(study_file: Path) -> None:
    """End a study's slice: save its finished experiments to reports/results/study_<study>.json,
    drop its queued cells, kill its running ones (they count as not run, not as failed) and stop
    the queue's workers; other experiments in the queue are left alone. Commit the file: the next
    `study run` resumes there."""
    from noisymaml.reporting import study as studies

    spec = studies.load_study(study_file)
    path = studies.results_file(spec)
    with _named(path):
        studies.stop(spec, path, log=click.echo)
    _write_study_report(spec, path)


@study.command("report", short_help="Write reports/<study>.md from the study's results file.")
@STUDY_FILE
@stage
def study_report(study_file: Path) -> None:
    """Tables (the validation choice, the arms per generator, feedback) and convergence
    figures from reports/results/study_<study>.json alone: no experiment refs needed."""
    from noisymaml.reporting import study as studies

    spec = studies.load_study(study_file)
    _write_study_report(spec, studies.results_file(spec))


def _write_study_report(spec, path: Path) -> None:
    from noisymaml.reporting.study import load_results
    from noisymaml.reporting.study_report import write_study_report

    with _named(path):
        written = write_study_report(spec, load_results(path, spec), REPORTS)
    click.echo(f"[study] wrote {written}")


if __name__ == "__main__":
    main()
