"""Stage `episodes@<dataset>`: the task distribution's data and the fixed validation/test episodes."""

import click

from noisymaml.errors import stage


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    # imported here, under `stage`: Ctrl-C while importing is one line
    from noisymaml.pipeline import steps

    click.echo(steps.episodes(dataset))


if __name__ == "__main__":
    main()
