"""Results as data: `noisymaml sweep save` keeps the finished experiments in a file, and the
report rebuilt from that file alone equals the report built from the experiments."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from noisymaml.cli import main
from noisymaml.errors import DataError
from noisymaml.reporting import experiments
from noisymaml.reporting.results import as_document, load_results, save_results
from test_sweep import document, experiment

SAVED = Path("reports/results/sinusoid.json")


@pytest.fixture
def doc() -> list:
    return document(
        experiment("a", 0.0, 0, val=1.0, test=2.0),
        experiment("c", 0.5, 0, val=1.5, test=1.0),
        experiment("d", 0.5, 1, val=1.5, test=1.25),
        experiment("e", 0.5, 0, val=2.5, test=0.5, where="inner"),
        experiment("queued", 0.2, 0, val=0.1, test=0.1, state="queued"),
        experiment("failed", 0.2, 1, val=0.1, test=0.1, state="failed", error={"msg": "diverged"}),
    )


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["sweep", *args, "--dataset", "sinusoid"], input=input)


def reports(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((root / "reports").glob("sweep_*"))}


def test_the_report_from_the_saved_file_equals_the_report_from_the_document(doc, tmp_path, monkeypatch):
    direct, saved = tmp_path / "direct", tmp_path / "saved"
    for root in (direct, saved):
        root.mkdir()
    monkeypatch.chdir(direct)
    assert invoke("report", "--input", "-", input=json.dumps(doc)).exit_code == 0
    monkeypatch.chdir(saved)
    assert invoke("save", "--input", "-", input=json.dumps(doc)).exit_code == 0

    def no_experiments():
        raise AssertionError("the report ran `dvc exp show` although the results file exists")
    monkeypatch.setattr(experiments, "exp_show", no_experiments)
    result = invoke("report")  # a fresh clone: the committed file, no experiment refs
    assert result.exit_code == 0, result.output
    assert "from the results in reports/results/sinusoid.json" in result.output
    assert reports(saved) == reports(direct)
    text = (saved / "reports" / "sweep_sinusoid.md").read_text()
    assert "4 finished experiments" in text and "- failed (noise.sigma=0.2" in text
    assert "`noisymaml sweep report --dataset sinusoid`" in text


def test_the_saved_file_holds_commit_params_and_metrics(doc, tmp_path):
    save_results(tmp_path / "r.json", doc, "sinusoid")
    results = load_results(tmp_path / "r.json", "sinusoid")
    assert [e["commit"] for e in results["experiments"]] == ["a", "c", "d", "e"]
    assert [f["name"] for f in results["failed"]] == ["failed"]
    first = results["experiments"][0]
    assert first["baseline"] == "main" and first["params"] == {"seed": 0, "noise": {"sigma": 0.0, "where": "both"}}
    assert first["metrics"]["metrics/sinusoid/noisy_maml.json"]["test"]["loss_post"] == 2.0


def test_a_save_keeps_the_sweeps_experiments_only(doc, tmp_path, monkeypatch):
    """A study's cells on the same baseline (other params than noise and seed), finished or
    failed, are not the sweep's: the results file leaves them out."""
    for name, state in (("study-cell", "success"), ("study-failed", "failed")):
        cell = experiment(name, 0.1, 0, val=1.0, test=1.0, state=state)
        cell["revs"][0]["data"]["params"]["params.yaml"]["data"]["omniglot"] = {"train": {"iterations": 400}}
        doc[0]["experiments"].append(cell)
    monkeypatch.chdir(tmp_path)
    assert invoke("save", "--input", "-", input=json.dumps(doc)).exit_code == 0
    results = load_results(SAVED, "sinusoid")
    assert [e["name"] for e in results["experiments"]] == ["a", "c", "d", "e"]
    assert [f["name"] for f in results["failed"]] == ["failed"]


def test_a_second_save_adds_without_duplicating(doc, tmp_path):
    path = tmp_path / "r.json"
    first = document(*copy.deepcopy(doc[0]["experiments"][:2]))
    assert save_results(path, first, "sinusoid") == (2, 2)
    assert save_results(path, doc, "sinusoid") == (2, 4)
    once = path.read_bytes()
    assert save_results(path, doc, "sinusoid") == (0, 4)
    assert path.read_bytes() == once
    assert len(load_results(path, "sinusoid")["failed"]) == 1
    slices = as_document(load_results(path, "sinusoid"))
    assert [e["name"] for e in slices[0]["experiments"]] == ["a", "c", "d", "e", "failed"]


