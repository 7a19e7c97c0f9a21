"""Datasets as the pipeline sees them: checking their files, building the fixed episode files,
and loading them back.

Every dataset reads its files from its own folder (data/downloads/<dataset>/ in the pipeline,
checked by sources.fetch); `build_episodes` (episodes stage) decodes them and writes everything
that later stages read into one folder;
`load_task_data` turns that folder plus params into a training task source, validation and
test episode sets, the objective and the model spec.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noisymaml import dclaw, miniimagenet, omniglot
from noisymaml.errors import DataError, ParamError
from noisymaml.maml import CLASSIFICATION, REGRESSION, Objective
from noisymaml.params import (DClawParams, FetchParams, ImageParams, ImageTasks, OmniglotParams,
                              Section, SinusoidParams, SplitParams)
from noisymaml.sinusoid import SinusoidNME
from noisymaml.tasks import (ClassificationTaskSource, EpisodeSet, Episodes, TaskBatch, TaskSource,
                             class_pairs, grouped_episodes, nme_groups, standard_episodes)


@dataclass
class TaskData:
    train: TaskSource
    val: object  # an evaluation set: __len__ and slice(start, stop) -> TaskBatch
    test: object
    objective: Objective
    model_spec: dict


def seeded(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends on the seed and on what it is for."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(purpose.encode()))


def load_file(path: Path) -> dict:
    """torch.load restricted to tensors and plain data: a file that carries code is refused."""
    if not path.exists():
        raise DataError(f"{path}: file not found; run the stage that makes it (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise DataError(f"{path}: not a plain tensor file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0]}); refusing to load it") from None


# --- sinusoid -----------------------------------------------------------------------------

def build_sinusoid(params: SinusoidParams, seed: int, out: Path) -> dict:
    problem = SinusoidNME(params.tasks)
    for split, count in (("val", params.tasks.val_episodes), ("test", params.tasks.test_episodes)):
        tasks = problem.test_tasks(count, seeded(seed, f"sinusoid/{split}"))
        torch.save(tasks.as_dict(), out / f"{split}.pt")
    return {"val_episodes": params.tasks.val_episodes, "test_episodes": params.tasks.test_episodes}


def load_sinusoid(params: SinusoidParams, folder: Path, device: torch.device) -> TaskData:
    problem = SinusoidNME(params.tasks)
    splits = {s: TaskBatch(**load_file(folder / f"{s}.pt")).to(device) for s in ("val", "test")}
    spec = {"kind": "mlp", "in_features": problem.input_size, "hidden": list(params.model.hidden),
            "out_features": 1}
    return TaskData(problem, splits["val"], splits["test"], REGRESSION, spec)


# --- image datasets -----------------------------------------------------------------------

def split_counts(split: SplitParams, total: int) -> tuple[int, int, int]:
    """Character counts for train/val/test from counts or fractions of `total`."""
    values = (split.train, split.val, split.test)
    counts = tuple(int(v * total) if v < 1 else int(v) for v in values)
    if sum(counts) > total:
        raise ParamError(f"params.yaml: `omniglot.tasks.split` asks for {sum(counts)} characters "
                         f"({counts[0]} + {counts[1]} + {counts[2]}), but the archives hold {total}")
    return counts


def expand_rotations(images: np.ndarray, rotations: str) -> np.ndarray:
    """With rotations as classes, every character turned by 0/90/180/270 degrees is its own class."""
    if rotations != "classes":
        return images
    turned = [np.rot90(images, k, axes=(-2, -1)) for k in range(4)]
    return np.ascontiguousarray(np.stack(turned, axis=1).reshape(-1, *images.shape[1:]))


def check_episode_fits(dataset: str, tasks: ImageTasks, pools: dict[str, torch.Tensor]) -> None:
    for split, pool in pools.items():
        if pool.shape[0] < tasks.ways:
            raise ParamError(f"params.yaml: `{dataset}.tasks.ways` = {tasks.ways} but the {split} "
                             f"split has only {pool.shape[0]} classes")
        if tasks.shots + tasks.query_shots > pool.shape[1]:
            raise ParamError(f"params.yaml: `{dataset}.tasks.shots` + `query_shots` = "
                             f"{tasks.shots + tasks.query_shots} but each class of the {split} "
                             f"split has {pool.shape[1]} images")


@dataclass
class ImagePools:
    """Per split: uint8 images [classes, images, channels, H, W] and the class names."""

    images: dict[str, torch.Tensor]
    names: dict[str, list[str]]
    summary: dict


def omniglot_pools(params: OmniglotParams, seed: int, source: Path, fetch: FetchParams) -> ImagePools:
    """Characters of the archives, split at random (seeded) into train/val/test characters."""
    archives = omniglot.fetch_archives(source, download=False)
    images, names = omniglot.load_characters(archives, params.tasks.image_size)
    counts = split_counts(params.tasks.split, len(names))
    order = torch.randperm(len(names), generator=seeded(seed, "omniglot/characters")).numpy()
    bounds = np.cumsum((0, *counts))
    index = {s: order[bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}
    pools = {s: torch.from_numpy(expand_rotations(images[i], params.tasks.rotations)).unsqueeze(2)
             for s, i in index.items()}
    return ImagePools(pools, {s: [names[j] for j in i] for s, i in index.items()},
                      {"archives": [a.name for a in archives],
                       "characters": {s: len(i) for s, i in index.items()}})


def miniimagenet_pools(params: ImageParams, seed: int, source: Path, fetch: FetchParams) -> ImagePools:
    """The fixed 64/16/20-class split of Ravi & Larochelle, from any layout of miniimagenet.py."""
    splits = miniimagenet.load_splits(source, fetch.allow_pickle, params.tasks.image_size)
    return _rgb_pools(splits, {"layout": miniimagenet.detect_layout(source)})


def dclaw_pools(params: DClawParams, seed: int, source: Path, fetch: FetchParams) -> ImagePools:
    """The objects of `dclaw.tasks.split`; classes 2i, 2i+1 are object i's neg and pos."""
    splits = dclaw.load_splits(source, params.tasks.split, params.tasks.image_size)
    return _rgb_pools(splits, {"objects": dclaw.split_objects(params.tasks.split)})


