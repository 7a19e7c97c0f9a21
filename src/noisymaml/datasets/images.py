"""Few-shot image classification datasets: a pool of classes per split -> fixed episodes.

An image dataset only says how to read its pools (`ImageDataset.pools`): per split, uint8
images [classes, images, channels, H, W] and the class names. The episodes stage writes
pool.pt (images, class names, the fixed NME training groups) and the fixed val/test episode
indices; later stages load them back onto the training device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from noisymaml.core.files import load_fields, save_atomic, tensors
from noisymaml.core.maml import CLASSIFICATION
from noisymaml.core.tasks import (
    ClassificationTaskSource,
    Episodes,
    EpisodeSet,
    class_pairs,
    grouped_episodes,
    nme_groups,
    seeded,
    standard_episodes,
)
from noisymaml.datasets.base import (
    Dataset,
    EvalSettings,
    FetchSettings,
    MamlSettings,
    TaskData,
    TrainSettings,
)
from noisymaml.errors import ParamError
from noisymaml.settings import Section

SPLITS = ("train", "val", "test")
EPISODE_SPLITS = ("val", "feedback", "test")  # feedback and test: disjoint parts of the test classes


class ImageTasks(Section):
    """Few-shot classification tasks over a pool of image classes (see core.tasks for the modes)."""

    image_size: int = Field(ge=8)
    mode: Literal["non_exclusive", "intrashuffle", "intershuffle"]
    ways: int = Field(ge=2)
    shots: int = Field(ge=1)
    query_shots: int = Field(ge=1)  # query images per class
    test_episodes: int = Field(ge=1)  # held-out test episodes (from the held-out test classes)
    val_episodes: int = Field(ge=1)
    feedback_classes: int = Field(ge=2)  # test classes set aside for feedback episodes
    feedback_episodes: int = Field(ge=1)  # episodes over them (feedback.tasks take the first ones)
    # True where each training group and each val/test task is one fixed class pair (D'Claw objects)
    fixed_pairs: ClassVar[bool] = False


class ConvSettings(Section):
    filters: int = Field(ge=1)
    downsample: Literal["stride", "maxpool"] = "stride"


class ImageSettings(Section):
    """An image dataset's settings: its tasks, the Conv-4 and the (meta-)training loop."""

    tasks: ImageTasks
    model: ConvSettings
    maml: MamlSettings
    train: TrainSettings
    eval: EvalSettings

    @model_validator(mode="after")
    def _maxpool_needs_room(self):
        if self.model.downsample == "maxpool" and self.tasks.image_size < 16:
            raise ValueError(f"model.downsample = maxpool halves the image four times: "
                             f"tasks.image_size must be at least 16, got {self.tasks.image_size}")
        return self


@dataclass
class ImagePools:
    """Per split: uint8 images [classes, images, channels, H, W] and the class names."""

    images: dict[str, torch.Tensor]
    names: dict[str, list[str]]
    summary: dict


def rgb_pools(splits: dict[str, tuple[np.ndarray, list[str]]], summary: dict) -> ImagePools:
    """Channels-last uint8 arrays [C, K, S, S, 3] -> channels-first tensors [C, K, 3, S, S]."""
    return ImagePools({s: torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()
                       for s, (images, _) in splits.items()},
                      {s: names for s, (_, names) in splits.items()}, summary)


