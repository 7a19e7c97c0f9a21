"""The online feedback mode on a tiny sinusoid stream (5 tasks, re-training every 2): each task
is scored before its gradient is stored, one round per k arrivals, and equal weights are the
unweighted control bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from noisymaml.core.feedback import online_stream, rounds
from noisymaml.pipeline import run as run_module
from noisymaml.pipeline import steps
from noisymaml.pipeline.paths import metrics_path, model_path
from noisymaml.pipeline.run import Run, online_feedback, resumed_trainer
from project_copy import tiny_params

ARRIVALS, EVERY, ITERATIONS = 5, 2, 4


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with tiny online params, the sinusoid episodes and a trained noisy MAML."""
    root = tmp_path_factory.mktemp("online")
    params = tiny_params()
    params["datasets"] = ["sinusoid"]
    params["feedback"].update(tasks=ARRIVALS, iterations=ITERATIONS, mode="online", online_every=EVERY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        steps.episodes("sinusoid")
        steps.train("sinusoid", "noisy_maml")
    return root


def stream(weigher_of, label: str = "online_test"):
    run = Run.from_params("sinusoid", "noisy_maml")
    data = run.task_data()
    trainer, _ = resumed_trainer(run, data, model_path("sinusoid", "noisy_maml"))
    start = trainer.iteration
    rows, scores = online_feedback(run, trainer, data, label, {"variant": label}, weigher_of)
    return trainer, start, rows, scores


def uniform(reference):
    """A weigher giving every task of the meta-batch the same weight, 1/n."""
    def weigh(meta_grads, support_grads):
        tasks = len(next(iter(meta_grads.values())))
        return torch.full((tasks,), 1.0 / tasks)
    return weigh


def test_each_task_is_scored_before_its_gradient_is_stored(project, monkeypatch):
    monkeypatch.chdir(project)
    events = []
    evaluate, capture = run_module.evaluate_episodes, run_module.capture_gradients

    def scored(run, forward, data, params, episodes, what, *args, **kwargs):
        if what.startswith("arriving"):
            events.append(("score", episodes.start))
        return evaluate(run, forward, data, params, episodes, what, *args, **kwargs)

    def stored(forward, objective, params, episodes, count):
        events.append(("store", episodes.start))
        return capture(forward, objective, params, episodes, count)

    def weigher_of(reference):
        events.append(("retrain", len(next(iter(reference.values())))))
        return uniform(reference)

    monkeypatch.setattr(run_module, "evaluate_episodes", scored)
    monkeypatch.setattr(run_module, "capture_gradients", stored)
    stream(weigher_of)
    assert events == [("score", 0), ("store", 0), ("score", 1), ("store", 1), ("retrain", 2),
                      ("score", 2), ("store", 2), ("score", 3), ("store", 3), ("retrain", 4),
                      ("score", 4), ("store", 4), ("retrain", 5)]


def test_the_rounds_are_ceil_tasks_over_k_and_share_the_iterations(project, monkeypatch):
    monkeypatch.chdir(project)
    trainer, start, rows, scores = stream(None)
    assert rounds(ARRIVALS, EVERY) == 3
    per_round = math.ceil(ITERATIONS / 3)
    assert trainer.iteration == start + 3 * per_round
    assert [row["iteration"] for row in rows][-1] == start + 3 * per_round
    assert all(len(values) == ARRIVALS for values in scores.values())
    assert {"loss_pre", "loss_post"} <= scores.keys()


def test_later_arrivals_are_scored_from_the_retrained_model(project, monkeypatch):
    """The third task's score comes from the meta-parameters after the first round."""
    seen = []

    def score(params, index):
        seen.append(params["w"].clone())
        return {"x": torch.zeros(1)}

    params = {"w": torch.zeros(1)}

    def retrain(stored):
        params["w"] = params["w"] + len(stored["g"])
    online_stream(3, 2, lambda: dict(params), score, lambda p, i: {"g": torch.ones(1, 1)}, retrain)
    assert [float(w) for w in seen] == [0.0, 0.0, 2.0]
    assert params["w"].item() == 5.0  # rounds after 2 and after 3 arrivals


def test_equal_weights_equal_the_unweighted_control_bit_for_bit(project, monkeypatch):
    monkeypatch.chdir(project)
    weighted, _, weighted_rows, weighted_scores = stream(uniform, "equal")
    control, _, control_rows, control_scores = stream(None, "control")
    for name, value in control.meta_params().items():
        assert torch.equal(weighted.meta_params()[name], value), name
    for key, values in control_scores.items():
        assert torch.equal(weighted_scores[key], values), key
    assert weighted_rows == control_rows


def test_the_stage_writes_the_online_metrics_for_both_runs(project, monkeypatch):
    monkeypatch.chdir(project)
    steps.evaluate("sinusoid", "noisy_maml")
    steps.feedback("sinusoid")
    groups = {variant: json.loads(metrics_path("sinusoid", f"noisy_maml_{variant}").read_text())
              for variant in steps.FEEDBACK_VARIANTS}
    for metrics in groups.values():
        assert metrics["online_stream"]["tasks"] == ARRIVALS
        assert {"loss_post", "loss_post_ci95", "test", "val"} <= metrics["online_stream"].keys() | metrics.keys()
    # both runs score the first two arrivals from the same model; later ones after their own rounds
    assert groups["feedback"]["online_stream"] != groups["continued"]["online_stream"]
