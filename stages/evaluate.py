"""Stage `evaluate@<dataset>-<method>`: meta-test on the fixed episodes and capture test-task
support gradients."""

import click

from noisymaml.errors import stage


@click.command()
@click.argument("dataset")
@click.argument("method")
@stage
def main(dataset: str, method: str) -> None:
    # imported here, under `stage`: Ctrl-C while importing is one line
    from noisymaml.pipeline import steps

    click.echo(steps.evaluate(dataset, method))


if __name__ == "__main__":
    main()
