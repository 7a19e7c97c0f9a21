"""Few-shot tasks: the batch container and image-classification task construction.

Training task modes (Rajendran et al. 2020, Yin et al. 2020):
- ``non_exclusive`` (NME): training classes are cut once into fixed groups of N ways and each
  class always carries the same label, so one function can solve every training task.
- ``intrashuffle``: the same groups, labels permuted inside every task.
- ``intershuffle``: standard mutually-exclusive sampling (random classes, random labels).

D'Claw's tasks are fixed too: each object's (neg, pos) classes form one group (`class_pairs`),
and its validation and test episodes are groups of their split (`grouped_episodes`). Its
intershuffle training tasks are any two classes, e.g. one object's neg with another's pos or
two negatives, as in Rajendran et al.'s data_generator.py (random.sample over every folder).

Images stay on the device as one uint8 array [classes, drawers, channels, H, W]; a task is a set
of indices into it, so sampling does no decoding and no per-image Python work.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from typing import Protocol

import torch

TASK_MODES = ("non_exclusive", "intrashuffle", "intershuffle")


def seeded(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends on the seed and on what it is for."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(purpose.encode()))


@dataclass(frozen=True)
class TaskBatch:
    """A batch of tasks: leading dimension = task. Labels are class indices or regression targets."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def slice(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(*(getattr(self, f.name)[start:stop] for f in fields(self)))

    def task(self, index: int) -> TaskBatch:
        """One task, keeping the leading task dimension of size 1."""
        return self.slice(index, index + 1)

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TaskSource(Protocol):
    """Where meta-training draws its tasks from."""

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch: ...


@dataclass(frozen=True)
class Episodes:
    """Fixed classification episodes as indices: classes [E, N] and drawers [E, N, K+Q]."""

    classes: torch.Tensor
    drawers: torch.Tensor

    def __len__(self) -> int:
        return self.classes.shape[0]

    def to(self, device: torch.device | str) -> Episodes:
        return Episodes(self.classes.to(device), self.drawers.to(device))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"classes": self.classes, "drawers": self.drawers}


