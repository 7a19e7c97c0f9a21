"""The sweep collector on a hand-made `dvc exp show --json` document."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from noisymaml.cli import main
from noisymaml.errors import DataError
from noisymaml.sweep import finished_runs, sweep_table

METHODS = ("noisy_maml", "noisy_maml_feedback", "noisy_maml_continued")


def experiment(name: str, sigma: float, seed: int, val: float, test: float, state="success",
               error=None) -> dict:
    groups = {"val": val, "test": test, "train_tasks": 0.5, "test_heldout_tasks": test + 0.1}
    metrics = {f"metrics/sinusoid/{method}.json": {"data": {
        group: {"loss_pre": value + 1, "loss_post": value} for group, value in groups.items()}}
        for method in METHODS}
    rev = {"rev": name, "name": name, "error": error, "data": {
        "params": {"params.yaml": {"data": {"seed": seed, "noise": {"sigma": sigma}}}},
        "metrics": metrics}}
    return {"name": name, "executor": {"state": state} if state else None, "revs": [rev]}


def document(*experiments) -> list:
    baseline = experiment("main", 0.1, 0, 9.0, 9.0)["revs"][0]
    return [{**baseline, "experiments": list(experiments)}]


@pytest.fixture
def doc() -> list:
    return document(
        experiment("a", 0.0, 0, val=1.0, test=2.0),
        experiment("b", 0.0, 1, val=3.0, test=2.0, state=None),  # finished, executor cleaned up
        experiment("c", 0.5, 0, val=1.5, test=1.0),
        experiment("d", 0.5, 1, val=1.5, test=1.0),
        experiment("queued", 0.2, 0, val=0.1, test=0.1, state="queued"),
        experiment("failed", 0.2, 1, val=0.1, test=0.1, error={"msg": "diverged"}),
    )


def test_only_finished_experiments_count(doc):
    runs = finished_runs(doc)
    assert sorted(run.name for run in runs) == ["a", "b", "c", "d"]
    assert {(run.sigma, run.seed) for run in runs} == {(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)}


def test_rows_are_means_and_ci_over_seeds(doc):
    table = sweep_table(finished_runs(doc), "sinusoid")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| 0")}
    assert set(rows) == {"0", "0.5"}
    # sigma 0: validation 1.0 and 3.0 -> mean 2, CI 1.96 * sqrt(2) / sqrt(2) = 1.96
    assert "| 2.000 ± 1.960 |" in rows["0"]
    assert "| 1.500 ± 0.000 |" in rows["0.5"]
    assert "0, 1" in rows["0"]


def test_sigma_is_chosen_on_validation_alone(doc):
    assert "sigma = 0.5." in sweep_table(finished_runs(doc), "sinusoid")
    better_test_at_zero = copy.deepcopy(doc)
    for entry in better_test_at_zero[0]["experiments"][:2]:
        for metrics in entry["revs"][0]["data"]["metrics"].values():
            metrics["data"]["test"]["loss_post"] = 0.0
    assert "sigma = 0.5." in sweep_table(finished_runs(better_test_at_zero), "sinusoid")


def test_accuracy_is_maximised_and_shown_in_percent(doc):
    for entry in doc[0]["experiments"]:
        for path in list(entry["revs"][0]["data"]["metrics"]):
            content = entry["revs"][0]["data"]["metrics"].pop(path)["data"]
            renamed = {g: {k.replace("loss", "acc"): v / 10 for k, v in d.items()}
                       for g, d in content.items()}
            entry["revs"][0]["data"]["metrics"][path.replace("sinusoid", "omniglot")] = {
                "data": renamed}
    table = sweep_table(finished_runs(doc), "omniglot")
    assert "sigma = 0." in table  # validation accuracy 20% beats 15%
    assert "20.00 ± 19.60 %" in table


def test_missing_metrics_and_empty_documents_are_clear_errors(doc):
    del doc[0]["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/sinusoid/noisy_maml.json"]
    with pytest.raises(DataError, match="experiment a: no `val.loss_post`"):
        sweep_table(finished_runs(doc), "sinusoid")
    with pytest.raises(DataError, match="no finished experiments"):
        sweep_table(finished_runs(document()), "sinusoid")


def test_command_reads_standard_input(doc):
    result = CliRunner().invoke(main, ["sweep-table", "--dataset", "sinusoid"], input=json.dumps(doc))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| sigma | seeds |")
    bad = CliRunner().invoke(main, ["sweep-table", "--dataset", "sinusoid"], input="not json")
    assert bad.exit_code == 2 and "not the JSON of `dvc exp show --json`" in bad.output
