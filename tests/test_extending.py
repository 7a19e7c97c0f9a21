"""Adding a method or a dataset is one new file plus one registry line (README: Extending).

A toy method and a toy dataset from tests/toys/ go into a copy of the project exactly as the
recipes in the README say, and a tiny `dvc repro` trains, evaluates, feeds back and reports them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from project_copy import ROOT, copy_project, run

pytestmark = pytest.mark.slow  # `dvc repro` in a copy of the project
TOYS = Path(__file__).parent / "toys"


def register(project: Path, toy: str, package: str, module: str) -> None:
    """The recipe: the module into src/noisymaml/<package>/, its name as one line of MODULES."""
    shutil.copy(TOYS / toy, project / "src" / "noisymaml" / package / f"{module}.py")
    registry = project / "src" / "noisymaml" / package / "__init__.py"
    text = registry.read_text()
    anchor = "MODULES = (  # one line per"
    start = text.index(anchor)
    end = text.index(")\n", start)
    registry.write_text(text[:end] + f'    "{module}",\n' + text[end:])


def toy_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device="cpu", datasets=["toylines"], methods=["maml", "scaled_step"],
                  noisy_methods=["scaled_step"])
    params["algorithms"]["scaled_step"] = {"factor": 0.5}
    params["feedback"].update(method="noisy_scaled_step", tasks=2, iterations=2)
    params["toylines"] = {
        "tasks": {"support": 5, "query": 5, "test_episodes": 6, "val_episodes": 3, "feedback_episodes": 2},
        "model": {"hidden": [8]},
        "maml": {"inner_lr": 0.05, "inner_steps": 1, "first_order": False},
        "train": {"iterations": 4, "meta_batch": 3, "meta_lr": 0.01, "log_every": 2, "val_tasks": 2,
                  "checkpoint_every": 2, "batched_tasks": False, "meta_grad_clip": None,
                  "precision": "float32"},
        "eval": {"inner_steps": 1, "chunk": 3},
    }
    return params


def test_a_toy_method_and_dataset_run_through_the_pipeline(tmp_path: Path):
    copy_project(tmp_path, toy_params())
    register(tmp_path, "toy_method.py", "methods", "scaled_step")
    register(tmp_path, "toy_dataset.py", "datasets", "toylines")
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "repro"], tmp_path)
    for method in ("maml", "scaled_step", "noisy_scaled_step", "noisy_scaled_step_feedback"):
        metrics = json.loads((tmp_path / "metrics" / "toylines" / f"{method}.json").read_text())
        assert metrics["test"]["tasks"] == 6 and math.isfinite(metrics["test"]["loss_post"])
    report = (tmp_path / "reports" / "report.md").read_text()
    assert "## toylines" in report and "MAML, scaled inner step" in report
    assert "noisy MAML, scaled inner step" in report
