"""Ctrl-C while a stage script is still importing its library ends with one line, like a Ctrl-C
during training (the script runs in a subprocess, interrupted in the middle of `import torch`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from project_copy import ROOT, stage_env

pytestmark = pytest.mark.slow  # a stage script in a subprocess


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    # cwd without params.yaml: were the signal late, the stage would stop at once, training nothing
    process = subprocess.Popen([sys.executable, "-v", str(ROOT / "stages" / "train.py"), "sinusoid", "maml"],
                               cwd=tmp_path, env={**stage_env(), "PYTHONPATH": str(ROOT / "src")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, stop = [], threading.Event()

    def press_ctrl_c():  # now and every 0.5 s, as a user would: an import may swallow one interrupt
        while process.poll() is None:
            process.send_signal(signal.SIGINT)
            if stop.wait(0.5):
                return

    presser = threading.Thread(target=press_ctrl_c)
    try:
        for line in process.stderr:  # -v: one line per module imported
            seen.append(line)
            if "torch" in line:
                presser.start()
                break
        _, rest = process.communicate(timeout=120)
    finally:
        stop.set()
        process.kill()
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "error: interrupted (Ctrl-C)" in stderr
    assert "params.yaml" not in stderr  # it stopped while importing
