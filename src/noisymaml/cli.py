"""The `noisymaml` command: `predict` on a user's images, `sweep-table` for a sigma sweep."""

from __future__ import annotations

import json
from pathlib import Path

import click

from noisymaml.errors import DataError, stage
from noisymaml.params import DATASETS
from noisymaml.predict import predict_folders, summary, write_predictions
from noisymaml.sweep import finished_runs, sweep_table
from noisymaml.training import resolve_device


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


@main.command("sweep-table", short_help="Tabulate a sigma sweep from `dvc exp show --json`.")
@click.option("--dataset", required=True, type=click.Choice(list(DATASETS)))
@click.option("--input", "source", default="-", type=click.File("r"), show_default=True,
              help="The JSON written by `dvc exp show --json` (- = standard input).")
@stage
def sweep_table_command(dataset: str, source) -> None:
    """Print one markdown row per sigma (mean ± 95% CI over seeds) and the sigma chosen on
    validation tasks alone, e.g. `dvc exp show --json | noisymaml sweep-table --dataset sinusoid`."""
    try:
        doc = json.load(source)
    except json.JSONDecodeError as err:
        raise DataError(f"{source.name}: not the JSON of `dvc exp show --json` ({err})") from None
    click.echo(sweep_table(finished_runs(doc), dataset))


if __name__ == "__main__":
    main()
