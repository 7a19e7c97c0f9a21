"""The sweep: its queue commands, and the collector on a hand-made `dvc exp show --json` document."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from noisymaml.cli import main
from noisymaml.errors import DataError
from noisymaml.reporting import experiments
from noisymaml.reporting.experiments import Shard, git_file, queue_commands, run_queue, with_method_files
from noisymaml.reporting.sweep import choose, collect, sweep_files, sweep_rows, sweep_table, write_sweep_report

METHODS = ("noisy_maml", "noisy_maml_feedback", "noisy_maml_continued")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def experiment(name: str, sigma: float, seed: int, val: float, test: float, where="both",
               state="success", error=None) -> dict:
    groups = {"val": val, "test": test, "train_tasks": 0.5, "test_feedback_tasks": test - 0.1}
    metrics = {f"metrics/sinusoid/{method}.json": {"data": {
        group: {"loss_pre": value + 1, "loss_post": value, "loss_post_ci95": 0.05}
        for group, value in groups.items()}}
        for method in METHODS}
    rev = {"rev": name, "name": name, "error": error, "data": {
        "params": {"params.yaml": {"data": {"seed": seed, "noise": {"sigma": sigma, "where": where}}}},
        "metrics": metrics}}
    return {"name": name, "executor": {"state": state} if state else None, "revs": [rev]}


def document(*experiments) -> list:
    baseline = experiment("main", 0.1, 0, 9.0, 9.0)["revs"][0]
    return [{**baseline, "experiments": list(experiments)}]


@pytest.fixture
def doc() -> list:
    return document(
        experiment("a", 0.0, 0, val=1.0, test=2.0),
        experiment("b", 0.0, 1, val=3.0, test=2.0, where="inner", state=None),  # executor cleaned up
        experiment("c", 0.5, 0, val=1.5, test=1.0),
        experiment("d", 0.5, 1, val=1.5, test=1.0),
        experiment("e", 0.5, 0, val=2.5, test=0.5, where="inner"),
        experiment("queued", 0.2, 0, val=0.1, test=0.1, state="queued"),
        experiment("failed", 0.2, 1, val=0.1, test=0.1, state="failed", error={"msg": "diverged"}),
    )


def test_sigma_zero_is_queued_once_per_seed_and_the_rest_per_placement():
    commands = queue_commands("omniglot", (0.0, 0.01, 0.1), (0, 1), ("inner", "both"))
    assert commands[:3] == [
        ["dvc", "exp", "run", "--queue", "-S", "noise.sigma=0", "-S", "seed=0", "summary@omniglot"],
        ["dvc", "exp", "run", "--queue", "-S", "noise.sigma=0.01", "-S", "noise.where=inner", "-S", "seed=0",
         "summary@omniglot"],
        ["dvc", "exp", "run", "--queue", "-S", "noise.sigma=0.01", "-S", "noise.where=both", "-S", "seed=0",
         "summary@omniglot"]]
    assert len(commands) == 2 * (1 + 2 * 2)
    quick = queue_commands("sinusoid", (0.0,), (3,), ("both",), feedback=False)
    assert quick == [["dvc", "exp", "run", "--queue", "-S", "noise.sigma=0", "-S", "seed=3",
                      "evaluate_noisy@sinusoid-maml"]]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 48, 60])
def test_shards_partition_the_grid_whatever_their_number(count):
    grid = queue_commands("omniglot")
    assert len(grid) == 48 and len({tuple(c) for c in grid}) == 48
    shares = [queue_commands("omniglot", shard=Shard(i, count)) for i in range(1, count + 1)]
    assert sorted(c for share in shares for c in share) == sorted(grid)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("value", ["0/2", "3/2", "2", "1/2/3", "a/b", "-1/2"])
def test_a_bad_shard_is_named(value):
    result = CliRunner().invoke(main, ["sweep", "run", "--dataset", "sinusoid", "--shard", value])
    assert result.exit_code == 2 and "--shard" in result.output and "i/n" in result.output


def test_a_share_without_grid_points_queues_nothing(monkeypatch):
    monkeypatch.setattr("noisymaml.reporting.experiments.run_queue", lambda *args, **kwargs: pytest.fail("queued"))
    result = CliRunner().invoke(main, ["sweep", "run", "--dataset", "sinusoid", "--sigmas", "0",
                                       "--seeds", "0", "--shard", "2/2"])
    assert result.exit_code == 0 and "no grid point falls to this share" in result.output


def test_the_queue_runs_with_as_many_workers_as_jobs_and_is_watched_while_it_runs(tmp_path, monkeypatch):
    """`dvc queue start` leaves workers behind that hold its output open: run_queue must not
    wait for them (it would see the queue only once it is empty, and save nothing meanwhile)."""
    fake = tmp_path / "dvc"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"$*\" >> {tmp_path}/calls\n"
                    'if [ "$1 $2" = "queue start" ]; then (sleep 60; echo late) & exit 0; fi\n'
                    'if [ "$1 $2" = "queue status" ]; then cat ' f"{tmp_path}/status; fi\n")
    fake.chmod(0o755)
    (tmp_path / "status").write_text("Task  Name  Created  Status\nabc  cell-a  09:30 PM  Running\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    polls = []

    def on_poll():
        polls.append(time.monotonic())
        (tmp_path / "status").write_text("Task  Name  Created  Status\nabc  cell-a  09:30 PM  Success\n")

    start = time.monotonic()
    run_queue([["dvc", "exp", "run", "--queue", "x"]], jobs=4, poll_seconds=0.01, on_poll=on_poll)
    assert time.monotonic() - start < 30 and len(polls) == 2
    assert (tmp_path / "calls").read_text().splitlines()[:2] == ["exp run --queue x", "queue start --jobs 4"]


def test_finished_and_failed_experiments_are_told_apart(doc):
    runs, failed = collect(doc, "sinusoid")
    assert sorted(run.name for run in runs) == ["a", "b", "c", "d", "e"]
    assert [(f.name, f.error) for f in failed] == [("failed", "{'msg': 'diverged'}")]
    assert "noise.sigma=0.2" in failed[0].params and "seed=1" in failed[0].params


def test_experiments_of_another_datasets_sweep_are_left_out():
    """A sinusoid sweep leaves the omniglot metrics as the baseline's: they are not omniglot runs."""
    omniglot = {"metrics/omniglot/noisy_maml.json": {"data": {"test": {"acc_post": 0.4}}}}
    base = experiment("main", 0.1, 0, 9.0, 9.0)
    base["revs"][0]["data"]["metrics"] |= omniglot
    sinusoid_only = experiment("sin", 0.5, 2, 1.0, 1.0)
    sinusoid_only["revs"][0]["data"]["metrics"] |= omniglot
    own = experiment("omni", 0.5, 1, 1.0, 1.0)
    own["revs"][0]["data"]["metrics"] |= {
        "metrics/omniglot/noisy_maml.json": {"data": {"test": {"acc_post": 0.3}}}}
    unchanged = experiment("same", 0.1, 0, 1.0, 1.0)  # the baseline's own settings re-run
    unchanged["revs"][0]["data"]["metrics"] |= omniglot
    doc = [{**base["revs"][0], "experiments": [sinusoid_only, own, unchanged]}]
    assert sorted(run.name for run in collect(doc, "omniglot")[0]) == ["omni", "same"]
    assert sorted(run.name for run in collect(doc, "sinusoid")[0]) == ["omni", "same", "sin"]


