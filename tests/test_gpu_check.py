"""benchmarks/gpu_check in its tiny CPU mode, as a GPU machine would run it: from a copy of the
tree, without dvc and ruamel.yaml, on small synthetic Omniglot archives."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import SourceFileLoader
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from project_copy import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check"
NOT_ON_THE_GPU_MACHINE = ("dvc", "ruamel")


def write_archive(path: Path, characters: int = 12, drawers: int = 3) -> Path:
    """An Omniglot-layout zip of `characters` characters, each drawn `drawers` times (10x10 PNGs)."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for c in range(characters):
            for d in range(drawers):
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(image, "PNG")
                archive.writestr(f"images_background/Alphabet{c % 2}/character{c:02d}/{c:02d}_{d:02d}.png",
                                 image.getvalue())
    return path


def tree_copy(tmp_path: Path) -> Path:
    """The script, throughput.py and params.yaml in a folder of their own, the library linked in."""
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    for name in ("benchmarks/gpu_check", "benchmarks/throughput.py", "params.yaml"):
        shutil.copy2(ROOT / name, tree / name)
    (tree / "src").symlink_to(ROOT / "src")
    return tree


def blocker(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """A folder whose packages shadow `names`: importing any of them fails."""
    folder = tmp_path / "blocked"
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return folder


def run_script(tree: Path, blocked: Path, *args: str) -> subprocess.CompletedProcess:
    """The script run as a program (its shebang finds python3 on PATH), the packages in `blocked` missing."""
    env = {**os.environ, "PYTHONPATH": str(blocked), "OMP_NUM_THREADS": "1",  # tiny tensors (conftest.py)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(tree / "benchmarks" / "gpu_check"), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)


def test_tiny_cpu_check_runs_every_part_without_dvc_or_ruamel(tmp_path):
    tree = tree_copy(tmp_path)
    archives = tmp_path / "archives"
    archives.mkdir()
    write_archive(archives / "synthetic.zip")
    output = tmp_path / "summary.json"
    result = run_script(tree, blocker(tmp_path, NOT_ON_THE_GPU_MACHINE), "--device", "cpu", "--tiny",
                        "--archives", str(archives), "--output", str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(output.read_text())
    assert summary["passed"] and summary["tiny"] and summary["device"].startswith("cpu")

    checked = {(r["method"], r["order"], r["tasks"]) for r in summary["agreement"]}
    assert checked == {(m, o, t) for m in ("maml", "mr_maml_w") for o in ("first", "second")
                       for t in ("loop", "vmap")}
    loop = [r for r in summary["agreement"] if r["tasks"] == "loop"]
    assert all(r["loss_relative"] == 0 and r["meta_gradient_relative"] == 0 for r in loop)  # cpu against cpu
    assert all(r["meta_gradient_relative"] > 0 for r in summary["agreement"] if r["tasks"] == "vmap")

    speeds = [r for r in summary["throughput"] if "iterations_per_second" in r]
    assert {(r["config"], r["tasks"]) for r in speeds} == {  # bf16 autocast: on CUDA only
        (c, t) for c in ("omniglot-20w1s", "miniimagenet-5w1s") for t in ("loop", "vmap")}
    assert all(r["iterations_per_second"] > 0 and r["hours_for_60k"] > 0 for r in speeds)
    assert all(r["auto_takes"] == "loop" for r in summary["throughput"] if "auto_takes" in r)

    part = summary["slice"]
    for run in ("maml", "noisy_maml"):
        assert part[run]["iterations"] == 2
        assert 0 <= part[run]["test_acc_post"] <= 1 and 0 <= part[run]["memorisation_index"] <= 1
    assert part["untrained"]["iterations"] == 0 and part["noise"]["sigma"] > 0
    assert result.stdout.count("[agreement]") == 8 and result.stdout.count("[slice]") == 3
    assert "[done] passed" in result.stdout


def test_a_missing_archive_folder_fails_its_part_and_the_check_but_keeps_the_others(tmp_path):
    tree = tree_copy(tmp_path)
    output = tmp_path / "summary.json"
    result = run_script(tree, blocker(tmp_path, NOT_ON_THE_GPU_MACHINE), "--device", "cpu", "--tiny",
                        "--archives", str(tmp_path / "nowhere"), "--output", str(output))
    assert result.returncode == 1
    summary = json.loads(output.read_text())
    assert "no Omniglot archive" in summary["slice"]["error"] and "nowhere" in summary["slice"]["error"]
    assert all(r["passed"] for r in summary["agreement"]) and not summary["passed"]
    assert "[slice] failed: DataError: no Omniglot archive" in result.stdout


def test_without_pydantic_or_its_wheels_it_says_how_to_fetch_them(tmp_path):
    result = run_script(tree_copy(tmp_path), blocker(tmp_path, (*NOT_ON_THE_GPU_MACHINE, "pydantic")),
                        "--device", "cpu", "--tiny")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: pydantic is not installed")
    assert "benchmarks/wheels holds no wheels" in result.stderr and "pip download" in result.stderr


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (its name has no .py suffix, so it is loaded by path)."""
    loader = SourceFileLoader("gpu_check", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_check", loader))
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_the_slice_takes_the_iterations_that_fit(gpu_check):
    fit = gpu_check.fitting_iterations
    assert fit(100.0, 0.5, runs=2) == 90  # 90 s of 100 (a tenth kept), two runs of 0.5 s per iteration
    assert fit(100.0, 0.5, runs=2, cap=10) == 10
    assert fit(-5.0, 0.5, runs=2) == 1  # out of time: one iteration still runs


def test_settings_changes_merge_into_nested_sections(gpu_check):
    base = {"tasks": {"ways": 20, "split": {"train": 162, "val": 20}}, "model": {"filters": 64}}
    assert gpu_check.merged(base, {"tasks": {"split": {"val": 3}}}) == {
        "tasks": {"ways": 20, "split": {"train": 162, "val": 3}}, "model": {"filters": 64}}


def test_a_path_that_fails_is_reported_and_the_others_are_timed(gpu_check):
    def broken():
        raise RuntimeError("expected scalar type BFloat16 but found Float\n(more lines)")

    calls = []
    steps, errors = gpu_check.runnable({"vmap": lambda: calls.append("vmap"), "vmap+bf16": broken})
    assert list(steps) == ["vmap"] and calls == ["vmap"]  # its first call is a warm-up
    assert errors == {"vmap+bf16": "RuntimeError: expected scalar type BFloat16 but found Float"}
    summary = {"agreement": [{"passed": True}], "throughput": [{"tasks": "vmap+bf16", "error": "..."}]}
    assert not gpu_check.passed(summary)
    assert gpu_check.passed({**summary, "throughput": [{"tasks": "vmap", "iterations_per_second": 1.0}]})
