"""Studies: cells named by their settings, the validation choice, results as data (saved from
`dvc exp show`, resumed, rebuilt into the report on a clone with nothing but the file)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from ruamel.yaml import YAML

from noisymaml.cli import main
from noisymaml.core.metrics import mean_ci95
from noisymaml.errors import ParamError
from noisymaml.pipeline.params import read_params
from noisymaml.pipeline.run import Run
from noisymaml.reporting import study as studies
from noisymaml.reporting.study_report import _band, write_study_report

ROOT = Path(__file__).resolve().parents[1]
TINY = """
dataset: omniglot
seeds: [0, 1]
budgets: {short: {omniglot.train.iterations: 2}, long: {omniglot.train.iterations: 4}}
generators: {yin: {omniglot.tasks.rotations: "off"}, rajendran: {omniglot.tasks.rotations: augment}}
selection: {arm: noisy, method: noisy_maml, grid: {noise.sigma: [0.01, 0.1]}, reference: maml}
arms:
  maml: {method: maml}
  noisy: {method: noisy_maml}
feedback: {arm: noisy, generator: yin, runs: {online_2: {feedback.tasks: 2, feedback.mode: online}}}
"""


def tiny(tmp_path: Path, text: str = TINY) -> studies.Study:
    path = tmp_path / "studies" / "tiny.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return studies.load_study(path)


def metrics(val: float, test: float, train_pre: float) -> dict:
    def group(acc: float) -> dict:
        return {"acc_post": acc, "acc_post_ci95": 0.01, "acc_pre": train_pre, "acc_pre_ci95": 0.01, "tasks": 10}
    return {"val": group(val), "test": group(test), "train_tasks": group(train_pre),
            "test_feedback_tasks": group(test), "online_stream": group(test + 0.01)}


CURVE = "iteration,train_loss_pre,train_acc_pre,train_loss_post,train_acc_post,val_loss_post,val_acc_post\n" \
        "2,3.0,{pre},2.5,0.2,2.6,{half}\n4,2.9,{pre},2.4,0.3,2.5,{val}\n"


def finished(cells: list[studies.Cell], scores: dict[str, tuple[float, float]]) -> tuple[list, dict]:
    """Experiment refs of these cells (val, test scores) and the files of their commits."""
    files, refs = {}, []
    for cell in cells:
        commit = f"commit-{cell.name}"
        val, test = scores.get(cell.name, (0.0, 0.0))
        files[(commit, "params.yaml")] = f"seed: {cell.seed}\nomniglot: {{tasks: {{ways: 20}}}}\n"
        for path in cell.files("omniglot"):
            files[(commit, path)] = (json.dumps(metrics(val, test, 0.5)) if path.endswith(".json")
                                     else CURVE.format(pre=0.5, half=val / 2, val=val))
        refs.append(studies.ExperimentRef(cell.name, commit, "base"))
    return refs, files


def save(study, path, refs_files, failed=(), saving=studies.save):
    refs, files = refs_files
    return saving(study, path, refs, list(failed), read=lambda rev, p: files.get((rev, p)))


def test_every_cell_of_the_committed_study_is_a_valid_params_file(tmp_path):
    """Each cell's settings, as `-S` passes them and applied to params.yaml, pass the pipeline's
    own validation: no misspelt key or value waits to fail hours into a queue. The chosen arm
    and the feedback runs too (unlocked by a finished selection)."""
    study = studies.load_study(ROOT / "studies" / "nme_omniglot.yaml")
    selection = [c for g in study.generators for c in studies.selection_cells(study, g)]
    save(study, tmp_path / "r.json", finished(selection, {c.name: (0.3, 0.3) for c in selection}))
    cells = studies.study_cells(study, studies.load_results(tmp_path / "r.json", study))
    assert {c.part for c in cells} == {"arms", "selection", "feedback"}
    assert len(cells) == studies.planned_count(study) == len({c.name for c in cells})
    for cell in cells:
        data = read_params(ROOT / "params.yaml")
        for key, value in cell.settings.items():
            *sections, last = key.split(".")
            node = data
            for section in sections:
                node = node[section]
            assert last in node, f"{cell.name}: {key} is not a params.yaml key"
            node[last] = YAML(typ="safe", pure=True).load(studies.shown(value))
            assert node[last] == value
        path = tmp_path / "params.yaml"
        YAML().dump(data, path)
        Run.from_params("omniglot", cell.method, path)


@pytest.mark.parametrize("value, word", [(None, "null"), (True, "true"), (5e-07, "5e-07"), (0.1, "0.1"),
                                         (["maml", "meta_aug"], "[maml,meta_aug]"), ("off", "off")])
def test_values_are_written_as_dvc_reads_them_back(value, word):
    assert studies.shown(value) == word


def test_feedback_cells_read_the_files_of_their_arms_method(tmp_path):
    study = tiny(tmp_path, TINY.replace("{arm: noisy, generator: yin, runs", "{arm: maml, generator: yin, runs"))
    cells = studies.feedback_cells(study, studies.empty_results(study))
    assert cells and all(c.files("omniglot") == ["metrics/omniglot/maml.json", "metrics/omniglot/maml_feedback.json",
                                                   "metrics/omniglot/maml_continued.json"] for c in cells)
    assert all(c.settings["feedback.method"] == "maml" and c.target == "feedback@omniglot" for c in cells)


def test_a_report_of_one_seed_shows_that_runs_own_interval(tmp_path, monkeypatch):
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    maml = [c for c in studies.study_cells(study, studies.empty_results(study)) if c.arm == "maml" and c.seed == 0]
    save(study, path, finished(maml, {c.name: (0.3, 0.25) for c in maml}))
    text = write_study_report(study, studies.load_results(path, study), tmp_path / "reports").read_text()
    assert "| maml | 25.00 ± 1.00 % (1 seed) |" in text and "not run yet" in text


def test_a_score_over_one_task_is_shown_without_an_interval(tmp_path):
    """One seed scored on a single feedback task has no interval: not "± 0.00"."""
    study = tiny(tmp_path, TINY.replace("online_2: {feedback.tasks: 2, feedback.mode: online}",
                                        "batch_1: {feedback.tasks: 1}"))
    path = tmp_path / "results.json"
    first = studies.study_cells(study, studies.empty_results(study))
    save(study, path, finished(first, {}))
    fed = [c for c in studies.study_cells(study, studies.load_results(path, study)) if c.part == "feedback"]
    save(study, path, finished(fed[:1], {fed[0].name: (0.4, 0.25)}))
    results = studies.load_results(path, study)
    for metrics in results["cells"][fed[0].name]["files"].values():
        metrics["test_feedback_tasks"].update(tasks=1, acc_post_ci95=0.0)
    text = write_study_report(study, results, tmp_path / "reports").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| batch_1 |"))
    assert "| 25.00 ± 1.00 % (1 seed) |" in row and "| 25.00 % (1 seed, 1 task) |" in row and "± 0.00" not in row


def test_feedback_is_compared_with_continued_training_paired_by_seed(tmp_path):
    """Per seed, + feedback minus continued on the held-out test and on the stream scored on
    arrival (online): the mean and t interval of those differences, not of either side alone."""
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    save(study, path, finished(studies.study_cells(study, studies.empty_results(study)), {}))
    fed = [c for c in studies.study_cells(study, studies.load_results(path, study)) if c.part == "feedback"]
    save(study, path, finished(fed, {}))
    results = studies.load_results(path, study)
    scores = {0: (0.40, 0.38, 0.50, 0.55), 1: (0.30, 0.27, 0.60, 0.60)}  # test, test continued, stream, continued
    for cell in fed:
        files = results["cells"][cell.name]["files"]
        test, test_continued, stream, stream_continued = scores[cell.seed]
        for variant, held_out, arrival in (("feedback", test, stream), ("continued", test_continued, stream_continued)):
            files[f"metrics/omniglot/noisy_maml_{variant}.json"]["test"]["acc_post"] = held_out
            files[f"metrics/omniglot/noisy_maml_{variant}.json"]["online_stream"]["acc_post"] = arrival
    text = write_study_report(study, results, tmp_path / "reports").read_text()
    test_mean, test_half = mean_ci95(torch.tensor([2.0, 3.0], dtype=torch.float64))
    stream_mean, stream_half = mean_ci95(torch.tensor([-5.0, 0.0], dtype=torch.float64))
    assert (f"| online_2 | {test_mean:+.2f} ± {test_half:.2f} (n=2) | {stream_mean:+.2f} ± {stream_half:.2f} (n=2) |"
            in text)


def test_a_cell_name_changes_with_its_settings_only(tmp_path):
    study = tiny(tmp_path)
    before = {c.name for c in studies.study_cells(study, studies.empty_results(study))}
    longer = TINY.replace("long: {omniglot.train.iterations: 4}", "long: {omniglot.train.iterations: 5}")
    edited = tiny(tmp_path, longer)
    after = {c.name for c in studies.study_cells(edited, studies.empty_results(edited))}
    assert {n for n in after if "-sel-" in n} == {n for n in before if "-sel-" in n}
    assert not {n for n in after if "-sel-" not in n} & before


@pytest.mark.parametrize("text, named", [
    (TINY.replace("seeds:", "sedes:"), "sedes"),
    (TINY.replace("arm: noisy, method", "arm: nosy, method"), "selection.arm"),
    (TINY.replace("generator: yin", "generator: yim"), "feedback.generator"),
    (TINY.replace("long:", "lang:"), "long"),
    (TINY.replace("dataset: omniglot", "dataset: sinusoid"), "sweep"),
    (TINY.replace("dataset: omniglot", "dataset: omniglott"), "omniglott"),
    (TINY.replace("{method: maml}", "{method: maml, set: {omniglot.tasks: {ways: 5}}}"), "mapping"),
])
def test_a_bad_study_file_is_one_line_naming_the_key(tmp_path, text, named):
    with pytest.raises(ParamError) as err:
        tiny(tmp_path, text)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_the_choice_reads_validation_only_and_unlocks_the_chosen_arm(tmp_path):
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    selection = [c for c in studies.study_cells(study, studies.empty_results(study)) if c.part == "selection"]
    # sigma 0.1 is best on validation, sigma 0.01 on test: the choice must be 0.1
    scores = {c.name: (0.4, 0.1) if "0.1" in c.arm else (0.2, 0.9) for c in selection}
    assert studies.chosen(study, studies.load_results(path, study), "yin") is None
    assert not [c for c in studies.study_cells(study, studies.empty_results(study)) if c.arm == "noisy"]
    half = [c for c in selection if c.seed == 0]
    save(study, path, finished(half, scores))
    assert studies.chosen(study, studies.load_results(path, study), "yin") is None  # seed 1 missing
    added, held = save(study, path, finished(selection, scores))
    assert (added, held) == (len(selection) - len(half), len(selection))
    results = studies.load_results(path, study)
    assert studies.chosen(study, results, "yin") == ("sel-0.1", {"noise.sigma": 0.1})
    chosen_cells = [c for c in studies.pending(study, results) if c.arm == "noisy"]
    assert len(chosen_cells) == 4 and all(c.settings["noise.sigma"] == 0.1 for c in chosen_cells)
    assert all(c.settings["omniglot.train.iterations"] == 4 for c in chosen_cells)


def test_results_round_trip_and_resume(tmp_path, monkeypatch):
    """Saved once, saved again: nothing twice; the cells a finished selection unlocks are saved
    from the same document; the report rebuilt from the file alone equals the first one."""
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    cells = studies.study_cells(study, studies.empty_results(study))
    scores = {c.name: (0.3 + 0.1 * c.seed, 0.25 + 0.1 * c.seed) for c in cells}
    first = studies.study_cells(study, {**studies.empty_results(study), "cells": {}})
    save(study, path, finished(first, scores))
    results = studies.load_results(path, study)
    unlocked = [c for c in studies.study_cells(study, results) if c.name not in results["cells"]]
    assert {c.part for c in unlocked} == {"arms", "feedback"}
    doc_files = finished([*first, *unlocked], {**scores, **{c.name: (0.5 + 0.1 * c.seed, 0.45 + 0.1 * c.seed)
                                                              for c in unlocked}})
    save(study, path, doc_files)
    assert save(study, path, doc_files) == (0, len(first) + len(unlocked))
    results = studies.load_results(path, study)
    assert studies.pending(study, results) == []
    monkeypatch.chdir(tmp_path)
    report = write_study_report(study, results, tmp_path / "reports")
    text = report.read_text()
    mean, half = mean_ci95(torch.tensor([0.45, 0.55], dtype=torch.float64))
    assert f"{100 * mean:.2f} ± {100 * half:.2f} % (n=2)" in text  # the noisy arm's test over seeds
    assert "**chosen**" in text and "online_2" in text
    assert (tmp_path / "reports" / "tiny_yin.png").stat().st_size > 0
    assert not (tmp_path / "reports" / "figures").exists()  # the report stage owns that folder
    again = write_study_report(study, json.loads(path.read_text()), tmp_path / "again")
    assert again.read_text() == text


def test_the_report_states_every_cells_command(tmp_path):
    """Selection candidates, arms and feedback runs: each cell's command is on the page, given
    as the first seed's with `-S seed=N` for the others."""
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    first = studies.study_cells(study, studies.empty_results(study))
    save(study, path, finished(first, {c.name: (0.3, 0.25) for c in first}))
    cells = studies.study_cells(study, studies.load_results(path, study))
    text = write_study_report(study, studies.load_results(path, study), tmp_path / "reports").read_text()
    assert "Seed 0; the other seeds (1) differ only in `-S seed=N`." in text
    for cell in cells:
        command = shlex.join(cell.command(queued=False)).replace(f"seed={cell.seed}", "seed=0")
        assert f"- {cell.generator} / {cell.arm}: `{command}`" in text, cell.name
    assert {c.part for c in cells} == {"selection", "arms", "feedback"}


