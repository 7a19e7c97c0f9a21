"""D'Claw (Rajendran et al. 2020, "Meta-Learning Requires Meta-Augmentation"): one 2-way task per object.

The data holds, for each object N (1..10), the folders objN_pos and objN_neg of images (PNG or JPEG),
read here as uint8 RGB [S, S, 3] (LANCZOS-resized when not S x S, as the authors' proc_images.py).
Each object is one fixed 2-way task with the label order of `OUTCOMES`: class 0 = neg, class 1 = pos,
the order the authors' data_generator.py gets from the sorted folder names (objN_neg < objN_pos).

Two folder layouts are read:
- flat: FOLDER/objN_pos and FOLDER/objN_neg for every object; the split picks the objects.
- split folders, as published in google-research/google-research, meta_augmentation/
  classification_and_sinusoidal_regression/data/dclaw: FOLDER/{train,val,test}K/objN_{pos,neg}
  for split K; each split folder is read as it is, and must hold exactly the objects of `OFFICIAL_SPLITS`.

The three object splits (`dclaw_split` 1, 2, 3) are the authors' own: they are the object folders
found in that repository's train1/val1/test1, train2/val2/test2 and train3/val3/test3.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from noisymaml.datasets.base import RAJENDRAN, FetchSettings, Reported
from noisymaml.datasets.imagefiles import read_rgb
from noisymaml.datasets.images import ImageDataset, ImagePools, ImageSettings, ImageTasks, rgb_pools
from noisymaml.errors import DataError

IMAGE_SIZE = 84
OUTCOMES = ("neg", "pos")
SPLIT_NAMES = ("train", "val", "test")
OFFICIAL_SPLITS: dict[int, dict[str, tuple[int, ...]]] = {
    1: {"train": (1, 2, 3, 6, 7, 8), "val": (4, 9), "test": (5, 10)},
    2: {"train": (1, 2, 5, 6, 7, 10), "val": (3, 8), "test": (4, 9)},
    3: {"train": (2, 4, 5, 7, 9, 10), "val": (1, 6), "test": (3, 8)},
}

_OBJECT_DIR = re.compile(r"obj([1-9][0-9]*)_(pos|neg)")
_SPLIT_DIR = re.compile(r"(train|val|test)[0-9]+")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_LAYOUT = ("FOLDER/objN_pos/ and FOLDER/objN_neg/ of PNG or JPEG images for every object N, or the "
           "published split folders FOLDER/{train,val,test}K/objN_{pos,neg}/")


def split_objects(split: int) -> dict[str, list[int]]:
    """The object ids of 'train', 'val' and 'test' in D'Claw split 1, 2 or 3."""
    if split not in OFFICIAL_SPLITS:
        raise ValueError(f"D'Claw split must be one of {sorted(OFFICIAL_SPLITS)}, got {split!r}")
    return {name: list(objects) for name, objects in OFFICIAL_SPLITS[split].items()}


def load_objects(folder: Path, image_size: int = IMAGE_SIZE) -> dict[int, np.ndarray]:
    """Map each object id found in `folder` (flat layout) to uint8 [2, n, S, S, 3], in `OUTCOMES` order.

    n is the smaller of the object's neg and pos image counts; the first n files by name are kept.
    """
    pairs = _object_pairs(Path(folder))
    return {obj: _read_object(pairs[obj], image_size) for obj in sorted(pairs)}


def objects_in(folder: Path) -> list[int]:
    """The object ids `folder` holds (flat or in split folders), each with both outcomes."""
    folder = Path(folder)
    if _has_split_folders(folder):
        parts = [p for p in folder.iterdir() if _SPLIT_DIR.fullmatch(p.name) and p.is_dir()]
        return sorted({obj for part in parts for obj in _object_pairs(part)})
    return sorted(_object_pairs(folder))


