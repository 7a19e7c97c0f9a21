"""Stage `episodes@<dataset>`: the task distribution's data and the fixed validation/test episodes."""

import click

from noisymaml.errors import stage
from noisymaml.pipeline import steps


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    click.echo(steps.episodes(dataset))


if __name__ == "__main__":
    main()
