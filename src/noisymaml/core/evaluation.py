"""Meta-test on fixed episodes, and capture of test-task gradients for feedback."""

from __future__ import annotations

from typing import Protocol

import torch
from torch.func import vmap

from noisymaml.core import Params
from noisymaml.core.maml import Forward, InnerLoop, Objective, evaluate_tasks, support_gradient
from noisymaml.core.metrics import MEMORISATION_TASKS
from noisymaml.core.tasks import TaskBatch, TaskSource, seeded


class EvaluationSet(Protocol):
    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> TaskBatch: ...


def evaluate(forward: Forward, objective: Objective, params: Params, episodes: EvaluationSet,
             inner: InnerLoop, chunk: int, limit: int | None = None,
             batched: bool = True) -> dict[str, torch.Tensor]:
    """Per-episode pre/post-adaptation metrics on the CPU: {metric: [episodes]}."""
    total = len(episodes) if limit is None else min(limit, len(episodes))
    parts = [evaluate_tasks(forward, objective, params, episodes.slice(start, min(start + chunk, total)),
                            inner, batched)
             for start in range(0, total, chunk)]
    return {key: torch.cat([p[key] for p in parts]).cpu() for key in parts[0]}


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


def split_summary_inputs(per_task: dict[str, torch.Tensor], feedback_tasks: int) -> dict[str, dict]:
    """The feedback tasks (the first ones) and the held-out rest, as separate metric groups."""
    return {
        "feedback_tasks": {k: v[:feedback_tasks] for k, v in per_task.items()},
        "heldout_tasks": {k: v[feedback_tasks:] for k, v in per_task.items()},
    }
