"""Stage `feedback@<dataset>`: re-meta-train weighted by similarity to stored test gradients,
then re-evaluate.

Runs on the model of `feedback.method` (noisy_maml by default, any trained method works) and
also trains the same number of extra iterations without weighting ("continued"), so the
report can tell the effect of feedback from the effect of simply training longer.
"""

import click

from noisymaml.errors import stage


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    # imported here, under `stage`: Ctrl-C while importing is one line
    from noisymaml.pipeline import steps

    steps.feedback(dataset)


if __name__ == "__main__":
    main()
