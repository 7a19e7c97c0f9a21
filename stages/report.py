"""Stage `report`: results tables and plots of all methods on all datasets, in reports/."""

import click

from noisymaml.errors import stage


@click.command()
@stage
def main() -> None:
    # imported here, under `stage`: Ctrl-C while importing is one line
    from noisymaml.reporting.report import write_default_report

    click.echo(f"[report] wrote {write_default_report()}")


if __name__ == "__main__":
    main()
