"""Ctrl-C while a stage script is still importing its library ends with one line, like a Ctrl-C
during training (the script runs in a subprocess, interrupted in the middle of `import torch`)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from project_copy import ROOT, stage_env

pytestmark = pytest.mark.slow  # a stage script in a subprocess


def _ctrl_c_as_in_a_terminal() -> None:
    """The child's SIGINT as a terminal gives it: a test suite started in the background
    (`make test &` from a script) inherits SIGINT ignored, and so would the stage."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    # cwd without params.yaml: were the signal late, the stage would stop at once, training nothing
    process = subprocess.Popen([sys.executable, "-v", str(ROOT / "stages" / "train.py"), "sinusoid", "maml"],
                               cwd=tmp_path, env={**stage_env(), "PYTHONPATH": str(ROOT / "src")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_ctrl_c_as_in_a_terminal)
    seen = []
    try:
        for line in process.stderr:  # -v: one line per module imported
            seen.append(line)
            if "torch" in line:
                process.send_signal(signal.SIGINT)
                break
        _, rest = process.communicate(timeout=120)
    finally:
        process.kill()
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "error: interrupted (Ctrl-C)" in stderr
    assert "params.yaml" not in stderr  # it stopped while importing
