"""Non-mutually-exclusive sinusoid regression (Yin et al. 2020, "Meta-Learning without Memorization").

Input = x ~ U[-x_range, x_range] concatenated with a one-hot of the task's amplitude bin;
target = A sin(x) + label noise, phase 0. Training tasks come from the first `train_bins`
bins, so the one-hot identifies the task and a network can memorise every amplitude without
adapting. Test tasks draw A continuously while the one-hot points at a random training bin:
the input misleads, and only adaptation to the support set can give a low error.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from noisymaml.core.files import load_fields, save_atomic, write_text
from noisymaml.core.maml import REGRESSION
from noisymaml.core.tasks import TaskBatch, seeded
from noisymaml.datasets.base import (
    MSE,
    Dataset,
    EvalSettings,
    FetchSettings,
    MamlSettings,
    TaskData,
    TrainSettings,
)
from noisymaml.settings import Section

NOTE = ("The sinusoid tasks are generated from params.yaml (sinusoid.tasks): there is "
        "nothing to download.\n")


class SinusoidTasks(Section):
    bins: int = Field(ge=1)
    train_bins: int = Field(ge=1)
    amp_min: float = Field(gt=0)
    amp_max: float = Field(gt=0)
    x_range: float = Field(gt=0)
    support: int = Field(ge=1)
    query: int = Field(ge=1)
    label_noise: float = Field(ge=0)
    test_support: int = Field(ge=1)
    test_query: int = Field(ge=1)
    test_episodes: int = Field(ge=1)
    val_episodes: int = Field(ge=1)
    feedback_episodes: int = Field(ge=1)  # drawn like test tasks, from a stream of their own
    test_inputs: Literal["uniform", "grid"] = "uniform"  # grid: Yin et al.'s evenly spaced query x

    @model_validator(mode="after")
    def _relations(self):
        if self.train_bins > self.bins:
            raise ValueError(f"train_bins ({self.train_bins}) must not exceed bins ({self.bins})")
        if self.amp_min >= self.amp_max:
            raise ValueError(f"amp_min ({self.amp_min}) must be below amp_max ({self.amp_max})")
        return self


class MlpSettings(Section):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


class SinusoidSettings(Section):
    tasks: SinusoidTasks
    model: MlpSettings
    maml: MamlSettings
    train: TrainSettings
    eval: EvalSettings


class SinusoidNME:
    def __init__(self, spec: SinusoidTasks):
        self.spec = spec

    @property
    def input_size(self) -> int:
        return 1 + self.spec.bins

    def amplitudes(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.linspace(self.spec.amp_min, self.spec.amp_max, self.spec.bins, device=device)

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Training tasks: a random training bin each, its amplitude fixed by the bin."""
        bins = self._training_bins(n_tasks, generator)
        amplitude = self.amplitudes(generator.device)[bins]
        return self._tasks(bins, amplitude, self.spec.support, self.spec.query, generator)

    def test_tasks(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Evaluation tasks: continuous amplitude, misleading one-hot of a training bin."""
        bins = self._training_bins(n_tasks, generator)
        spec = self.spec
        amplitude = spec.amp_min + (spec.amp_max - spec.amp_min) * torch.rand(
            n_tasks, generator=generator, device=generator.device)
        grid = self._grid(spec.test_query, generator.device) if spec.test_inputs == "grid" else None
        return self._tasks(bins, amplitude, spec.test_support, spec.test_query, generator, grid)

    @staticmethod
    def _grid(points: int, device: torch.device) -> torch.Tensor:
        """Yin et al.'s query inputs: `points` evenly spaced x in [-4.5, 4.5] (their notebook's
        equally_spaced_samples), the same for every task."""
        return torch.linspace(-4.5, 4.5, points, device=device).view(1, -1, 1)

    def _training_bins(self, n_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.spec.train_bins, (n_tasks,), generator=generator,
                             device=generator.device)

    def _tasks(self, bins: torch.Tensor, amplitude: torch.Tensor, support: int, query: int,
               generator: torch.Generator, query_x: torch.Tensor | None = None) -> TaskBatch:
        """Support and query sets; `query_x` [1, query, 1] replaces the drawn query inputs."""
        n_tasks, n_points = bins.shape[0], support + query
        device = generator.device
        x = (torch.rand(n_tasks, n_points, 1, generator=generator, device=device) * 2 - 1) \
            * self.spec.x_range
        if query_x is not None:
            x = torch.cat([x[:, :support], query_x.expand(n_tasks, query, 1)], dim=1)
        noise = torch.randn(n_tasks, n_points, 1, generator=generator, device=device)
        y = amplitude.view(-1, 1, 1) * torch.sin(x) + self.spec.label_noise * noise
        one_hot = torch.nn.functional.one_hot(bins, self.spec.bins).float()
        inputs = torch.cat([x, one_hot.unsqueeze(1).expand(n_tasks, n_points, self.spec.bins)], -1)
        return TaskBatch(inputs[:, :support], y[:, :support], inputs[:, support:], y[:, support:])


def load_tasks(path: Path) -> TaskBatch:
    return TaskBatch(**load_fields(path, {f.name: torch.Tensor for f in fields(TaskBatch)}, "an episodes file"))


class Sinusoid(Dataset):
    name = "sinusoid"
    Settings = SinusoidSettings
    measure = MSE

    def fetch(self, folder: Path, fetch: FetchSettings) -> str:
        write_text(folder / "README.txt", NOTE)
        return "generated tasks, nothing to fetch"

    def build_episodes(self, settings: SinusoidSettings, seed: int, source: Path,
                       fetch: FetchSettings, out: Path) -> dict:
        problem, tasks = SinusoidNME(settings.tasks), settings.tasks
        counts = {"val": tasks.val_episodes, "feedback": tasks.feedback_episodes, "test": tasks.test_episodes}
        for split, count in counts.items():
            episodes = problem.test_tasks(count, seeded(seed, f"sinusoid/{split}"))
            save_atomic(episodes.as_dict(), out / f"{split}.pt")
        return {"episodes": counts}

    def protocol(self, settings: SinusoidSettings) -> str:
        tasks, steps = settings.tasks, settings.eval.inner_steps
        inputs = (f"{tasks.test_query} evenly spaced query x in [-4.5, 4.5] (Yin et al. 2020's grid)"
                  if tasks.test_inputs == "grid" else
                  f"{tasks.test_query} query x uniform in [-{tasks.x_range:g}, {tasks.x_range:g}]")
        return (f"Test protocol: {tasks.test_support} support points, {inputs}, {steps} adaptation "
                f"steps (Yin et al. 2020: 5 points, the grid, 100 steps: `test_inputs: grid`, "
                "`eval.inner_steps: 100`).")

    def load(self, settings: SinusoidSettings, folder: Path, device: torch.device) -> TaskData:
        problem = SinusoidNME(settings.tasks)
        splits = {s: load_tasks(folder / f"{s}.pt").to(device) for s in ("val", "feedback", "test")}
        spec = {"kind": "mlp", "in_features": problem.input_size,
                "hidden": list(settings.model.hidden), "out_features": 1}
        return TaskData(problem, splits["val"], splits["test"], REGRESSION, spec, splits["feedback"])


DATASET = Sinusoid()