def _rgb_pools(splits: dict[str, tuple[np.ndarray, list[str]]], summary: dict) -> ImagePools:
    """Channels-last uint8 arrays [C, K, S, S, 3] -> channels-first tensors [C, K, 3, S, S]."""
    return ImagePools({s: torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()
                       for s, (images, _) in splits.items()},
                      {s: names for s, (_, names) in splits.items()}, summary)


def build_images(dataset: str, params: ImageParams, seed: int, source: Path, fetch: FetchParams,
                 out: Path) -> dict:
    """pool.pt (images, class names, training groups) and the fixed val/test episode indices."""
    pools = IMAGE_POOLS[dataset](params, seed, source, fetch)
    tasks = params.tasks
    check_episode_fits(dataset, tasks, pools.images)
    per_class = tasks.shots + tasks.query_shots
    paired = tasks.fixed_pairs
    groups = (class_pairs(pools.images["train"].shape[0]) if paired else
              nme_groups(pools.images["train"].shape[0], tasks.ways, seeded(seed, f"{dataset}/groups")))
    torch.save({"images": pools.images, "classes": pools.names, "groups": groups}, out / "pool.pt")
    for split, count in (("val", tasks.val_episodes), ("test", tasks.test_episodes)):
        pool, generator = pools.images[split], seeded(seed, f"{dataset}/{split}")
        episodes = (grouped_episodes(count, class_pairs(pool.shape[0]), per_class, pool.shape[1], generator)
                    if paired else
                    standard_episodes(count, tasks.ways, per_class, pool.shape[0], pool.shape[1], generator))
        torch.save(episodes.as_dict(), out / f"{split}.pt")
    return {**pools.summary, "classes": {s: int(p.shape[0]) for s, p in pools.images.items()},
            "images_per_class": {s: int(p.shape[1]) for s, p in pools.images.items()},
            "val_episodes": tasks.val_episodes, "test_episodes": tasks.test_episodes}


def load_images(params: ImageParams, folder: Path, device: torch.device) -> TaskData:
    pool = load_file(folder / "pool.pt")
    images = {s: v.to(device) for s, v in pool["images"].items()}
    tasks = params.tasks
    rotations = getattr(tasks, "rotations", "off")
    train = ClassificationTaskSource(images["train"], pool["groups"].to(device), tasks.mode,
                                     tasks.ways, tasks.shots, tasks.query_shots,
                                     augment_rotations=rotations == "augment")
    evaluation = {s: EpisodeSet(images[s], Episodes(**load_file(folder / f"{s}.pt")).to(device),
                                tasks.shots) for s in ("val", "test")}
    spec = {"kind": "conv4", "in_channels": images["train"].shape[2], "image_size": tasks.image_size,
            "n_classes": tasks.ways, "filters": params.model.filters,
            "downsample": params.model.downsample}
    return TaskData(train, evaluation["val"], evaluation["test"], CLASSIFICATION, spec)


IMAGE_POOLS = {"omniglot": omniglot_pools, "miniimagenet": miniimagenet_pools, "dclaw": dclaw_pools}
SPLITS = ("train", "val", "test")


def build_episodes(name: str, params: Section, seed: int, source: Path, fetch_params: FetchParams,
                   out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if name == "sinusoid":
        return build_sinusoid(params, seed, out)
    return build_images(name, params, seed, source, fetch_params, out)


def load_task_data(name: str, params: Section, folder: Path, device: torch.device) -> TaskData:
    loader = load_sinusoid if name == "sinusoid" else load_images
    return loader(params, folder, device)
