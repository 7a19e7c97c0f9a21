"""Stage `report`: results tables and plots of all methods on all datasets, in reports/."""

import click

from noisymaml.errors import stage
from noisymaml.reporting.report import write_default_report


@click.command()
@stage
def main() -> None:
    click.echo(f"[report] wrote {write_default_report()}")


if __name__ == "__main__":
    main()
