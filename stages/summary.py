"""Stage `summary@<dataset>`: every method of a dataset in one small metrics file (what `dvc
metrics diff` and `dvc exp show` read) and one learning-curve table (what `dvc plots` draws)."""

import click

from noisymaml.errors import stage
from noisymaml.pipeline.params import parse_dataset_name, read_params
from noisymaml.reporting.summary import write_summary


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    written = write_summary(parse_dataset_name(dataset), read_params())
    click.echo(f"[summary {dataset}] wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
