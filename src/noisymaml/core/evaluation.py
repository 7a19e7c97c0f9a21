"""Meta-test on fixed episodes, and capture of test-task gradients for feedback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch.func import vmap

from noisymaml.core import Params
from noisymaml.core.maml import Forward, InnerLoop, Objective, evaluate_tasks, support_gradient
from noisymaml.core.metrics import MEMORISATION_TASKS
from noisymaml.core.tasks import TaskBatch, TaskSource, seeded
from noisymaml.errors import NoisyMamlError


class EvaluationDiverged(NoisyMamlError):
    """Meta-test adaptation gave NaN/inf metrics: the stage stops instead of writing them."""


class EvaluationSet(Protocol):
    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> TaskBatch: ...


def evaluate(forward: Forward, objective: Objective, params: Params, episodes: EvaluationSet,
             inner: InnerLoop, chunk: int, limit: int | None = None, batched: bool = True,
             progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Per-episode pre/post-adaptation metrics on the CPU: {metric: [episodes]}; `progress` is
    called with the number of episodes done after each chunk."""
    total = len(episodes) if limit is None else min(limit, len(episodes))
    parts = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        parts.append(evaluate_tasks(forward, objective, params, episodes.slice(start, stop), inner, batched))
        if progress is not None:
            progress(stop)
    return {key: torch.cat([p[key] for p in parts]).cpu() for key in parts[0]}


def non_finite(per_task: dict[str, torch.Tensor]) -> dict[str, int]:
    """{metric: number of episodes where it is NaN/inf}, for the metrics where any is."""
    counts = {key: int((~torch.isfinite(values)).sum()) for key, values in per_task.items()}
    return {key: count for key, count in counts.items() if count}


def memorisation_tasks(source: TaskSource, seed: int, device: torch.device) -> TaskBatch:
    """The fixed training tasks whose pre-adaptation score is the memorisation index."""
    return source.sample(MEMORISATION_TASKS, seeded(seed, "memorisation", device))


def capture_gradients(forward: Forward, objective: Objective, params: Params,
                      episodes: EvaluationSet, count: int) -> Params:
    """Support-set gradients at the meta-parameters of the first `count` episodes.

    Only support inputs and labels enter: the query half of each episode is never touched.
    """
    tasks = episodes.slice(0, count)

    def one(support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        return support_gradient(forward, objective, params, support_x, support_y)

    return {k: v.cpu() for k, v in vmap(one)(tasks.support_x, tasks.support_y).items()}
