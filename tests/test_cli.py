"""The `noisymaml` command line: fast to start, a version, choices refused while parsing, help
on every option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from noisymaml.cli import ChoiceList, main
from noisymaml.datasets import DATASETS, MODULES

SRC = Path(__file__).resolve().parents[1] / "src"


def test_importing_the_command_loads_neither_torch_nor_matplotlib():
    """`noisymaml --help` must not pay for torch and matplotlib (seconds): each command imports
    them in its own body."""
    probe = ("import json, sys; import noisymaml.cli; "
             "print(json.dumps(sorted(m for m in ('torch', 'matplotlib', 'PIL', 'numpy') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert json.loads(result.stdout) == []


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"noisymaml, version {version('noisymaml')}\n"


def commands(group: click.Group, prefix: str = "noisymaml"):
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix} {name}")


@pytest.mark.parametrize("name, command", list(commands(main)), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help(name, command):
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"{name}: options without help: {missing}"


def test_dataset_choices_are_the_registry_without_importing_it():
    assert MODULES == tuple(DATASETS)


def test_choice_list_takes_comma_separated_choices():
    where = ChoiceList(("inner", "outer", "both"))
    assert where.convert("inner, both", None, None) == ("inner", "both")
    assert isinstance(where, click.Choice)
    with pytest.raises(click.BadParameter, match="'up' is not one of"):
        where.convert("inner,up", None, None)
