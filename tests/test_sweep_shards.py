"""A sweep spread over machines: two shares run in two clones of one git remote (a local bare
repository) with one DVC remote (a local folder), pushed and pulled with `dvc exp push/pull`;
the report over both equals the report of the whole grid run in one clone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from project_copy import ROOT, copy_project, run, stage_env

pytestmark = pytest.mark.slow

GRID = ["--dataset", "sinusoid", "--sigmas", "0,0.3", "--seeds", "0", "--where", "both", "--no-feedback",
        "--poll", "3"]
SWEEP = [sys.executable, "-m", "noisymaml.cli", "sweep"]
COMMIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm"]


def tiny_sinusoid_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device="cpu", datasets=["sinusoid"])
    sinusoid = params["sinusoid"]
    sinusoid["tasks"].update(test_episodes=12, val_episodes=6)
    sinusoid["train"].update(iterations=6, log_every=3, checkpoint_every=3, val_tasks=4)
    return params


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Path:
    """A bare git repository holding the tiny project, whose DVC remote holds its fetched data."""
    tmp = tmp_path_factory.mktemp("shards")
    origin = tmp / "origin"
    copy_project(origin, tiny_sinusoid_params())
    run(["git", "init", "-q"], origin)
    run(["dvc", "remote", "add", "-d", "shared", str(tmp / "dvc-remote")], origin)
    run(["dvc", "repro", "fetch@sinusoid"], origin)
    run(["dvc", "push"], origin)
    run(["git", "add", "-A"], origin)
    run([*COMMIT, "tiny project"], origin)
    run(["git", "clone", "-q", "--bare", str(origin), str(tmp / "remote.git")], tmp)
    return tmp / "remote.git"


def clone(remote: Path, name: str) -> Path:
    root = remote.parent / name
    run(["git", "clone", "-q", str(remote), str(root)], remote.parent)
    run(["dvc", "pull", "fetch@sinusoid"], root)
    return root


def sweeps(runs: dict[Path, list[str]]) -> dict[Path, str]:
    """`noisymaml sweep run` in several clones at once, as on several machines; their outputs."""
    started = {root: subprocess.Popen([*SWEEP, "run", *GRID, *args], cwd=root, env=stage_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for root, args in runs.items()}
    outputs = {root: process.communicate()[0] for root, process in started.items()}
    for root, process in started.items():
        assert process.returncode == 0, f"sweep in {root.name} failed:\n{outputs[root]}"
    return outputs


def test_the_report_over_pushed_shares_equals_the_unsharded_report(remote: Path):
    first, second, whole = (clone(remote, name) for name in ("machine1", "machine2", "one_machine"))
    outputs = sweeps({first: ["--shard", "1/2"], second: ["--shard", "2/2"], whole: ["--jobs", "2"]})
    assert [outputs[root].count("$ dvc exp run --queue") for root in (first, second, whole)] == [1, 1, 2]
    for machine in (first, second):
        run(["dvc", "exp", "push", "origin"], machine)
    run(["dvc", "exp", "pull", "origin"], first)
    run([*SWEEP, "save", "--dataset", "sinusoid"], first)  # the pulled share joins this machine's results
    run([*SWEEP, "report", "--dataset", "sinusoid"], first)

    report = Path("reports") / "sweep_sinusoid.md"
    merged = (first / report).read_text()
    assert "2 finished experiments" in merged and "| off | 0 | 0 |" in merged and "| both | 0.3 | 0 |" in merged
    assert merged == (whole / report).read_text()
