"""Stage `fetch@<dataset>`: check the dataset's files in data/downloads/<dataset>/ (Omniglot: or
download the official archives there)."""

import click

from noisymaml.sources import fetch
from noisymaml.errors import stage
from noisymaml.params import FetchParams, parse_dataset_name, parse_section, read_params
from noisymaml.paths import downloads_dir


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    params = parse_section(read_params(), "fetch", FetchParams)
    folder = downloads_dir(parse_dataset_name(dataset))
    click.echo(f"[fetch {dataset}] {folder}: {fetch(dataset, params, folder)}")


if __name__ == "__main__":
    main()