def test_failed_cells_are_listed_until_they_finish(tmp_path):
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    cells = studies.study_cells(study, studies.empty_results(study))[:3]
    save(study, path, finished(cells[1:], {}), failed=[cells[0].name, "not-a-cell"])
    results = studies.load_results(path, study)
    assert list(results["failed"]) == [cells[0].name] and cells[0].name not in results["cells"]
    assert cells[0] in studies.pending(study, results)
    save(study, path, finished(cells, {}))
    assert studies.load_results(path, study)["failed"] == {}


def test_run_queues_each_cell_once_and_saves_as_the_queue_goes(tmp_path, monkeypatch):
    """A cell already queued is waited for, not queued again; what finishes is saved at the next
    look and the cells it unlocks (the chosen arm, then feedback) are queued then; `--only`
    keeps the rest out."""
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    cells = studies.study_cells(study, studies.empty_results(study))
    save(study, path, finished(cells[:2], {}))
    queue, queued, looks = {cells[2].name}, [], []

    def look(study, path):
        looks.append(len(queue))
        if len(looks) == 1:
            return 0, 2  # the queued cell is still running
        everything = {c.name: c for c in studies.study_cells(study, studies.load_results(path, study))}
        done = [everything[name] for name in queue]
        queue.clear()
        return save(study, path, finished(done, {c.name: (0.3 + c.seed / 10, 0.3) for c in done}))

    def queue_command(command):
        queued.append(command[command.index("-n") + 1])
        queue.add(queued[-1])
        return ""

    started = []
    monkeypatch.setattr(studies, "queue_names", lambda *states: sorted(queue) if "Queued" in states else [])
    monkeypatch.setattr(studies, "checked_output", queue_command)
    monkeypatch.setattr(studies, "start_workers", started.append)
    monkeypatch.setattr(studies, "save", look)
    monkeypatch.setattr(studies.time, "sleep", lambda seconds: None)
    studies.run(study, path, only=("yin-*",), log=lambda line: None)
    results = studies.load_results(path, study)
    yin = [n for n in results["cells"] if n.startswith("yin-")]
    assert cells[2].name in results["cells"] and cells[2].name not in queued
    assert sorted(queued) == sorted(set(queued)) and all(n.startswith("yin-") for n in queued)
    assert len(yin) == 3 * 2 + 2 * 2 + 1 * 2  # selection (reference + 2 sigmas), 2 arms, 1 feedback run
    assert not [c for c in studies.pending(study, results, ("yin-*",))]


