"""Stage `report`: results tables and plots of all methods on all datasets, in reports/."""

from pathlib import Path

import click

from noisymaml.errors import stage
from noisymaml.params import read_params
from noisymaml.report import REPORT_FILE, write_report

OUT_DIR = Path("reports")


@click.command()
@stage
def main() -> None:
    write_report(OUT_DIR, read_params())
    click.echo(f"[report] wrote {OUT_DIR / REPORT_FILE}")


if __name__ == "__main__":
    main()
