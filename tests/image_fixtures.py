"""Writers of tiny MiniImageNet and D'Claw folders in the real file formats (for the tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from noisymaml.datasets.dclaw import OUTCOMES

CLASSES_PER_SPLIT = {"train": 4, "val": 2, "test": 2}
PICKLE_NAMES = {split: f"mini-imagenet-cache-{name}.pkl"
                for split, name in {"train": "train", "val": "validation", "test": "test"}.items()}
LANCZOS = Image.Resampling.LANCZOS


def smooth_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """n random RGB images [n, size, size, 3], smooth (a bilinear-upsampled 4x4 grid) so JPEG keeps them close."""
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR))
                     for grid in coarse])


def write_miniimagenet(folder: Path, layout: str, classes_per_split: dict[str, int] = CLASSES_PER_SPLIT,
                       per_class: int = 3, size: int = 84, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Write a tiny MiniImageNet in the 'csv' or 'pickle' layout; return split -> class name -> source images.

    csv: JPEG files named like the real ones, rows interleaved across classes (the reader must group
    them by label). pickle: the images of all classes shuffled together, class_dict pointing into them.
    """
    rng = np.random.default_rng(seed)
    source = {
        split: {f"n0{s}{c:06d}": smooth_images(rng, per_class, size) for c in range(classes)}
        for s, (split, classes) in enumerate(classes_per_split.items())
    }
    folder.mkdir(parents=True, exist_ok=True)
    for split, classes in source.items():
        if layout == "csv":
            _write_csv_split(folder, split, classes)
        else:
            _write_pickle_split(folder / PICKLE_NAMES[split], classes, rng)
    return source


def _write_csv_split(folder: Path, split: str, classes: dict[str, np.ndarray]) -> None:
    (folder / "images").mkdir(exist_ok=True)
    rows = ["filename,label"]
    per_class = len(next(iter(classes.values())))
    for k in range(per_class):
        for label, images in classes.items():
            name = f"{label}{k + 1:08d}.jpg"
            Image.fromarray(images[k]).save(folder / "images" / name, quality=95)
            rows.append(f"{name},{label}")
    (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def _write_pickle_split(path: Path, classes: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    flat = np.concatenate(list(classes.values()))
    order = rng.permutation(len(flat))  # image_data[position[i]] = flat[i]
    position = np.argsort(order)
    per_class = len(flat) // len(classes)
    class_dict = {label: [int(position[c * per_class + k]) for k in range(per_class)]
                  for c, label in enumerate(classes)}
    with path.open("wb") as f:
        pickle.dump({"image_data": flat[order], "class_dict": class_dict}, f)


def write_dclaw(folder: Path, objects: tuple[int, ...] = tuple(range(1, 11)), counts: tuple[int, int] = (3, 3),
                size: int = 84) -> None:
    """objN_neg/ and objN_pos/ of constant-colour PNGs whose colour spells (object, outcome, index)."""
    for obj in objects:
        for label, outcome in enumerate(OUTCOMES):
            path = folder / f"obj{obj}_{outcome}"
            path.mkdir(parents=True)
            for k in range(counts[label]):
                image = np.full((size, size, 3), _colour(obj, label, k), dtype=np.uint8)
                Image.fromarray(image).save(path / f"IMG_{k:04d}.png")


def _colour(obj: int, label: int, index: int) -> tuple[int, int, int]:
    return obj * 20, 60 + label * 120, index * 10


def spelled(images: np.ndarray) -> np.ndarray:
    """[..., S, S, 3] -> [..., 3] of (object, label, index), read from the top-left pixel."""
    r, g, b = np.moveaxis(images[..., 0, 0, :].astype(int), -1, 0)
    return np.stack([np.rint(r / 20), np.rint((g - 60) / 120), np.rint(b / 10)], axis=-1).astype(int)


def expected_spelling(objects: list[int], count: int) -> np.ndarray:
    return np.array([[[obj, label, k] for k in range(count)] for obj in objects for label in range(2)])
