"""Stage `train@<dataset>-<method>`: meta-train one method on one dataset; saves its
meta-parameters and learning curve."""

import click

from noisymaml.errors import stage


@click.command()
@click.argument("dataset")
@click.argument("method")
@stage
def main(dataset: str, method: str) -> None:
    # imported here, under `stage`: Ctrl-C while importing is one line
    from noisymaml.pipeline import steps

    steps.train(dataset, method)


if __name__ == "__main__":
    main()
