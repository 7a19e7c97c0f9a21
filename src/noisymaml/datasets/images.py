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


class ImageTasks(Section):
    """Few-shot classification tasks over a pool of image classes (see core.tasks for the modes)."""

    image_size: int = Field(ge=8)
    mode: Literal["non_exclusive", "intrashuffle", "intershuffle"]
    ways: int = Field(ge=2)
    shots: int = Field(ge=1)
    query_shots: int = Field(ge=1)  # query images per class
    test_episodes: int = Field(ge=1)
    val_episodes: int = Field(ge=1)
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

    def pools(self, settings: ImageSettings, seed: int, source: Path,
              fetch: FetchSettings) -> ImagePools:
        raise NotImplementedError

    def build_episodes(self, settings: ImageSettings, seed: int, source: Path,
                       fetch: FetchSettings, out: Path) -> dict:
        """pool.pt (images, class names, training groups) and the fixed val/test episode indices."""
        pools = self.pools(settings, seed, source, fetch)
        tasks = settings.tasks
        check_episode_fits(self.name, tasks, pools.images)
        per_class = tasks.shots + tasks.query_shots
        paired = tasks.fixed_pairs
        n_train = pools.images["train"].shape[0]
        groups = (class_pairs(n_train) if paired else
                  nme_groups(n_train, tasks.ways, seeded(seed, f"{self.name}/groups")))
        save_atomic({"images": pools.images, "classes": pools.names, "groups": groups}, out / "pool.pt")
        for split, count in (("val", tasks.val_episodes), ("test", tasks.test_episodes)):
            pool, generator = pools.images[split], seeded(seed, f"{self.name}/{split}")
            episodes = (grouped_episodes(count, class_pairs(pool.shape[0]), per_class, pool.shape[1],
                                         generator) if paired else
                        standard_episodes(count, tasks.ways, per_class, pool.shape[0], pool.shape[1],
                                          generator))
            save_atomic(episodes.as_dict(), out / f"{split}.pt")
        return {**pools.summary, "classes": {s: int(p.shape[0]) for s, p in pools.images.items()},
                "images_per_class": {s: int(p.shape[1]) for s, p in pools.images.items()},
                "val_episodes": tasks.val_episodes, "test_episodes": tasks.test_episodes}

    def load(self, settings: ImageSettings, folder: Path, device: torch.device) -> TaskData:
        path = folder / "pool.pt"
        pool = load_fields(path, {"images": dict, "classes": dict, "groups": torch.Tensor}, "an image pool")
        images = {s: v.to(device) for s, v in tensors(path, pool["images"], "images", SPLITS).items()}
        tasks = settings.tasks
        train = ClassificationTaskSource(images["train"], pool["groups"].to(device), tasks.mode,
                                         tasks.ways, tasks.shots, tasks.query_shots,
                                         augment_rotations=getattr(tasks, "rotations", "off") == "augment")
        evaluation = {s: EpisodeSet(images[s], load_episodes(folder / f"{s}.pt").to(device), tasks.shots)
                      for s in ("val", "test")}
        spec = {"kind": "conv4", "in_channels": images["train"].shape[2],
                "image_size": tasks.image_size, "n_classes": tasks.ways,
                "filters": settings.model.filters, "downsample": settings.model.downsample}
        return TaskData(train, evaluation["val"], evaluation["test"], CLASSIFICATION, spec)