def test_experiments_that_change_more_than_noise_and_seed_are_other_studies():
    baseline = experiment("main", 0.1, 0, 9.0, 9.0)
    baseline["revs"][0]["data"]["params"]["params.yaml"]["data"]["sinusoid"] = {"tasks": {"bins": 20}}
    grid, other = experiment("grid", 0.5, 1, 1.0, 1.0), experiment("other", 0.5, 1, 1.0, 1.0)
    grid["revs"][0]["data"]["params"]["params.yaml"]["data"]["sinusoid"] = {"tasks": {"bins": 20}}
    other["revs"][0]["data"]["params"]["params.yaml"]["data"]["sinusoid"] = {"tasks": {"bins": 10}}
    doc = [{**baseline["revs"][0], "experiments": [grid, other]}]
    assert [run.name for run in collect(doc, "sinusoid")[0]] == ["grid"]


def test_a_grid_point_run_again_with_feedback_counts_once():
    without = experiment("without", 0.5, 1, 1.0, 1.0)
    del without["revs"][0]["data"]["metrics"]["metrics/sinusoid/noisy_maml_feedback.json"]
    again = experiment("again", 0.5, 1, 1.0, 1.0)
    runs, _ = collect(document(without, again, experiment("other seed", 0.5, 2, 1.0, 1.0)), "sinusoid")
    assert sorted(run.name for run in runs) == ["again", "other seed"]


def test_feedback_not_run_shows_na_not_the_baselines_numbers():
    base = experiment("main", 0.1, 0, 9.0, 9.0)
    quick = experiment("quick", 0.5, 1, 1.0, 1.0)
    for path in ("metrics/sinusoid/noisy_maml_feedback.json", "metrics/sinusoid/noisy_maml_continued.json"):
        quick["revs"][0]["data"]["metrics"][path] = base["revs"][0]["data"]["metrics"][path]
    doc = [{**base["revs"][0], "experiments": [quick]}]
    [row] = sweep_rows(collect(doc, "sinusoid")[0], "sinusoid")
    assert row.cells["+ feedback, test, post"] is None
    assert row.cells["test, post"] == pytest.approx((1.0, 0.05))


