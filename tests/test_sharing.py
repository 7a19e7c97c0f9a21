"""Sharing results: `make remote URL=...` sets the DVC remote, `dvc push` sends models and
episodes, `dvc exp push` a sweep's experiments; a fresh clone pulls both and rebuilds the sweep
report. A local folder is the DVC remote, a local bare repository the git remote; sinusoid only,
tiny params (no archives needed)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from noisymaml.reporting.experiments import queue_commands
from project_copy import ROOT, copy_project, run, stage_env, tiny_params

pytestmark = pytest.mark.slow  # `dvc repro` and two experiments in a copy of the project
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
SWEEP = ["sinusoid", (0.0, 0.3), (0,), ("both",)]
REPORT = [sys.executable, "-m", "noisymaml.cli", "sweep", "report", "--dataset", "sinusoid"]


def readme_exp_show() -> list[str]:
    """The README's command for a compact `dvc exp show` table."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("dvc exp show --only-changed"))
    return shlex.split(line.split("  #")[0])


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    """A project that ran the pipeline and a two-point sweep, pushed to its remotes; and the
    remotes' git repository."""
    root, origin, storage = (tmp_path_factory.mktemp(name) for name in ("project", "origin", "storage"))
    params = tiny_params()
    params["datasets"] = ["sinusoid"]
    copy_project(root, params)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["dvc", "repro"], root)
    (root / ".venv").mkdir()
    (root / ".venv" / ".installed").touch()  # `make` takes the environment as installed
    run(["make", "remote", f"URL={storage}"], root)
    run(["git", "add", "-A"], root)
    run([*GIT, "commit", "-qm", "results"], root)
    for command in queue_commands(*SWEEP):  # each grid point once, in a temporary copy
        run([part if part != "--queue" else "--temp" for part in command], root)
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)
    run(["git", "remote", "add", "origin", str(origin)], root)
    run(["git", "push", "-q", "origin", "main"], root)
    run(["dvc", "push"], root)
    run(["dvc", "exp", "push", "origin"], root)
    return root, origin


def test_the_remote_is_one_make_command_and_holds_the_cache(shared):
    root, _ = shared
    config = (root / ".dvc" / "config").read_text()
    assert "remote = storage" in config and "['remote \"storage\"']" in config
    assert "usage: make remote URL=" in run(["make", "remote"], root, check=False).stderr


def test_a_fresh_clone_pulls_models_episodes_and_the_sweep(shared, tmp_path):
    root, origin = shared
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for path in ("data/models/sinusoid/noisy_maml.pt", "data/episodes/sinusoid", "data/gradients/sinusoid/maml.pt"):
        assert (clone / path).exists(), path
    assert "up to date" in run(["dvc", "status"], clone).stdout

    run(["dvc", "exp", "pull", "origin"], clone)
    experiments = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)[1]["experiments"]
    assert len(experiments) == 2
    run(REPORT, clone)
    run(REPORT, root)
    pulled = (clone / "reports" / "sweep_sinusoid.md").read_text()
    assert "2 finished experiments" in pulled
    assert pulled == (root / "reports" / "sweep_sinusoid.md").read_text()


def test_experiments_carry_their_summary_and_the_readme_table_fits_a_terminal(shared):
    root, _ = shared
    doc = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    summaries = {rev["revs"][0]["data"]["params"]["params.yaml"]["data"]["noise"]["sigma"]:
                 rev["revs"][0]["data"]["metrics"]["metrics/sinusoid.json"]["data"]["sinusoid"]
                 for rev in doc[1]["experiments"]}
    assert summaries[0.0]["noisy_maml"] == summaries[0.0]["maml"]  # sigma 0: noisy MAML is MAML
    assert summaries[0.3]["noisy_maml"] != summaries[0.0]["noisy_maml"]
    wide = {**stage_env(), "COLUMNS": "1000"}  # the table as wide as it is, not cut to a terminal
    table = subprocess.run(readme_exp_show(), cwd=root, env=wide, capture_output=True, text=True, check=True).stdout
    assert "sinusoid.noisy_maml.test" in table and "sinusoid.noisy_maml.memorisation" in table
    assert "noise.sigma" in table and "ci95" not in table and "data/" not in table
    assert max(map(len, table.splitlines())) <= 120, table
