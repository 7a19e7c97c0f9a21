"""Stage `episodes@<dataset>`: the task distribution's data and the fixed validation/test episodes."""

import json

import click

from noisymaml.datasets import build_episodes
from noisymaml.errors import stage
from noisymaml.params import FetchParams, parse_dataset, parse_section, parse_seed, read_params
from noisymaml.paths import downloads_dir, episodes_dir


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    data = read_params()
    config = parse_dataset(data, dataset)
    summary = build_episodes(dataset, config, parse_seed(data), downloads_dir(dataset),
                             parse_section(data, "fetch", FetchParams), episodes_dir(dataset))
    click.echo(f"[episodes {dataset}] {json.dumps(summary)}")


if __name__ == "__main__":
    main()
