"""What every dataset provides, and the settings every dataset section shares.

A dataset is one module of this package with a `Dataset` subclass: its params schema
(`Settings`, the `<name>:` section of params.yaml), what its fetch stage checks, how its
episodes stage builds the fixed episodes, how later stages load its tasks, the metric it is
scored on and the literature figures the report quotes beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from noisymaml.core.maml import Objective
from noisymaml.core.tasks import TaskSource
from noisymaml.settings import Section


@dataclass
class TaskData:
    """A dataset as training and evaluation see it."""

    train: TaskSource
    val: object  # an evaluation set: __len__ and slice(start, stop) -> TaskBatch
    test: object  # held-out test episodes: no class, no image shared with `feedback`
    objective: Objective
    model_spec: dict
    feedback: object  # feedback episodes: their support gradients feed back into meta-training


@dataclass(frozen=True)
class Measure:
    """How a dataset is scored: the metric key in metrics files and how it is shown."""

    key: str
    name: str
    percent: bool
    better: str

    def column(self, stage: str) -> str:
        return f"{self.key}_{stage}"

    def shown(self, value: float) -> float:
        return value * 100.0 if self.percent else value


MSE = Measure("loss", "MSE", False, "lower is better")
ACCURACY = Measure("acc", "accuracy (%)", True, "higher is better")


@dataclass(frozen=True)
class Reported:
    """A figure from a paper, for the same dataset and protocol family (reported, not reproduced)."""

    setting: str
    method: str
    value: str
    source: str


RAJENDRAN = "Rajendran et al. 2020, Meta-Learning Requires Meta-Augmentation (NeurIPS 2020)"
FINN = "Finn et al. 2017, Model-Agnostic Meta-Learning (ICML 2017)"
YIN = "Yin et al. 2020, Meta-Learning without Memorization (ICLR 2020)"


class FetchSettings(Section):
    """`fetch`: how the fetch stages treat the files in data/downloads/<dataset>/."""

    download: bool = True       # omniglot: download the chosen set's archives the folder lacks
    omniglot: Literal["small", "full", "own"] = "small"  # omniglot: which archives (docs/datasets.md)
    allow_pickle: bool = False  # miniimagenet: also read the pickled caches (unpickling runs code)


class MamlSettings(Section):
    """`<dataset>.maml`: the inner loop of meta-training."""

    inner_lr: float = Field(gt=0)
    inner_steps: int = Field(ge=1)
    first_order: bool = False


class TrainSettings(Section):
    """`<dataset>.train`: the outer loop."""

    iterations: int = Field(ge=1)
    meta_batch: int = Field(ge=1)
    meta_lr: float = Field(gt=0)
    log_every: int = Field(ge=1)
    val_tasks: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    batched_tasks: str | bool = "auto"  # auto: vmap on CUDA, a task loop on CPU
    meta_grad_clip: float | None = Field(None, gt=0)  # clamp meta-gradient entries to +-value
    precision: Literal["float32", "bfloat16"] = "float32"  # bfloat16: forward passes under autocast

    @field_validator("batched_tasks", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError("allowed are auto, true, false")


class EvalSettings(Section):
    """`<dataset>.eval`: meta-test adaptation."""

    inner_steps: int = Field(ge=0)
    chunk: int = Field(ge=1)


class Dataset:
    """The base of every dataset; subclasses set the class attributes and the three stages."""

    name: str  # the key in params.yaml (`datasets`, the `<name>:` section)
    Settings: type[Section]  # the schema of the `<name>:` section
    measure: Measure = ACCURACY
    reported: tuple[Reported, ...] = ()  # the literature figures the report quotes
    paper_iterations: int | None = None  # meta-iterations of the papers' runs

    def fetch(self, folder: Path, fetch: FetchSettings) -> str:
        """Check (or download) the dataset's files in `folder`; returns what was found."""
        raise NotImplementedError

    def build_episodes(self, settings: Section, seed: int, source: Path, fetch: FetchSettings,
                       out: Path) -> dict:
        """Write into `out` everything later stages read; returns a summary."""
        raise NotImplementedError

    def load(self, settings: Section, folder: Path, device: torch.device) -> TaskData:
        """The episodes folder as training and evaluation see it."""
        raise NotImplementedError

    def input_info(self, settings: Section, spec: dict) -> dict:
        """How inputs reach the network (stored in model files for `noisymaml predict`)."""
        return {}

    def protocol(self, settings: Section) -> str:
        """One sentence on how test tasks are scored, for the report ("" when nothing to add)."""
        return ""

    def chance(self, settings: Section) -> float | None:
        """The score of guessing (1/ways for classification); None where there is none."""
        ways = getattr(settings.tasks, "ways", None)
        return None if ways is None else 1.0 / ways

    def reductions(self, settings: Section) -> list[str]:
        """How this setting falls short of the papers' scale (empty: paper scale)."""
        iterations = settings.train.iterations
        return ([f"{iterations} meta-iterations"]
                if self.paper_iterations and iterations < self.paper_iterations else [])

    def paper_scale(self) -> str:
        return f"{self.paper_iterations:,} meta-iterations"
