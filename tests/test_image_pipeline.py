"""MiniImageNet and D'Claw through the whole DVC pipeline, on tiny folders in the real formats:
fetch -> episodes -> training of every method -> evaluation -> feedback -> report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from image_fixtures import write_dclaw, write_miniimagenet
from project_copy import ROOT, copy_project, run

pytestmark = pytest.mark.slow  # `dvc repro` in a copy of the project

DATASETS = ("miniimagenet", "dclaw")
METHODS = ("maml", "mr_maml_w", "noisy_maml", "noisy_maml_feedback", "noisy_maml_continued")
MINI_CLASSES = {"train": 6, "val": 3, "test": 6}  # test: 3 feedback + 3 held-out classes
TEST_EPISODES = 6


def tiny_params() -> dict:
    """Both image datasets, 3-way MiniImageNet, 16x16 images (the fixtures are 84x84: resized)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device="cpu", datasets=list(DATASETS))
    params["feedback"].update(iterations=2, tasks=2)
    for name in DATASETS:
        section = params[name]
        section["tasks"].update(image_size=16, shots=1, query_shots=2, test_episodes=TEST_EPISODES,
                                val_episodes=3, feedback_episodes=3)
        section["model"]["filters"] = 4
        section["maml"]["inner_steps"] = 1
        section["train"].update(iterations=2, meta_batch=2, log_every=1, checkpoint_every=1, val_tasks=2)
        section["eval"].update(inner_steps=2, chunk=4)
    params["miniimagenet"]["tasks"].update(ways=3, feedback_classes=3)
    return params


def new_project(root: Path, params: dict, layout: str) -> Path:
    copy_project(root, params)
    downloads = root / "data" / "downloads"
    write_miniimagenet(downloads / "miniimagenet", layout, MINI_CLASSES)
    write_dclaw(downloads / "dclaw")
    run(["git", "init", "-q"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = new_project(tmp_path_factory.mktemp("images"), tiny_params(), "csv")
    run(["dvc", "repro"], root)
    return root


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_method_is_trained_and_scored(project: Path, dataset: str):
    for method in METHODS:
        metrics = json.loads((project / "metrics" / dataset / f"{method}.json").read_text())
        assert metrics["test"]["tasks"] == TEST_EPISODES
        for group in ("test", "val", "train_tasks"):
            assert 0 <= metrics[group]["acc_pre"] <= 1 and 0 <= metrics[group]["acc_post"] <= 1


def test_pools_are_rgb_channels_first_at_the_asked_size(project: Path):
    mini = torch.load(project / "data/episodes/miniimagenet/pool.pt", weights_only=True)
    assert {s: tuple(p.shape) for s, p in mini["images"].items()} == {
        "train": (6, 3, 3, 16, 16), "val": (3, 3, 3, 16, 16),
        "feedback": (3, 3, 3, 16, 16), "test": (3, 3, 3, 16, 16)}  # the 6 test classes, split
    assert mini["groups"].shape == (2, 3)  # 6 training classes in fixed groups of 3 ways
    dclaw = torch.load(project / "data/episodes/dclaw/pool.pt", weights_only=True)
    feedback, test = dclaw["classes"]["feedback"], dclaw["classes"]["test"]  # split 1: objects 5, 10
    assert sorted([feedback, test]) == [["obj10_neg", "obj10_pos"], ["obj5_neg", "obj5_pos"]]
    assert dclaw["groups"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]


def test_dclaw_test_tasks_are_one_objects_neg_and_pos(project: Path):
    classes = torch.load(project / "data/episodes/dclaw/test.pt", weights_only=True)["classes"]
    assert classes.shape == (TEST_EPISODES, 2)
    assert (classes[:, 0] % 2 == 0).all() and (classes[:, 1] == classes[:, 0] + 1).all()


def test_report_covers_the_selected_datasets_with_their_literature(project: Path):
    report = (project / "reports" / "report.md").read_text()
    assert "## miniimagenet" in report and "## dclaw" in report
    assert "## omniglot" not in report and "## sinusoid" not in report
    assert "48.70 ± 1.84%" in report and "72.5%" in report
    assert "reduced setting (2 meta-iterations" in report


def test_pickle_layout_is_refused_until_opted_in(tmp_path: Path):
    root = new_project(tmp_path, tiny_params(), "pickle")
    refused = run(["dvc", "repro", "episodes@miniimagenet"], root, check=False)
    assert refused.returncode != 0
    assert "fetch.allow_pickle: true" in refused.stderr and "Traceback" not in refused.stderr
    assert not (root / "data" / "episodes" / "miniimagenet").exists()
    params = tiny_params()
    params["fetch"]["allow_pickle"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "episodes@miniimagenet"], root)
    pool = torch.load(root / "data/episodes/miniimagenet/pool.pt", weights_only=True)
    assert pool["images"]["train"].shape == (6, 3, 3, 16, 16)


def test_absent_data_names_the_folder_and_the_expected_layout(tmp_path: Path):
    root = new_project(tmp_path, tiny_params(), "csv")
    shutil.rmtree(root / "data" / "downloads" / "dclaw")
    result = run(["dvc", "repro", "fetch@dclaw"], root, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "data/downloads/dclaw does not exist" in result.stderr and "objN_pos" in result.stderr
