"""A fresh copy of the project (git-tracked and new files) to run DVC and the stages in."""

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
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
