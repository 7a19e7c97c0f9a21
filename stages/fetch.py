"""Stage `fetch`: verify (or download) the Omniglot archives in `omniglot.fetch.folder`."""

from pathlib import Path

import click

from noisymaml.errors import stage
from noisymaml.omniglot import fetch_archives
from noisymaml.params import parse_dataset, read_params


@click.command()
@stage
def main() -> None:
    config = parse_dataset(read_params(), "omniglot")
    archives = fetch_archives(Path(config.fetch.folder), config.fetch.download)
    click.echo(f"[fetch] {len(archives)} verified archive(s) in {config.fetch.folder}: "
               + ", ".join(a.name for a in archives))


if __name__ == "__main__":
    main()
