"""GPU claims for `dvc queue start -j N`: each run takes a GPU no other run holds, on a fake
device list (the indices are injected, so no GPU is needed), in separate processes as the
stages of parallel experiments are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from noisymaml.core import devices
from noisymaml.pipeline.run import Run

ROOT = Path(__file__).resolve().parents[1]
# A stand-in for a stage: claims one of the fake GPUs twice (a process keeps the one it holds),
# prints what it got, and runs until it is killed.
STAGE = """
import sys, time
from pathlib import Path
from noisymaml.core.devices import claim_gpu
indices, folder = [int(i) for i in sys.argv[2].split(",")], Path(sys.argv[1])
first = claim_gpu(indices, folder, poll_seconds=0.05)
print(first, claim_gpu(indices, folder, poll_seconds=0.05), flush=True)
time.sleep(600)
"""


class Stage:
    """A running stand-in process; `index` waits for the GPU it claims."""

    def __init__(self, folder: Path, indices: str = "0,1"):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.process = subprocess.Popen([sys.executable, "-c", STAGE, str(folder), indices],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def index(self) -> int:
        first, again = self.process.stdout.readline().split()
        assert first == again  # asking again in the same process gives the GPU it holds
        return int(first)

    def crash(self) -> None:
        self.process.kill()  # SIGKILL: no Python clean-up runs
        self.process.wait()


@pytest.fixture
def stages():
    started: list[Stage] = []

    def start(folder: Path, indices: str = "0,1") -> Stage:
        started.append(Stage(folder, indices))
        return started[-1]

    yield start
    for stage in started:
        stage.crash()
        stage.process.stdout.close()
        stage.process.stderr.close()


def test_parallel_runs_take_different_gpus_and_a_crashed_runs_gpu_is_taken_again(tmp_path, stages):
    first, second = stages(tmp_path), stages(tmp_path)
    held = first.index()
    assert {held, second.index()} == {0, 1}
    waiting = stages(tmp_path)  # every GPU is held: it waits, and says so
    assert "all 2 GPU(s) are held by other noisymaml runs" in waiting.process.stderr.readline()
    first.crash()
    assert waiting.index() == held


def test_locks_of_other_gpu_lists_do_not_interfere(tmp_path, stages):
    started = [stages(tmp_path, "0,1"), stages(tmp_path, "1,2"), stages(tmp_path / "elsewhere", "0")]
    assert [stage.index() for stage in started] == [0, 1, 0]


def test_exclusive_auto_asks_for_a_gpu_of_the_machine(monkeypatch, tmp_path):
    asked = {}

    def claim(indices, folder):
        asked.update(indices=list(indices), folder=folder)
        return 1

    monkeypatch.setenv(devices.LOCKS_ENV, str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: asked.update(current=index))
    monkeypatch.setattr(devices, "claim_gpu", claim)
    assert devices.resolve_device("auto", exclusive=True) == torch.device("cuda", 1)
    assert asked == {"indices": [0, 1, 2], "folder": tmp_path, "current": 1}
    assert devices.resolve_device("auto") == torch.device("cuda")  # e.g. predict: no claim
    assert devices.resolve_device("cuda:2", exclusive=True) == torch.device("cuda", 2)
    assert asked["current"] == 1


def test_pipeline_runs_claim_their_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(devices, "claim_gpu", lambda indices, folder: 1)
    assert Run.from_params("sinusoid", "maml", ROOT / "params.yaml").device == torch.device("cuda", 1)


def test_without_cuda_auto_is_the_cpu_and_takes_no_lock(monkeypatch, tmp_path):
    monkeypatch.setenv(devices.LOCKS_ENV, str(tmp_path / "locks"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto", exclusive=True) == torch.device("cpu")
    assert not (tmp_path / "locks").exists()
