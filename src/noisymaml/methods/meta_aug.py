"""Meta-augmentation (Rajendran et al. 2020, "Meta-Learning Requires Meta-Augmentation").

Training tasks are made mutually exclusive by randomness the model cannot predict from its
inputs, so memorising a task's answer no longer pays and the support set must be read:
classification permutes each task's labels (the same permutation on support and query),
regression shifts each task's targets by one U(-r, r) offset shared by support and query.
Validation and test episodes are never augmented. The permutations and shifts come from the
trainer's method stream, so meta_aug trains on the same tasks (classes, images) as maml.
"""

from __future__ import annotations

import torch
from pydantic import Field

from noisymaml.core.tasks import TaskBatch
from noisymaml.methods.maml import MAML
from noisymaml.settings import Section


def permute_labels(tasks: TaskBatch, ways: int, generator: torch.Generator) -> TaskBatch:
    """Relabel every task by its own random permutation of 0..ways-1."""
    keys = torch.rand(len(tasks), ways, generator=generator, device=generator.device)
    permutation = keys.argsort(dim=-1)
    return TaskBatch(tasks.support_x, permutation.gather(1, tasks.support_y),
                     tasks.query_x, permutation.gather(1, tasks.query_y))


def shift_targets(tasks: TaskBatch, shift_range: float, generator: torch.Generator) -> TaskBatch:
    """Add one U(-range, range) offset per task to its support and query targets."""
    shift = (torch.rand(len(tasks), generator=generator, device=generator.device) * 2 - 1) * shift_range
    shift = shift.view(-1, *[1] * (tasks.support_y.dim() - 1)).to(tasks.support_y.dtype)
    return TaskBatch(tasks.support_x, tasks.support_y + shift, tasks.query_x, tasks.query_y + shift)


class MetaAugSettings(Section):
    """`algorithms.meta_aug` (classification permutes labels per task and needs no setting)."""

    range: float = Field(gt=0)  # regression: targets shifted by U(-range, range) per task


class MetaAugmentation(MAML):
    """MAML on meta-augmented training tasks."""

    name = "meta_aug"
    label = "MAML + meta-augmentation"
    Settings = MetaAugSettings

    def __init__(self, range: float):
        self.range = range

    def describe(self) -> str:
        return ("meta-augmentation: labels permuted per task (classification), targets shifted by "
                f"U(-{self.range:g}, {self.range:g}) per task (regression)")

    def augment(self, tasks: TaskBatch, classification: bool, ways: int,
                generator: torch.Generator) -> TaskBatch:
        if classification:
            return permute_labels(tasks, ways, generator)
        return shift_targets(tasks, self.range, generator)


METHOD = MetaAugmentation
