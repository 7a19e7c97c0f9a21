"""Errors that stages report as one clear message instead of a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import click


class NoisyMamlError(Exception):
    """Base class: the message alone is shown to the user."""


class ParamError(NoisyMamlError):
    """A params.yaml value is invalid; the message names the key, the value and what is allowed."""


class DataError(NoisyMamlError):
    """A data file or folder is missing, broken or of the wrong layout; the message names it."""


def stage(fn: Callable) -> Callable:
    """Run a stage body; a NoisyMamlError becomes one `error:` line and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NoisyMamlError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
    return wrapper