def test_rows_are_means_and_ci_over_seeds_and_sigma_zero_is_one_setting(doc):
    rows = {(row.where, row.sigma): row for row in sweep_rows(collect(doc, "sinusoid")[0], "sinusoid")}
    assert set(rows) == {("off", 0.0), ("both", 0.5), ("inner", 0.5)}
    # sigma 0, whatever noise.where says: validation 1.0 and 3.0 -> mean 2, CI t(0.975, 1) * sqrt(2) / sqrt(2)
    mean, half = rows[("off", 0.0)].cells["validation, post"]
    assert mean == pytest.approx(2.0) and half == pytest.approx(12.7062047362)
    assert rows[("off", 0.0)].seeds == [0, 1]
    assert rows[("both", 0.5)].cells["validation, post"] == pytest.approx((1.5, 0.0))
    assert rows[("inner", 0.5)].seeds == [0]
    # a single seed: the run's own CI over its episodes (here 0.05), not a zero-width "CI over seeds"
    assert rows[("inner", 0.5)].cells["validation, post"] == pytest.approx((2.5, 0.05))
    assert rows[("both", 0.5)].cells["+ feedback, feedback tasks, post"] == pytest.approx((0.9, 0.0))
    assert rows[("both", 0.5)].cells["continued without feedback, test, post"] == \
        pytest.approx((1.0, 0.0))


def test_sigma_is_chosen_on_validation_alone(doc):
    chosen = choose(sweep_rows(collect(doc, "sinusoid")[0], "sinusoid"), "sinusoid")
    assert (chosen.where, chosen.sigma) == ("both", 0.5)
    better_test_elsewhere = copy.deepcopy(doc)
    for entry in better_test_elsewhere[0]["experiments"]:
        if entry["name"] in ("a", "b", "e"):
            for metrics in entry["revs"][0]["data"]["metrics"].values():
                metrics["data"]["test"]["loss_post"] = 0.0
    rows = sweep_rows(collect(better_test_elsewhere, "sinusoid")[0], "sinusoid")
    assert (choose(rows, "sinusoid").where, choose(rows, "sinusoid").sigma) == ("both", 0.5)
    assert "noise.where = both, sigma = 0.5; its test score: 1.000 ± 0.000." in sweep_table(rows, "sinusoid")


def test_accuracy_is_maximised_and_shown_in_percent(doc):
    for entry in doc[0]["experiments"]:
        for path in list(entry["revs"][0]["data"]["metrics"]):
            content = entry["revs"][0]["data"]["metrics"].pop(path)["data"]
            renamed = {g: {k.replace("loss", "acc"): v / 10 for k, v in d.items()}
                       for g, d in content.items()}
            entry["revs"][0]["data"]["metrics"][path.replace("sinusoid", "omniglot")] = {
                "data": renamed}
    table = sweep_table(sweep_rows(collect(doc, "omniglot")[0], "omniglot"), "omniglot")
    assert "sigma = 0.5;" in table  # validation accuracy 25% (inner) beats 20% and 15%
    assert "noise.where = inner" in table
    assert "20.00 ± 127.06 %" in table  # 2 seeds: t(0.975, 1) = 12.71


def test_missing_feedback_is_na_but_missing_noisy_maml_is_an_error(doc):
    metrics = doc[0]["experiments"][2]["revs"][0]["data"]["metrics"]
    del metrics["metrics/sinusoid/noisy_maml_feedback.json"]
    row = next(r for r in sweep_rows(collect(doc, "sinusoid")[0], "sinusoid") if r.where == "both")
    assert row.cells["+ feedback, test, post"] is None
    assert "| n/a |" in sweep_table([row], "sinusoid")
    del metrics["metrics/sinusoid/noisy_maml.json"]
    with pytest.raises(DataError, match="experiment c: no metrics/sinusoid/noisy_maml.json"):
        sweep_rows(collect(doc, "sinusoid")[0], "sinusoid")
    with pytest.raises(DataError, match="no finished experiments"):
        sweep_rows(collect(document(), "sinusoid")[0], "sinusoid")


def test_report_file_with_plot_and_failed_runs(doc, tmp_path):
    path = write_sweep_report(doc, "sinusoid", tmp_path)
    text = path.read_text()
    assert path.name == "sweep_sinusoid.md"
    assert "![sinusoid sweep](sweep_sinusoid.png)" in text
    assert (tmp_path / "sweep_sinusoid.png").read_bytes()[:8] == PNG_MAGIC
    assert "- failed (noise.sigma=0.2 noise.where=both seed=1): {'msg': 'diverged'}" in text
    assert "5 finished experiments" in text


