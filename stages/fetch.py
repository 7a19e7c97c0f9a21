"""Stage `fetch@<dataset>`: check the dataset's files in data/downloads/<dataset>/ (Omniglot: or
download the official archives there)."""

import click

from noisymaml.errors import stage


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    # imported here, under `stage`: Ctrl-C while importing is one line
    from noisymaml.pipeline import steps

    click.echo(steps.fetch(dataset))


if __name__ == "__main__":
    main()