def load_splits(folder: Path, split: int,
                image_size: int = IMAGE_SIZE) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per split name, uint8 images [2 * objects, n, S, S, 3] and names ["obj1_neg", "obj1_pos", ...].

    Classes 2i and 2i+1 are the neg and pos of the split's i-th object (objects ascending), so
    consecutive pairs are the fixed 2-way tasks. n is the smallest image count of any class in that
    split; each class keeps its first n files by name.
    """
    folder = Path(folder)
    wanted = split_objects(split)
    if _has_split_folders(folder):
        return {name: _pool(_read_split_folder(folder / f"{name}{split}", objects, image_size))
                for name, objects in wanted.items()}
    pairs = _object_pairs(folder)
    for name, objects in wanted.items():
        absent = [obj for obj in objects if obj not in pairs]
        if absent:
            raise DataError(
                f"D'Claw split {split} puts objects {objects} in {name}, but {folder} has no "
                f"{', '.join(f'obj{obj}_pos/obj{obj}_neg' for obj in absent)}; expected {_LAYOUT}"
            )
    return {name: _pool({obj: _read_object(pairs[obj], image_size) for obj in objects})
            for name, objects in wanted.items()}


def _has_split_folders(folder: Path) -> bool:
    return folder.is_dir() and any(_SPLIT_DIR.fullmatch(p.name) and p.is_dir() for p in folder.iterdir())


def _read_split_folder(folder: Path, objects: list[int], image_size: int) -> dict[int, np.ndarray]:
    pairs = _object_pairs(folder)
    if sorted(pairs) != objects:
        raise DataError(
            f"{folder} holds objects {sorted(pairs)}, but the published D'Claw split puts objects "
            f"{objects} there; expected {_LAYOUT}"
        )
    return {obj: _read_object(pairs[obj], image_size) for obj in objects}


def _object_pairs(folder: Path) -> dict[int, tuple[Path, Path]]:
    """Map each object id to its (neg, pos) folders; every object needs both."""
    if not folder.is_dir():
        raise DataError(f"D'Claw folder {folder} does not exist; expected {_LAYOUT}")
    found: dict[int, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = _OBJECT_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.setdefault(int(match[1]), {})[match[2]] = path
    if not found:
        raise DataError(f"no D'Claw object folders (objN_pos, objN_neg) in {folder}; expected {_LAYOUT}")
    for obj, outcomes in sorted(found.items()):
        for outcome in OUTCOMES:
            if outcome not in outcomes:
                raise DataError(
                    f"{folder} has obj{obj}_{next(iter(outcomes))} but no obj{obj}_{outcome}: "
                    f"every object needs both; expected {_LAYOUT}"
                )
    return {obj: (outcomes["neg"], outcomes["pos"]) for obj, outcomes in found.items()}


def _read_object(folders: tuple[Path, Path], image_size: int) -> np.ndarray:
    files = [_image_files(folder) for folder in folders]
    count = min(len(names) for names in files)
    return np.stack([np.stack([read_rgb(path, image_size) for path in names[:count]]) for names in files])


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder} holds no PNG or JPEG image; expected {_LAYOUT}")
    return files


def _pool(objects: dict[int, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    count = min(images.shape[1] for images in objects.values())
    images = np.concatenate([objects[obj][:, :count] for obj in sorted(objects)])
    names = [f"obj{obj}_{outcome}" for obj in sorted(objects) for outcome in OUTCOMES]
    return images, names


# --- the dataset ------------------------------------------------------------------------------

class DClawTasks(ImageTasks):
    """D'Claw: every object's neg/pos pair is one fixed 2-way task; `split` picks the objects."""

    split: Literal[1, 2, 3]
    ways: Literal[2] = 2
    fixed_pairs: ClassVar[bool] = True


class DClawSettings(ImageSettings):
    tasks: DClawTasks


class DClaw(ImageDataset):
    name = "dclaw"
    Settings = DClawSettings
    reported = (
        Reported("NME, 2-way 1-shot", "MAML", "72.5%", RAJENDRAN),
        Reported("intrashuffle, 2-way 1-shot", "MAML", "79.8%", RAJENDRAN),
        Reported("intershuffle, 2-way 1-shot", "MAML", "83.1%", RAJENDRAN),
    )

    def fetch(self, folder: Path, fetch: FetchSettings) -> str:
        return f"objects {objects_in(folder)}"

    def pools(self, settings: DClawSettings, seed: int, source: Path,
              fetch: FetchSettings) -> ImagePools:
        """The objects of `dclaw.tasks.split`; classes 2i, 2i+1 are object i's neg and pos."""
        splits = load_splits(source, settings.tasks.split, settings.tasks.image_size)
        return rgb_pools(splits, {"objects": split_objects(settings.tasks.split)})


DATASET = DClaw()