def test_report_command_reads_a_saved_document(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sweep", "report", "--dataset", "sinusoid", "--input", "-"],
                                input=json.dumps(doc))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "sweep_sinusoid.md").exists()
    bad = CliRunner().invoke(main, ["sweep", "report", "--dataset", "sinusoid", "--input", "-"],
                             input="not json")
    assert bad.exit_code == 2 and "not the JSON of `dvc exp show --json`" in bad.output


def test_bad_grid_values_are_named():
    result = CliRunner().invoke(main, ["sweep", "run", "--dataset", "sinusoid", "--sigmas", "0,x"])
    assert result.exit_code == 2 and "0,x" in result.output


@pytest.mark.parametrize("shape", [
    {}, [1], [{"experiments": [{"revs": []}]}], [{"experiments": 7}],
    [{"experiments": [{"revs": [{"name": "x", "data": {"params": "oops"}}]}]}],
    "wrong params",
])
def test_a_document_of_the_wrong_shape_is_one_line_naming_the_file(doc, tmp_path, monkeypatch, shape):
    if shape == "wrong params":  # a grid point whose seed is not a number
        shape = copy.deepcopy(doc)
        shape[0]["experiments"][2]["revs"][0]["data"]["params"]["params.yaml"]["data"]["seed"] = [0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(shape))
    result = CliRunner().invoke(main, ["sweep", "report", "--dataset", "sinusoid", "--input", "exp.json"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert result.stderr.startswith("error: exp.json: not the JSON of `dvc exp show --json`")
    assert len(result.stderr.splitlines()) == 1


def test_bad_placement_is_refused_before_anything_is_queued(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("queued")
    monkeypatch.setattr(experiments, "run_queue", never)
    result = CliRunner().invoke(main, ["sweep", "run", "--dataset", "sinusoid", "--where", "inner,sideways"])
    assert result.exit_code == 2
    assert "'sideways' is not one of 'inner', 'outer', 'both'" in result.output


# --- per-method files read from each experiment's commit (they are not DVC metrics) -----------

def without_method_files(doc: list) -> tuple[list, dict[tuple[str, str], str]]:
    """The document as `dvc exp show` gives it now (summary metrics only), and the per-method
    files as each commit holds them: {(rev, path): text}."""
    commits = {}
    for baseline in doc:
        for rev in [baseline, *(exp["revs"][0] for exp in baseline.get("experiments") or [])]:
            metrics = rev["data"]["metrics"]
            for path in list(metrics):
                commits[(rev["rev"], path)] = json.dumps(metrics.pop(path)["data"])
            metrics["metrics/sinusoid.json"] = {"data": {"maml": {"test": 1.0}}}
    return doc, commits


def test_method_files_come_from_each_experiments_commit(doc):
    expected = sweep_table(sweep_rows(collect(copy.deepcopy(doc), "sinusoid")[0], "sinusoid"), "sinusoid")
    bare, commits = without_method_files(doc)
    with pytest.raises(DataError, match="no metrics/sinusoid/noisy_maml.json"):
        collect(copy.deepcopy(bare), "sinusoid")
    read = []

    def reader(rev: str, path: str) -> str | None:
        read.append(rev)
        return commits.get((rev, path))
    filled = with_method_files(bare, sweep_files("sinusoid"), reader)
    assert sweep_table(sweep_rows(collect(filled, "sinusoid")[0], "sinusoid"), "sinusoid") == expected
    assert "queued" not in read and "failed" not in read  # no commit of their own to read


def test_files_the_document_holds_are_kept():
    doc = document(experiment("a", 0.5, 0, val=1.0, test=2.0))
    before = copy.deepcopy(doc)
    assert with_method_files(doc, sweep_files("sinusoid"), lambda rev, path: "{broken") == before


def test_a_broken_file_in_a_commit_names_the_experiment_and_file():
    doc, commits = without_method_files(document(experiment("a", 0.5, 0, val=1.0, test=2.0)))
    with pytest.raises(DataError, match="experiment a: metrics/sinusoid/noisy_maml.json is not valid JSON"):
        with_method_files(doc, sweep_files("sinusoid"),
                          lambda rev, path: "{broken" if rev == "a" else commits[(rev, path)])


def test_git_file_reads_a_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], check=True)
    Path("m.json").write_text('{"test": 1}')
    subprocess.run([*git, "add", "m.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    Path("m.json").write_text('{"test": 2}')
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_file(head, "m.json") == '{"test": 1}'
    assert git_file(head, "absent.json") is None
    assert git_file("0" * 40, "m.json") is None