def set_aside_feedback(dataset: str, pools: ImagePools, tasks: ImageTasks,
                       generator: torch.Generator) -> ImagePools:
    """Split the test classes at random (seeded) into `feedback_classes` for feedback episodes
    and the rest, held out: the two share no class and no image. Classes that come from one
    source stay together on one side: a D'Claw object's pair, an Omniglot character's four
    rotations (rotations as classes), whose names are listed once per source."""
    test, names = pools.images["test"], pools.names["test"]
    unit = test.shape[0] // len(names) if len(names) < test.shape[0] else (2 if tasks.fixed_pairs else 1)
    wanted = tasks.feedback_classes
    if wanted % unit or not tasks.ways <= wanted <= test.shape[0] - tasks.ways:
        raise ParamError(f"params.yaml: `{dataset}.tasks.feedback_classes` = {wanted}: needs at least "
                         f"`ways` ({tasks.ways}) of the {test.shape[0]} test classes on each side"
                         + (f", in whole groups of {unit} classes of one source" if unit > 1 else ""))
    units = torch.randperm(test.shape[0] // unit, generator=generator)
    sides = {"feedback": units[:wanted // unit].sort().values, "test": units[wanted // unit:].sort().values}
    classes = {side: (u.view(-1, 1) * unit + torch.arange(unit)).flatten() for side, u in sides.items()}
    named = sides if len(names) < test.shape[0] else classes
    return ImagePools({**pools.images, **{side: test[c] for side, c in classes.items()}},
                      {**pools.names, **{side: [names[i] for i in named[side].tolist()] for side in sides}},
                      pools.summary)


def load_episodes(path: Path) -> Episodes:
    return Episodes(**load_fields(path, {f.name: torch.Tensor for f in fields(Episodes)}, "an episodes file"))


def check_episode_fits(dataset: str, tasks: ImageTasks, pools: dict[str, torch.Tensor]) -> None:
    for split, pool in pools.items():
        if pool.shape[0] < tasks.ways:
            raise ParamError(f"params.yaml: `{dataset}.tasks.ways` = {tasks.ways} but the {split} "
                             f"split has only {pool.shape[0]} classes")
        if tasks.shots + tasks.query_shots > pool.shape[1]:
            raise ParamError(f"params.yaml: `{dataset}.tasks.shots` + `query_shots` = "
                             f"{tasks.shots + tasks.query_shots} but each class of the {split} "
                             f"split has {pool.shape[1]} images")


class ImageDataset(Dataset):
    """Episodes built from per-split image pools; subclasses say how to read the pools."""

    Settings = ImageSettings
    colour = "rgb"  # how image files become pixels: rgb | grey_inverted (see imagefiles)

    def input_info(self, settings: ImageSettings, spec: dict) -> dict:
        """Image size, channels, colour handling, and the batch meta-test normalises query
        images in (batch norm uses batch statistics): one episode's query set."""
        tasks = settings.tasks
        return {"image_size": tasks.image_size, "channels": spec["in_channels"], "colour": self.colour,
                "query_batch": tasks.ways * tasks.query_shots}

    def pools(self, settings: ImageSettings, seed: int, source: Path,
              fetch: FetchSettings) -> ImagePools:
        raise NotImplementedError

    def build_episodes(self, settings: ImageSettings, seed: int, source: Path,
                       fetch: FetchSettings, out: Path) -> dict:
        """pool.pt (images, class names, training groups) and the fixed val/feedback/test
        episode indices. The test classes are split into a feedback pool and a held-out pool."""
        tasks = settings.tasks
        pools = self.pools(settings, seed, source, fetch)
        check_episode_fits(self.name, tasks, pools.images)
        pools = set_aside_feedback(self.name, pools, tasks, seeded(seed, f"{self.name}/feedback_classes"))
        per_class = tasks.shots + tasks.query_shots
        paired = tasks.fixed_pairs
        n_train = pools.images["train"].shape[0]
        groups = (class_pairs(n_train) if paired else
                  nme_groups(n_train, tasks.ways, seeded(seed, f"{self.name}/groups")))
        save_atomic({"images": pools.images, "classes": pools.names, "groups": groups}, out / "pool.pt")
        counts = {"val": tasks.val_episodes, "feedback": tasks.feedback_episodes, "test": tasks.test_episodes}
        for split, count in counts.items():
            pool, generator = pools.images[split], seeded(seed, f"{self.name}/{split}")
            episodes = (grouped_episodes(count, class_pairs(pool.shape[0]), per_class, pool.shape[1],
                                         generator) if paired else
                        standard_episodes(count, tasks.ways, per_class, pool.shape[0], pool.shape[1],
                                          generator))
            save_atomic(episodes.as_dict(), out / f"{split}.pt")
        return {**pools.summary, "classes": {s: int(p.shape[0]) for s, p in pools.images.items()},
                "images_per_class": {s: int(p.shape[1]) for s, p in pools.images.items()},
                "episodes": counts}

    def load(self, settings: ImageSettings, folder: Path, device: torch.device) -> TaskData:
        path = folder / "pool.pt"
        pool = load_fields(path, {"images": dict, "classes": dict, "groups": torch.Tensor}, "an image pool")
        splits = ("train", *EPISODE_SPLITS)
        images = {s: v.to(device) for s, v in tensors(path, pool["images"], "images", splits).items()}
        tasks = settings.tasks
        train = ClassificationTaskSource(images["train"], pool["groups"].to(device), tasks.mode,
                                         tasks.ways, tasks.shots, tasks.query_shots,
                                         augment_rotations=getattr(tasks, "rotations", "off") == "augment")
        evaluation = {s: EpisodeSet(images[s], load_episodes(folder / f"{s}.pt").to(device), tasks.shots)
                      for s in EPISODE_SPLITS}
        spec = {"kind": "conv4", "in_channels": images["train"].shape[2],
                "image_size": tasks.image_size, "n_classes": tasks.ways,
                "filters": settings.model.filters, "downsample": settings.model.downsample}
        return TaskData(train, evaluation["val"], evaluation["test"], CLASSIFICATION, spec,
                        evaluation["feedback"])
