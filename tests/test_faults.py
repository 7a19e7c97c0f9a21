"""Fault injection on the stage scripts (in this process, on a tiny sinusoid project): read-only
outputs, a full disk and broken files end in one `error:` line naming the file, and never cost
the training done so far; broken checkpoints are set aside and training starts over."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from faults import full_disk, read_only
from noisymaml.pipeline import steps

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path("data/models/sinusoid/maml.pt")
CURVE = Path("plots/sinusoid/maml.csv")
CHECKPOINT = Path("checkpoints/sinusoid/maml.pt")
ITERATIONS = 7  # checkpoints at 3 and 6, and the finished state at 7


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device="cpu", datasets=["sinusoid"])
    params["feedback"].update(iterations=2, tasks=3)
    sinusoid = params["sinusoid"]
    sinusoid["tasks"].update(test_episodes=12, val_episodes=6)
    sinusoid["train"].update(iterations=ITERATIONS, meta_batch=4, log_every=3, checkpoint_every=3,
                             val_tasks=4)
    return params


def run_stage(name: str, *args: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return CliRunner().invoke(module.main, list(args))


def succeeded(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def one_error_line(result) -> str:
    """Exit status 2 and a single `error:` line, no traceback."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A tiny project folder (params.yaml and the sinusoid episodes) as the current folder."""
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    succeeded(run_stage("episodes", "sinusoid"))
    return tmp_path


@pytest.fixture
def reference(project) -> dict:
    """An uninterrupted train stage's model parameters and learning curve; then removed."""
    succeeded(run_stage("train", "sinusoid", "maml"))
    result = {"params": torch.load(MODEL, weights_only=True)["params"], "curve": CURVE.read_bytes()}
    MODEL.unlink()
    CURVE.unlink()
    return result


def assert_reference_result(reference: dict) -> None:
    params = torch.load(MODEL, weights_only=True)["params"]
    assert params.keys() == reference["params"].keys()
    assert all(torch.equal(params[k], v) for k, v in reference["params"].items())
    assert CURVE.read_bytes() == reference["curve"]
    assert not CHECKPOINT.exists()


def write_fails(fault: str, monkeypatch):
    if fault == "full disk":
        return full_disk()
    Path("data/models").mkdir(parents=True, exist_ok=True)
    return read_only(Path("data/models"), monkeypatch)


@pytest.mark.parametrize("fault, reason", [("read-only", "Permission denied"),
                                           ("full disk", "File too large")])
def test_a_failed_final_save_keeps_the_training(project, reference, monkeypatch, fault, reason):
    real_save = steps.save_model

    def save_fails(*args, **kwargs):
        with write_fails(fault, monkeypatch):
            real_save(*args, **kwargs)

    monkeypatch.setattr(steps, "save_model", save_fails)
    line = one_error_line(run_stage("train", "sinusoid", "maml"))
    assert line.startswith(f"error: cannot write {MODEL}: {reason} (the training so far is kept in "
                           f"{CHECKPOINT}: run the stage again")
    assert torch.load(CHECKPOINT, weights_only=True)["trainer"]["iteration"] == ITERATIONS
    assert not MODEL.exists()

    monkeypatch.setattr(steps, "save_model", real_save)
    log = succeeded(run_stage("train", "sinusoid", "maml"))
    assert f"resuming from checkpoint {CHECKPOINT} at iteration {ITERATIONS}" in log
    assert " it " not in log  # nothing trained again
    assert_reference_result(reference)


def test_a_read_only_episodes_folder_is_one_line(project, monkeypatch):
    with read_only(Path("data/episodes/sinusoid"), monkeypatch):
        line = one_error_line(run_stage("episodes", "sinusoid"))
    assert line.startswith("error: cannot write data/episodes/sinusoid/val.pt: Permission denied")


