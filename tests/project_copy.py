"""A fresh copy of the project (git-tracked and new files) to run DVC and the stages in, and the
tiny params that make a whole `dvc repro` of it take a minute or two."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in listed.splitlines() if (ROOT / f).is_file()]


def stage_env() -> dict:
    """What `make` sets up: the venv's tools first, no analytics, the project's own library."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": "src",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=stage_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_project(root: Path, params: dict) -> None:
    """The project with `params`, without the committed results data of the real sweeps and
    studies (reports/results/): a tiny project's sweep starts from none."""
    for name in project_files():
        if name.startswith("reports/results/"):
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["device"] = "cpu"
    params["feedback"].update(iterations=2, tasks=3)
    sinusoid = params["sinusoid"]
    sinusoid["tasks"].update(test_episodes=12, val_episodes=6)
    sinusoid["train"].update(iterations=6, log_every=3, checkpoint_every=3, val_tasks=4)
    omniglot = params["omniglot"]
    omniglot["tasks"].update(ways=5, test_episodes=8, val_episodes=4, feedback_classes=5, feedback_episodes=4,
                             split={"train": 20, "val": 10, "test": 10})
    omniglot["model"]["filters"] = 8
    omniglot["train"].update(iterations=2, meta_batch=2, log_every=1, checkpoint_every=1, val_tasks=2)
    return params