def random_drawers(n_tasks: int, ways: int, per_class: int, n_drawers: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Distinct drawer (example) indices per class: [n_tasks, ways, per_class]."""
    keys = torch.rand(n_tasks, ways, n_drawers, generator=generator, device=generator.device)
    return keys.argsort(dim=-1)[..., :per_class]


def random_classes(n_tasks: int, ways: int, n_classes: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Distinct random classes per task, in random label order: [n_tasks, ways]."""
    keys = torch.rand(n_tasks, n_classes, generator=generator, device=generator.device)
    return keys.argsort(dim=-1)[:, :ways]


def standard_episodes(n_tasks: int, ways: int, per_class: int, n_classes: int, n_drawers: int,
                      generator: torch.Generator) -> Episodes:
    """Mutually-exclusive N-way episodes over held-out classes (validation and test)."""
    return Episodes(random_classes(n_tasks, ways, n_classes, generator),
                    random_drawers(n_tasks, ways, per_class, n_drawers, generator))


def nme_groups(n_classes: int, ways: int, generator: torch.Generator) -> torch.Tensor:
    """Cut shuffled training classes into fixed groups of `ways`: [n_groups, ways] (rest dropped)."""
    order = torch.randperm(n_classes, generator=generator, device=generator.device)
    n_groups = n_classes // ways
    return order[: n_groups * ways].reshape(n_groups, ways)


def class_pairs(n_classes: int) -> torch.Tensor:
    """Classes (0, 1), (2, 3), ... as fixed 2-way groups [n_classes // 2, 2] (D'Claw's objects)."""
    return torch.arange(n_classes - n_classes % 2).view(-1, 2)


def grouped_episodes(n_tasks: int, groups: torch.Tensor, per_class: int, n_drawers: int,
                     generator: torch.Generator) -> Episodes:
    """Episodes whose classes are one of the fixed `groups`, labels in group order."""
    picks = torch.randint(0, groups.shape[0], (n_tasks,), generator=generator, device=generator.device)
    return Episodes(groups.to(generator.device)[picks],
                    random_drawers(n_tasks, groups.shape[1], per_class, n_drawers, generator))


def gather_tasks(images: torch.Tensor, episodes: Episodes, shots: int) -> TaskBatch:
    """Materialise episodes: images [C, D, ch, H, W] uint8 -> float tasks [E, N*K, ch, H, W].

    Label of a class = its position in the episode's class list.
    """
    n_tasks, ways, per_class = episodes.drawers.shape
    pixels = images[episodes.classes.unsqueeze(-1), episodes.drawers]  # [E, N, K+Q, ch, H, W]
    pixels = pixels.float().div_(255.0)
    labels = torch.arange(ways, device=images.device).view(1, ways, 1).expand(n_tasks, ways, per_class)
    return TaskBatch(
        support_x=pixels[:, :, :shots].flatten(1, 2),
        support_y=labels[:, :, :shots].flatten(1, 2),
        query_x=pixels[:, :, shots:].flatten(1, 2),
        query_y=labels[:, :, shots:].flatten(1, 2),
    )


def rotate_tasks(tasks: TaskBatch, ways: int, generator: torch.Generator) -> TaskBatch:
    """Label-preserving augmentation: each class of each task turned by a random multiple of 90°."""
    n_tasks = len(tasks)
    turns = torch.randint(0, 4, (n_tasks, ways), generator=generator, device=generator.device)

    def turn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = turns.gather(1, y)  # [tasks, examples]
        rotated = torch.stack([x.rot90(r, dims=(-2, -1)) for r in range(4)])
        task_index = torch.arange(n_tasks, device=x.device).unsqueeze(1)
        example_index = torch.arange(y.shape[1], device=x.device).unsqueeze(0)
        return rotated[k, task_index, example_index]

    return TaskBatch(turn(tasks.support_x, tasks.support_y), tasks.support_y,
                     turn(tasks.query_x, tasks.query_y), tasks.query_y)


class ClassificationTaskSource:
    """Samples training tasks from device-resident images in one of the TASK_MODES."""

    def __init__(self, images: torch.Tensor, groups: torch.Tensor, mode: str, ways: int,
                 shots: int, query_shots: int, augment_rotations: bool = False):
        if mode not in TASK_MODES:
            raise ValueError(f"unknown task mode {mode!r}; allowed: {', '.join(TASK_MODES)}")
        self.images, self.groups, self.mode = images, groups, mode
        self.ways, self.shots, self.per_class = ways, shots, shots + query_shots
        self.augment_rotations = augment_rotations

    def classes(self, n_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Class indices per task, position = label: [n_tasks, ways]."""
        if self.mode == "intershuffle":
            return random_classes(n_tasks, self.ways, self.images.shape[0], generator)
        picks = torch.randint(0, self.groups.shape[0], (n_tasks,), generator=generator,
                              device=generator.device)
        classes = self.groups[picks]
        if self.mode == "intrashuffle":
            keys = torch.rand(n_tasks, self.ways, generator=generator, device=generator.device)
            classes = classes.gather(1, keys.argsort(dim=-1))
        return classes

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        classes = self.classes(n_tasks, generator)
        drawers = random_drawers(n_tasks, self.ways, self.per_class, self.images.shape[1], generator)
        tasks = gather_tasks(self.images, Episodes(classes, drawers), self.shots)
        if self.augment_rotations:
            tasks = rotate_tasks(tasks, self.ways, generator)
        return tasks


class EpisodeSet:
    """Fixed evaluation episodes over an image pool, materialised chunk by chunk."""

    def __init__(self, images: torch.Tensor, episodes: Episodes, shots: int):
        self.images, self.episodes, self.shots = images, episodes, shots

    def __len__(self) -> int:
        return len(self.episodes)

    def slice(self, start: int, stop: int) -> TaskBatch:
        part = Episodes(self.episodes.classes[start:stop], self.episodes.drawers[start:stop])
        return gather_tasks(self.images, part, self.shots)