def test_cells_left_queued_without_a_worker_get_one(tmp_path, monkeypatch):
    """A queue left by an ended session holds queued cells and no worker: `study run` starts
    one instead of waiting for ever, and queues nothing twice."""
    study = tiny(tmp_path)
    cell = studies.study_cells(study, studies.empty_results(study))[0]
    queue, started = {cell.name}, []

    def look(study, path):  # once a worker runs, the cell finishes
        if started:
            queue.clear()
        return 0, 0

    monkeypatch.setattr(studies, "queue_names", lambda *states: sorted(queue) if "Queued" in states else [])
    monkeypatch.setattr(studies, "checked_output", lambda command: pytest.fail("queued twice"))
    monkeypatch.setattr(studies, "start_workers", started.append)
    monkeypatch.setattr(studies, "save", look)
    monkeypatch.setattr(studies.time, "sleep", lambda seconds: None)
    studies.run(study, tmp_path / "results.json", only=(cell.name,), log=lambda line: None)
    assert started == [1]


def test_the_cli_reports_from_the_committed_file_alone(tmp_path, monkeypatch):
    study = tiny(tmp_path)
    monkeypatch.chdir(tmp_path)
    cells = studies.study_cells(study, studies.empty_results(study))[:4]
    save(study, studies.results_file(study), finished(cells, {c.name: (0.3, 0.2) for c in cells}))
    result = CliRunner().invoke(main, ["study", "report", "studies/tiny.yaml"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "reports" / "tiny.md").read_text()
    assert f"{len(set(c.name for c in cells))} of {studies.planned_count(study)} cells finished" in text
    broken = CliRunner().invoke(main, ["study", "report", "studies/missing.yaml"])
    assert broken.exit_code == 2 and "studies/missing.yaml" in broken.output


def test_the_dry_run_lists_commands_and_queues_nothing(tmp_path, monkeypatch):
    tiny(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(studies, "checked_output", lambda *a, **k: pytest.fail("queued"))
    result = CliRunner().invoke(main, ["study", "run", "studies/tiny.yaml", "--dry-run", "--only", "*-s1-*"])
    lines = result.output.splitlines()
    assert result.exit_code == 0 and lines and all("-s1-" in line and "--queue" in line for line in lines)


def test_stop_ends_the_studys_queue_and_counts_killed_cells_as_not_run(tmp_path, monkeypatch):
    """`study stop` drops the study's queued cells, kills its running one and forgets it (not
    listed as failed; the next run queues it again), stops the workers and leaves other
    experiments in the queue alone."""
    study = tiny(tmp_path)
    path = tmp_path / "results.json"
    cells = studies.study_cells(study, studies.empty_results(study))
    save(study, path, finished(cells[:1], {}))
    queue = {cells[1].name: "Running", cells[2].name: "Queued", "someone-elses": "Queued"}
    commands = []

    def dvc(command):
        commands.append(command[:3])
        verb, names = command[2], command[3:]
        if verb == "kill":
            queue.update({name: "Failed" for name in names})
        elif verb == "remove":
            assert all(queue.pop(name) != "Running" for name in names)
        return ""

    monkeypatch.setattr(studies, "queue_names", lambda *states: [n for n, s in queue.items() if s in states])
    monkeypatch.setattr(studies, "checked_output", dvc)
    monkeypatch.setattr(studies, "save", lambda study, path, failed=None: save(study, path, ([], {}),
                        failed=[n for n, s in queue.items() if s == "Failed"]))
    stopped = studies.stop(study, path, log=lambda line: None)
    assert sorted(stopped) == sorted([cells[1].name, cells[2].name])
    assert queue == {"someone-elses": "Queued"}
    assert commands[-1] == ["dvc", "queue", "stop"]
    studies.save(study, path)
    results = studies.load_results(path, study)
    assert results["failed"] == {} and list(results["cells"]) == [cells[0].name]
    assert {cells[1], cells[2]} <= set(studies.pending(study, results))


def test_differences_are_paired_by_seed(tmp_path):
    """Each arm minus the first arm, and each generator minus the first, over the seeds both
    finished: a seed one side lacks is left out, one seed shows no interval."""
    study = tiny(tmp_path, TINY.replace(
        "selection: {arm: noisy, method: noisy_maml, grid: {noise.sigma: [0.01, 0.1]}, reference: maml}\n", ""))
    path = tmp_path / "results.json"
    cells = {(c.generator, c.arm, c.seed): c for c in studies.study_cells(study, studies.empty_results(study))
             if c.part == "arms"}
    tests = {("yin", "maml", 0): 0.30, ("yin", "maml", 1): 0.40, ("yin", "noisy", 0): 0.35,
             ("yin", "noisy", 1): 0.47, ("rajendran", "maml", 0): 0.60, ("rajendran", "noisy", 1): 0.50}
    save(study, path, finished([cells[k] for k in tests], {cells[k].name: (0.5, t) for k, t in tests.items()}))
    text = write_study_report(study, studies.load_results(path, study), tmp_path / "reports").read_text()
    mean, half = mean_ci95(torch.tensor([5.0, 7.0], dtype=torch.float64))
    assert f"| noisy | {mean:+.2f} ± {half:.2f} (n=2) | not run yet | +3.00 (1 seed) |" in text
    assert "| maml |  |  | +30.00 (1 seed) |" in text


def test_convergence_bands_stay_within_what_an_accuracy_can_be():
    """Three seeds near 0 and near 1: the t band's half-width exceeds the distance to the
    bound, so that side is clipped there; the other side and the mean are untouched."""
    curves = [{"iteration": [1.0, 2.0], "val_acc_post": [low, high]} for low, high in [(0.01, 0.99), (0.03, 0.97),
                                                                                      (0.05, 0.95)]]
    x, mean, low, high = _band(curves, "val_acc_post")
    _, half = mean_ci95(torch.tensor([0.99, 0.97, 0.95], dtype=torch.float64))
    assert x == [1.0, 2.0] and mean == pytest.approx([0.03, 0.97]) and half > 0.03
    assert low == pytest.approx([0.0, 0.97 - half]) and high == pytest.approx([0.03 + half, 1.0])
