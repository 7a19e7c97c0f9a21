"""The `noisymaml` command: `predict` on a user's images, `sweep run|report` for a sigma sweep."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click

from noisymaml.core.devices import resolve_device
from noisymaml.datasets import DATASETS
from noisymaml.errors import DataError, stage
from noisymaml.predict import predict_folders, summary, write_predictions
from noisymaml.reporting.sweep import (
    PLACEMENTS,
    SEEDS,
    SIGMAS,
    Shard,
    queue_commands,
    run_queue,
    write_sweep_report,
)


@click.group()
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
@click.option("--steps", default=5, show_default=True, type=click.IntRange(min=0),
              help="Gradient steps of adaptation on the support set.")
@click.option("--inner-lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of the adaptation steps.")
@click.option("--output", default=Path("predictions.csv"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write: file (relative to --query), predicted_class, probability.")
@stage
def predict(model_file: Path, support_dir: Path, query_dir: Path, steps: int, inner_lr: float,
            output: Path) -> None:
    """Adapt a meta-trained model to a labelled support set, then classify the query images.

    Images of any size and format PIL reads are converted as in training: grey, resized to
    the model's image size (LANCZOS), inverted so that dark strokes on light paper become
    bright. Unreadable query images are reported and skipped; an unreadable support image
    stops the command.

    Note: the network normalises with batch statistics (batch norm without running
    statistics, as in MAML's transductive evaluation), so a query image's prediction depends
    on the other query images: all of them are classified together (in near-equal batches
    of at most 1000). Predicting a single image, or a different set, can change the results.

    Runs on CUDA when available, else on the CPU.
    """
    result = predict_folders(model_file, support_dir, query_dir, steps, inner_lr, resolve_device("auto"))
    for message in result.skipped:
        click.echo(f"skipped: {message}", err=True)
    write_predictions(output, result.rows)
    click.echo(summary(result, output))


REPORTS = Path("reports")


def _numbers(kind):
    def parse(ctx, param, value: str):
        try:
            return tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__} values, got {value!r}") from None
    return parse


def _shard(ctx, param, value: str) -> Shard:
    try:
        index, count = (int(part) for part in value.split("/"))
        return Shard(index, count)
    except ValueError:
        raise click.BadParameter(f"expected i/n with 1 <= i <= n (e.g. 2/3), got {value!r}") from None


@main.group()
def sweep() -> None:
    """A sigma x placement x seed sweep as DVC experiments, and its report in reports/."""


@sweep.command("run", short_help="Queue the sweep, run it one experiment at a time, write the report.")
@click.option("--dataset", required=True, type=click.Choice(list(DATASETS)))
@click.option("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS), show_default=True,
              callback=_numbers(float), help="noise.sigma values (0 = plain MAML, run once per seed).")
@click.option("--seeds", default=",".join(map(str, SEEDS)), show_default=True, callback=_numbers(int))
@click.option("--where", "placements", default=",".join(PLACEMENTS), show_default=True,
              callback=_numbers(str), help="noise.where values (inner, outer, both).")
@click.option("--feedback/--no-feedback", default=True, show_default=True,
              help="Also run the feedback ablation in every experiment (about twice the time).")
@click.option("--shard", default="1/1", show_default=True, callback=_shard,
              help="Queue only the i-th of n shares of the grid (one per machine; the shares "
                   "partition it). Push them with `dvc exp push`, report after `dvc exp pull`.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Experiments run at once: the number of GPUs (each run takes its own).")
@click.option("--poll", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds between looks at the queue.")
@stage
def sweep_run(dataset: str, sigmas, seeds, placements, feedback: bool, shard: Shard, jobs: int,
              poll: float) -> None:
    """Queue `dvc exp run` over the grid (or its --shard), run the queue with --jobs workers,
    then write reports/sweep_<dataset>.md from this machine's experiments. Needs a finished
    `make repro` (the archives in DVC's cache)."""
    commands = queue_commands(dataset, sigmas, seeds, placements, feedback, shard)
    if not commands:
        click.echo(f"[sweep] shard {shard.index}/{shard.count}: no grid point falls to this share")
        return
    for command in commands:
        click.echo("$ " + " ".join(command))
    run_queue(commands, jobs, poll, log=click.echo)
    _write_report(dataset, _exp_show())


@sweep.command("report", short_help="Write reports/sweep_<dataset>.md from the finished experiments.")
@click.option("--dataset", required=True, type=click.Choice(list(DATASETS)))
@click.option("--input", "source", default=None, type=click.File("r"),
              help="JSON saved from `dvc exp show --json` (default: run it here; - = standard input).")
@stage
def sweep_report(dataset: str, source) -> None:
    """Tabulate and plot the finished experiments: one row per (noise.where, sigma), mean ±
    95% CI over seeds, and the configuration chosen on validation tasks alone."""
    if source is None:
        doc = _exp_show()
    else:
        try:
            doc = json.load(source)
        except json.JSONDecodeError as err:
            raise DataError(f"{source.name}: not the JSON of `dvc exp show --json` ({err})") from None
    _write_report(dataset, doc)


def _exp_show() -> list:
    result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"`dvc exp show --json` failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def _write_report(dataset: str, doc: list) -> None:
    click.echo(f"[sweep] wrote {write_sweep_report(doc, dataset, REPORTS)}")


if __name__ == "__main__":
    main()
