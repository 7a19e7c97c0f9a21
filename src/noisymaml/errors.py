"""Errors that stages report as one clear message instead of a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import click

INTERRUPTED = 130  # exit status of a command ended by Ctrl-C (128 + SIGINT)


class NoisyMamlError(Exception):
    """Base class: the message alone is shown to the user."""


class ParamError(NoisyMamlError):
    """A params.yaml value is invalid; the message names the key, the value and what is allowed."""


class DataError(NoisyMamlError):
    """A data file or folder is missing, broken or of the wrong layout; the message names it."""


class OutputError(NoisyMamlError):
    """A file cannot be written (read-only folder, full disk); the message names it."""


def stage(fn: Callable) -> Callable:
    """Run a stage body; a NoisyMamlError becomes one `error:` line and exit status 2, a Ctrl-C
    one line and exit status 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NoisyMamlError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted (Ctrl-C)", err=True)
            sys.exit(INTERRUPTED)
    return wrapper
