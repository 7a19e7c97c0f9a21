"""The whole DVC pipeline on tiny params in a temporary copy of the project."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from noisymaml import predict
from noisymaml.core.models import load_model
from noisymaml.pipeline import run as run_module
from project_copy import ROOT, copy_project, run, stage_env, tiny_params

ARCHIVES = ROOT.parent / "shared" / "data" / "omniglot"
METHODS = ("maml", "mr_maml_w", "noisy_maml", "noisy_maml_feedback", "noisy_maml_continued")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not list(ARCHIVES.glob("*.zip")),
                                                   reason=f"no Omniglot archives in {ARCHIVES}")]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh git+DVC copy of the project with tiny params, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    copy_project(root, tiny_params())
    archives = root / "data" / "downloads" / "omniglot"
    archives.mkdir(parents=True)
    for archive in ARCHIVES.glob("*.zip"):
        shutil.copy(archive, archives)
    run(["git", "init", "-q"], root)
    run(["dvc", "repro"], root)
    return root


@pytest.mark.parametrize("dataset", ["sinusoid", "omniglot"])
def test_every_method_has_finite_metrics(project: Path, dataset: str):
    for method in METHODS:
        metrics = json.loads((project / "metrics" / dataset / f"{method}.json").read_text())
        assert metrics["test"]["tasks"] == tiny_params()[dataset]["tasks"]["test_episodes"]
        assert metrics["test_feedback_tasks"]["tasks"] == 3
        for group in ("test", "val", "train_tasks"):
            values = metrics[group]
            assert math.isfinite(values["loss_post"]) and values["loss_post_ci95"] >= 0
            if dataset == "omniglot":
                assert 0 <= values["acc_pre"] <= 1 and 0 <= values["acc_post"] <= 1


def test_report_and_curves_written(project: Path):
    report = (project / "reports" / "report.md").read_text()
    assert "sinusoid" in report.lower() and "omniglot" in report.lower()
    for dataset in ("sinusoid", "omniglot"):
        curve = (project / "plots" / dataset / "noisy_maml.csv").read_text().splitlines()
        iterations = tiny_params()[dataset]["train"]["iterations"]
        assert curve[0].startswith("iteration,") and curve[-1].split(",")[0] == str(iterations)


def test_dvc_metrics_are_the_summaries_and_plots_compare_every_method(project: Path):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    [files] = [rev["data"] for rev in shown.values()]
    assert set(files) == {"metrics/sinusoid.json", "metrics/omniglot.json"}
    assert set(files["metrics/omniglot.json"]["data"]["omniglot"]) == set(METHODS)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)
    assert not plots.get("errors")
    for dataset in ("sinusoid", "omniglot"):
        for chart in ("validation", "memorisation"):
            [drawn] = plots["data"][f"{dataset} {chart}"]
            assert {point["method"] for point in drawn["content"]["data"]["values"]} == set(METHODS)
    assert sorted(name for name in plots["data"] if name.startswith("reports/figures/")) == [
        f"reports/figures/{d}_{kind}.png" for d in ("omniglot", "sinusoid") for kind in ("curves", "test")]


def test_second_repro_does_nothing(project: Path):
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout


REPORTING = {"report", "summary@sinusoid", "summary@omniglot"}


@pytest.mark.parametrize("module, expected", [("reporting/report.py", REPORTING),
                                              ("reporting/sweep.py", REPORTING),
                                              ("predict.py", set()), ("cli.py", set())])
def test_editing_report_or_command_code_retrains_nothing(project: Path, module, expected):
    path = project / "src" / "noisymaml" / module
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        changed = set(json.loads(run(["dvc", "status", "--json"], project).stdout))
    finally:
        path.write_text(original)
    assert changed == expected


def test_a_second_repro_while_one_runs_is_refused(project: Path):
    """DVC's repository lock: a second `dvc repro` stops at once instead of running stages twice."""
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom dvc.repo import Repo\n"
                               "Repo('.').lock.lock()\nprint('locked', flush=True)\ntime.sleep(120)"],
                              cwd=project, env=stage_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with edited_params(project, "noise", "sigma", 0.2):
            result = run(["dvc", "repro"], project, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0 and "Unable to acquire lock" in result.stderr
    assert "Running stage" not in result.stdout


@contextmanager
def edited_params(project: Path, section: str, key: str | None, value):
    """params.yaml with one value changed (the whole section when key is None), restored afterwards."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    if key is None:
        params[section] = value
    else:
        target = params[section]
        for part in key.split(".")[:-1]:
            target = target[part]
        target[key.split(".")[-1]] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        yield
    finally:
        params_file.write_text(original)


def test_sigma_change_reruns_only_noisy_stages(project: Path):
    with edited_params(project, "noise", "sigma", 0.2):
        changed = set(json.loads(run(["dvc", "status", "--json"], project).stdout))
    assert {"train_noisy@sinusoid-maml", "train_noisy@omniglot-maml",
            "feedback@sinusoid", "feedback@omniglot", "report"} <= changed
    assert not any(name.startswith(("train@", "evaluate@", "episodes", "fetch")) for name in changed)


def test_an_algorithm_setting_reruns_only_that_method(project: Path):
    with edited_params(project, "algorithms", "mr_maml_w.beta", 0.5):
        changed = set(json.loads(run(["dvc", "status", "--json"], project).stdout))
    assert {"train@sinusoid-mr_maml_w", "train@omniglot-mr_maml_w"} <= changed
    assert not any(name.startswith(("train@", "train_noisy@")) and not name.endswith("mr_maml_w")
                   for name in changed)


def test_the_methods_parameter_selects_the_trained_methods(project: Path):
    with edited_params(project, "methods", None, ["fomaml", "meta_aug"]):
        stages = run(["dvc", "stage", "list", "--names-only"], project).stdout.split()
    trained = {name for name in stages if name.startswith("train@")}
    assert trained == {f"train@{d}-{m}" for d in ("sinusoid", "omniglot") for m in ("fomaml", "meta_aug")}


def test_the_datasets_parameter_selects_the_stages(project: Path):
    with edited_params(project, "datasets", None, ["omniglot"]):
        stages = run(["dvc", "stage", "list", "--names-only"], project).stdout.split()
    assert {"fetch@omniglot", "episodes@omniglot", "feedback@omniglot"} <= set(stages)
    assert not [name for name in stages if "sinusoid" in name]


@pytest.mark.parametrize("section, key, value, stage, expected", [
    ("noise", "sigma", -1.0, ["train.py", "sinusoid", "noisy_maml"], "`noise.sigma` = -1.0"),
    ("noise", "where", "sideways", ["train.py", "sinusoid", "noisy_maml"],
     "'inner', 'outer' or 'both'"),
    ("omniglot", "tasks.ways", 0, ["episodes.py", "omniglot"], "`omniglot.tasks.ways` = 0"),
])
def test_bad_parameter_stops_stage_with_one_message(project: Path, section, key, value, stage,
                                                    expected):
    with edited_params(project, section, key, value):
        result = run([sys.executable, f"stages/{stage[0]}", *stage[1:]], project, check=False)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


# --- interruption and reproducibility, on the stage scripts themselves -------------------------

TRAIN = [sys.executable, "stages/train.py", "sinusoid", "noisy_maml"]
EVALUATE = [sys.executable, "stages/evaluate.py", "sinusoid", "noisy_maml"]


def kill_after_first_checkpoint(root: Path, checkpoint: Path) -> int:
    """Start the train stage, SIGKILL it as soon as a checkpoint exists; returns its exit status."""
    process = subprocess.Popen(TRAIN, cwd=root, env=stage_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and not checkpoint.exists():
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        return process.wait()
    finally:
        process.kill()


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path):
    params = tiny_params()
    params["sinusoid"]["train"].update(iterations=400, meta_batch=5, log_every=50,
                                       checkpoint_every=20, val_tasks=2)
    copy_project(tmp_path, params)
    run([sys.executable, "stages/episodes.py", "sinusoid"], tmp_path)
    model = tmp_path / "data" / "models" / "sinusoid" / "noisy_maml.pt"
    metrics = tmp_path / "metrics" / "sinusoid" / "noisy_maml.json"
    checkpoint = tmp_path / "checkpoints" / "sinusoid" / "noisy_maml.pt"

    run(TRAIN, tmp_path)
    run(EVALUATE, tmp_path)
    reference_params = torch.load(model, weights_only=True)["params"]
    reference_metrics = metrics.read_bytes()
    assert not checkpoint.exists(), "a finished run leaves no checkpoint behind"
    model.unlink()
    metrics.unlink()

    status = kill_after_first_checkpoint(tmp_path, checkpoint)
    assert status == -signal.SIGKILL, "training finished before it could be killed"
    assert checkpoint.exists() and not model.exists()
    resumed = run(TRAIN, tmp_path)
    assert "resuming from checkpoint" in resumed.stderr + resumed.stdout
    run(EVALUATE, tmp_path)

    resumed_params = torch.load(model, weights_only=True)["params"]
    assert resumed_params.keys() == reference_params.keys()
    for name, value in reference_params.items():
        assert torch.equal(resumed_params[name], value), name
    assert metrics.read_bytes() == reference_metrics


def test_experiment_in_a_temporary_copy_gets_the_archives_from_the_cache(project: Path):
    """Queued experiments run in a copy without data/: offline, `fetch` must not need to run."""
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm",
         "tiny project"], project)
    result = run(["dvc", "exp", "run", "--temp", "-S", "noise.sigma=0.3", "feedback@omniglot"],
                 project)
    assert "Running stage 'train_noisy@omniglot-maml'" in result.stdout
    assert "Running stage 'fetch@" not in result.stdout


def test_noisy_maml_at_sigma_zero_is_maml_through_the_stages(tmp_path: Path):
    params = tiny_params()
    params["noise"]["sigma"] = 0.0
    copy_project(tmp_path, params)
    run([sys.executable, "stages/episodes.py", "sinusoid"], tmp_path)
    for method in ("maml", "noisy_maml"):
        run([sys.executable, "stages/train.py", "sinusoid", method], tmp_path)
        run([sys.executable, "stages/evaluate.py", "sinusoid", method], tmp_path)
    metrics = tmp_path / "metrics" / "sinusoid"
    assert (metrics / "noisy_maml.json").read_bytes() == (metrics / "maml.json").read_bytes()


def test_continued_feedback_run_equals_one_longer_training_run(tmp_path: Path):
    """feedback@ goes on from the training run's state: N then M iterations == N + M at once."""
    params = tiny_params()
    params["datasets"] = ["sinusoid"]
    params["feedback"].update(iterations=4)
    split, whole = tmp_path / "split", tmp_path / "whole"
    copy_project(split, params)
    params["sinusoid"]["train"]["iterations"] += 4
    copy_project(whole, params)
    for root in (split, whole):
        run([sys.executable, "stages/episodes.py", "sinusoid"], root)
        run(TRAIN, root)
    run(EVALUATE, split)
    run([sys.executable, "stages/feedback.py", "sinusoid"], split)
    continued = torch.load(split / "data/models/sinusoid/noisy_maml_continued.pt", weights_only=True)
    longer = torch.load(whole / "data/models/sinusoid/noisy_maml.pt", weights_only=True)
    assert continued["info"]["iterations"] == longer["info"]["iterations"]
    for name, value in longer["params"].items():
        assert torch.equal(continued["params"][name], value), name


def write_episode_folders(project: Path, root: Path, index: int = 0) -> tuple[Path, Path]:
    """Test episode `index` of the tiny Omniglot run as predict's folders: PNG files whose
    decoding (grey, inverted) gives back the pool's pixels; names sort in episode order."""
    pool = torch.load(project / "data/episodes/omniglot/pool.pt", weights_only=True)["images"]["test"]
    episode = torch.load(project / "data/episodes/omniglot/test.pt", weights_only=True)
    shots = tiny_params()["omniglot"]["tasks"]["shots"]
    for label, (cls, drawers) in enumerate(zip(episode["classes"][index], episode["drawers"][index])):
        for k, drawer in enumerate(drawers.tolist()):
            folder = root / ("support" if k < shots else "query") / f"c{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - pool[cls, drawer, 0].numpy()).save(folder / f"{k:02d}.png")
    return root / "support", root / "query"


@pytest.mark.parametrize("method", METHODS)
def test_predict_adapts_exactly_as_the_evaluate_stage(project: Path, tmp_path: Path, monkeypatch, method):
    """For every trained model (MR-MAML(W) and the feedback runs included), predict on one test
    episode written as folders gives the evaluation's loss and accuracy on that episode."""
    support_dir, query_dir = write_episode_folders(project, tmp_path)
    model_file = project / "data/models/omniglot" / f"{method}.pt"
    classifier = predict.load_classifier(model_file)
    support = predict.load_support(support_dir, classifier)
    query = predict.load_query(predict.find_query(query_dir, support.classes), classifier)
    probs = predict.predict_probs(classifier, predict.adapt_to_support(classifier, support), query.x)
    labels = torch.tensor([item.label for item in query.items])

    monkeypatch.chdir(project)
    evaluation = run_module.Run.from_params("omniglot", method.removesuffix("_feedback").removesuffix("_continued"))
    data = evaluation.task_data()
    model, params, _ = load_model(model_file)
    scores = run_module.evaluate_episodes(evaluation, evaluation.forward(model), data, params, data.test,
                                          "test episodes", limit=1)
    loss = torch.nn.functional.nll_loss(probs.log(), labels)
    assert loss.item() == pytest.approx(scores["loss_post"][0].item(), rel=1e-4, abs=1e-5)
    assert (probs.argmax(1) == labels).float().mean().item() == pytest.approx(scores["acc_post"][0].item())
