"""Datasets as the pipeline sees them: building the fixed episode files, and loading them back.

`build_episodes` (episodes stage) writes everything that later stages read into one folder;
`load_task_data` turns that folder plus params into a training task source, validation and
test episode sets, the objective and the model spec.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noisymaml import omniglot
from noisymaml.errors import DataError, ParamError
from noisymaml.maml import CLASSIFICATION, REGRESSION, Objective
from noisymaml.params import OmniglotParams, Section, SinusoidParams, SplitParams
from noisymaml.sinusoid import SinusoidNME
from noisymaml.tasks import (ClassificationTaskSource, EpisodeSet, Episodes, TaskBatch,
                             TaskSource, nme_groups, standard_episodes)


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


# --- omniglot -----------------------------------------------------------------------------

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


def check_episode_fits(params: OmniglotParams, classes: dict[str, int], drawers: int) -> None:
    tasks = params.tasks
    for split, n in classes.items():
        if n < tasks.ways:
            raise ParamError(f"params.yaml: `omniglot.tasks.ways` = {tasks.ways} but the {split} "
                             f"split has only {n} classes; lower ways or change omniglot.tasks.split")
    if tasks.shots + tasks.query_shots > drawers:
        raise ParamError(f"params.yaml: `omniglot.tasks.shots` + `query_shots` = "
                         f"{tasks.shots + tasks.query_shots} but each character has {drawers} images")


def build_omniglot(params: OmniglotParams, seed: int, out: Path) -> dict:
    archives = omniglot.fetch_archives(Path(params.fetch.folder), download=False)
    images, names = omniglot.load_characters(archives, params.tasks.image_size)
    counts = split_counts(params.tasks.split, len(names))
    order = torch.randperm(len(names), generator=seeded(seed, "omniglot/characters")).numpy()
    bounds = np.cumsum((0, *counts))
    split_index = {s: order[bounds[i]:bounds[i + 1]] for i, s in enumerate(("train", "val", "test"))}
    pools = {s: torch.from_numpy(expand_rotations(images[idx], params.tasks.rotations))
             for s, idx in split_index.items()}
    check_episode_fits(params, {s: p.shape[0] for s, p in pools.items()}, images.shape[1])
    tasks = params.tasks
    per_class = tasks.shots + tasks.query_shots
    torch.save({
        "images": pools,
        "characters": {s: [names[i] for i in idx] for s, idx in split_index.items()},
        "groups": nme_groups(pools["train"].shape[0], tasks.ways, seeded(seed, "omniglot/groups")),
    }, out / "pool.pt")
    for split, count in (("val", tasks.val_episodes), ("test", tasks.test_episodes)):
        episodes = standard_episodes(count, tasks.ways, per_class, pools[split].shape[0],
                                     images.shape[1], seeded(seed, f"omniglot/{split}"))
        torch.save(episodes.as_dict(), out / f"{split}.pt")
    return {"archives": [a.name for a in archives],
            "characters": {s: len(idx) for s, idx in split_index.items()},
            "classes": {s: int(p.shape[0]) for s, p in pools.items()},
            "val_episodes": tasks.val_episodes, "test_episodes": tasks.test_episodes}


def load_omniglot(params: OmniglotParams, folder: Path, device: torch.device) -> TaskData:
    pool = load_file(folder / "pool.pt")
    images = {s: v.to(device) for s, v in pool["images"].items()}
    tasks = params.tasks
    train = ClassificationTaskSource(images["train"], pool["groups"].to(device), tasks.mode,
                                     tasks.ways, tasks.shots, tasks.query_shots,
                                     augment_rotations=params.tasks.rotations == "augment")
    evaluation = {s: EpisodeSet(images[s], Episodes(**load_file(folder / f"{s}.pt")).to(device),
                                tasks.shots) for s in ("val", "test")}
    spec = {"kind": "conv4", "in_channels": 1, "image_size": params.tasks.image_size,
            "n_classes": tasks.ways, "filters": params.model.filters,
            "downsample": params.model.downsample}
    return TaskData(train, evaluation["val"], evaluation["test"], CLASSIFICATION, spec)


BUILDERS = {"sinusoid": (build_sinusoid, load_sinusoid), "omniglot": (build_omniglot, load_omniglot)}


def build_episodes(name: str, params: Section, seed: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return BUILDERS[name][0](params, seed, out)


def load_task_data(name: str, params: Section, folder: Path, device: torch.device) -> TaskData:
    return BUILDERS[name][1](params, folder, device)