def test_slices_of_several_baseline_commits_accumulate(doc, tmp_path):
    path = tmp_path / "r.json"
    later = copy.deepcopy(document(experiment("f", 1.0, 0, val=3.0, test=3.0)))
    later[0]["rev"] = "next"
    save_results(path, doc, "sinusoid")
    save_results(path, later, "sinusoid")
    rebuilt = as_document(load_results(path, "sinusoid"))
    assert [(b["rev"], [e["name"] for e in b["experiments"]]) for b in rebuilt] == [
        ("main", ["a", "c", "d", "e", "failed"]), ("next", ["f"])]


@pytest.mark.parametrize("content, problem", [
    ("{broken", "not a valid results file (Expecting property name"),
    ("[]", 'not a valid results file (expected an object with "format"'),
    (json.dumps({"format": "noisymaml-results/1", "dataset": "omniglot", "baselines": {},
                 "experiments": [], "failed": []}), "it holds dataset 'omniglot', not 'sinusoid'"),
    (json.dumps({"format": "noisymaml-results/1", "dataset": "sinusoid", "baselines": {},
                 "experiments": [{"commit": "a", "name": "a", "params": {}, "metrics": {}, "baseline": "x"}],
                 "failed": []}), "experiment a names no saved baseline"),
    (json.dumps({"format": "noisymaml-results/1", "dataset": "sinusoid", "baselines": {"x": 3},
                 "experiments": [], "failed": []}), "record 'x' needs a commit, a name, params and metrics"),
])
def test_a_broken_results_file_is_one_line_naming_it(tmp_path, monkeypatch, content, problem):
    monkeypatch.chdir(tmp_path)
    SAVED.parent.mkdir(parents=True)
    SAVED.write_text(content)
    for command in (["report"], ["save", "--input", "-"]):
        result = invoke(*command, input="[]")
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert result.stderr.startswith(f"error: {SAVED}: ") and problem in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert SAVED.read_text() == content  # never overwritten


def test_a_results_file_with_bad_content_names_the_file(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("save", "--input", "-", input=json.dumps(doc)).exit_code == 0
    saved = json.loads(SAVED.read_text())
    saved["experiments"][1]["params"]["seed"] = [0]
    SAVED.write_text(json.dumps(saved))
    result = invoke("report")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {SAVED}: not the JSON of `dvc exp show --json`")


def test_a_missing_results_file_given_explicitly_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("report", "--results", "absent.json")
    assert result.exit_code == 2 and "absent.json: no such results file" in result.stderr
    with pytest.raises(DataError, match="no such results file"):
        load_results(tmp_path / "absent.json", "sinusoid")


def test_the_sweep_run_saves_its_results_before_reporting(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiments, "run_queue", lambda commands, jobs, poll, log: None)
    monkeypatch.setattr(experiments, "exp_show", lambda: copy.deepcopy(doc))
    result = invoke("run", "--sigmas", "0", "--seeds", "0")
    assert result.exit_code == 0, result.output
    assert [e["commit"] for e in load_results(SAVED, "sinusoid")["experiments"]] == ["a", "c", "d", "e"]
    assert (tmp_path / "reports" / "sweep_sinusoid.md").exists()


def test_a_sweep_run_again_queues_only_what_the_results_file_lacks(doc, tmp_path, monkeypatch):
    """Stopped and run again (another session, another clone with the committed file), the sweep
    resumes: the grid points already saved are not queued a second time."""
    monkeypatch.chdir(tmp_path)
    assert invoke("save", "--input", "-", input=json.dumps(doc)).exit_code == 0
    queued = []
    monkeypatch.setattr(experiments, "run_queue", lambda commands, jobs, poll, log: queued.extend(commands))
    monkeypatch.setattr(experiments, "exp_show", lambda: copy.deepcopy(doc))
    result = invoke("run", "--sigmas", "0,0.5", "--seeds", "0,1", "--where", "inner,both")
    assert result.exit_code == 0, result.output
    assert [c[c.index("--queue") + 1:-1] for c in queued] == [
        ["-S", "noise.sigma=0", "-S", "seed=1"],
        ["-S", "noise.sigma=0.5", "-S", "noise.where=inner", "-S", "seed=1"]]
    assert "4 grid point(s) already in reports/results/sinusoid.json" in result.output