def interrupted_run(monkeypatch) -> Path:
    """The checkpoint of a train stage stopped (Ctrl-C) right after training, at iteration 7."""
    with monkeypatch.context() as patch:
        patch.setattr(steps, "save_model", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        assert run_stage("train", "sinusoid", "maml").exit_code == 130
    return CHECKPOINT


def of_other_shapes(path: Path) -> bytes:
    """A checkpoint of this very run (fingerprint and all) whose parameters do not fit."""
    state = torch.load(path, weights_only=True)
    state["trainer"]["params"] = {k: torch.zeros(2) for k in state["trainer"]["params"]}
    torch.save(state, path)
    return path.read_bytes()


def saved(obj) -> bytes:
    torch.save(obj, "saved.pt")
    return Path("saved.pt").read_bytes()


BROKEN = {  # kind -> its bytes, given a function that makes a real checkpoint
    "empty": lambda real: b"",
    "garbage": lambda real: b"\x00garbage" * 10,
    "a list": lambda real: saved([1, 2, 3]),
    "a model file": lambda real: saved({"spec": {}, "params": {}}),
    "truncated": lambda real: real().read_bytes()[:200],
    "other shapes": lambda real: of_other_shapes(real()),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_checkpoint_is_set_aside_and_training_restarts(project, reference, monkeypatch, kind):
    content = BROKEN[kind](lambda: interrupted_run(monkeypatch))
    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    CHECKPOINT.write_bytes(content)

    log = succeeded(run_stage("train", "sinusoid", "maml"))
    aside = CHECKPOINT.with_name("maml.pt.broken")
    assert f"broken checkpoint: {CHECKPOINT}: " in log
    assert f"set aside as {aside}, training restarts from iteration 0" in log
    assert "resuming" not in log
    assert aside.read_bytes() == content
    assert_reference_result(reference)


def test_ctrl_c_is_one_line(project, monkeypatch):
    monkeypatch.setattr(steps, "train", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    result = run_stage("train", "sinusoid", "maml")
    assert result.exit_code == 130 and result.stderr == "error: interrupted (Ctrl-C)\n"


def test_an_episodes_file_with_wrong_contents_is_one_line(project):
    torch.save([1, 2], "data/episodes/sinusoid/val.pt")
    line = one_error_line(run_stage("train", "sinusoid", "maml"))
    assert line.startswith("error: data/episodes/sinusoid/val.pt: expected an episodes file holding "
                           "support_x, support_y, query_x, query_y, found a list")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04cut"])
def test_an_empty_or_cut_model_file_is_one_line(project, content):
    MODEL.parent.mkdir(parents=True)
    MODEL.write_bytes(content)
    line = one_error_line(run_stage("evaluate", "sinusoid", "maml"))
    assert line.startswith(f"error: {MODEL}: ")


def edit_params(**sinusoid_sections) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    for section, values in sinusoid_sections.items():
        params["sinusoid"][section].update(values)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_divergence_at_evaluation_stops_the_stage_and_writes_no_numbers(project):
    succeeded(run_stage("train", "sinusoid", "maml"))
    edit_params(maml={"inner_lr": 1e4})  # adaptation at evaluation blows up
    line = one_error_line(run_stage("evaluate", "sinusoid", "maml"))
    assert "sinusoid/maml: meta-test adaptation diverged on the test episodes (NaN/inf loss_post" in line
    assert "lower `sinusoid.maml.inner_lr` or `sinusoid.eval.inner_steps`" in line
    assert not Path("metrics/sinusoid/maml.json").exists()


def test_divergence_at_validation_stops_training(project):
    edit_params(maml={"inner_lr": 2.0, "inner_steps": 1}, eval={"inner_steps": 100})
    line = one_error_line(run_stage("train", "sinusoid", "maml"))
    assert "sinusoid/maml: meta-test adaptation diverged on the validation episodes" in line
    assert not MODEL.exists()


def test_feedback_keeps_both_runs_until_every_output_is_written(project, monkeypatch):
    """DVC deletes all of a stage's outputs before re-running it: a failed last write must not
    make the first variant train again."""
    for stage in ("train", "evaluate"):
        succeeded(run_stage(stage, "sinusoid", "noisy_maml"))
    succeeded(run_stage("feedback", "sinusoid"))
    outputs = [Path(f"metrics/sinusoid/noisy_maml_{v}.json") for v in ("feedback", "continued")]
    expected = [path.read_bytes() for path in outputs]
    for path in outputs:
        path.unlink()

    real_write = steps.write_json

    def last_write_fails(path, payload):
        if path == outputs[1]:
            with full_disk():
                real_write(path, payload)
        real_write(path, payload)

    monkeypatch.setattr(steps, "write_json", last_write_fails)
    line = one_error_line(run_stage("feedback", "sinusoid"))
    kept = [Path(f"checkpoints/sinusoid/noisy_maml_{v}.pt") for v in ("feedback", "continued")]
    assert f"the training so far is kept in {kept[0]}, {kept[1]}" in line
    monkeypatch.setattr(steps, "write_json", real_write)
    log = succeeded(run_stage("feedback", "sinusoid"))
    assert log.count("resuming from checkpoint") == 2 and " it " not in log
    assert [path.read_bytes() for path in outputs] == expected
    assert not any(path.exists() for path in kept)

