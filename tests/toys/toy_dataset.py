"""A toy dataset for the extension test: 1-D linear regression tasks y = a x + b.

Copied into src/noisymaml/datasets/ by tests/test_extending.py, with one line in the registry.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from noisymaml.core.files import load_file
from noisymaml.core.maml import REGRESSION
from noisymaml.core.tasks import TaskBatch, seeded
from noisymaml.datasets.base import MSE, Dataset, EvalSettings, FetchSettings, MamlSettings, TaskData, TrainSettings
from noisymaml.settings import Section


class LineTasks(Section):
    support: int = Field(ge=1)
    query: int = Field(ge=1)
    test_episodes: int = Field(ge=1)
    val_episodes: int = Field(ge=1)
    feedback_episodes: int = Field(ge=1)


class LineModel(Section):
    hidden: list[int]


class LineSettings(Section):
    tasks: LineTasks
    model: LineModel
    maml: MamlSettings
    train: TrainSettings
    eval: EvalSettings


class Lines:
    """Tasks y = a x + b, a and b ~ U(-1, 1), x ~ U(-2, 2)."""

    def __init__(self, tasks: LineTasks):
        self.tasks = tasks

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        slope, offset = (torch.rand(2, n_tasks, 1, 1, generator=generator) * 2 - 1)
        x = torch.rand(n_tasks, self.tasks.support + self.tasks.query, 1, generator=generator) * 4 - 2
        y = slope * x + offset
        s = self.tasks.support
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:])


class ToyLines(Dataset):
    name = "toylines"
    Settings = LineSettings
    measure = MSE

    def fetch(self, folder: Path, fetch: FetchSettings) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "README.txt").write_text("generated\n")
        return "generated tasks"

    def build_episodes(self, settings: LineSettings, seed: int, source: Path, fetch: FetchSettings,
                       out: Path) -> dict:
        tasks = settings.tasks
        for split, count in (("val", tasks.val_episodes), ("feedback", tasks.feedback_episodes),
                             ("test", tasks.test_episodes)):
            torch.save(Lines(settings.tasks).sample(count, seeded(seed, split)).as_dict(), out / f"{split}.pt")
        return {"test_episodes": settings.tasks.test_episodes}

    def load(self, settings: LineSettings, folder: Path, device: torch.device) -> TaskData:
        val, feedback, test = (TaskBatch(**load_file(folder / f"{s}.pt")).to(device)
                               for s in ("val", "feedback", "test"))
        spec = {"kind": "mlp", "in_features": 1, "hidden": settings.model.hidden, "out_features": 1}
        return TaskData(Lines(settings.tasks), val, test, REGRESSION, spec, feedback)


DATASET = ToyLines()
