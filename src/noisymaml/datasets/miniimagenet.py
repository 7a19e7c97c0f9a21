"""MiniImageNet pools read from a local folder, in any of the three layouts users have.

Every layout gives, per split ('train', 'val', 'test'), uint8 RGB images
[classes, images_per_class, S, S, 3] (channels last, like the Omniglot pools plus a channel axis)
and the class names (WordNet ids) sorted; within a class, images keep their csv-row or index order.

- csv: the Ravi & Larochelle (2017) split files train.csv, val.csv, test.csv (header
  `filename,label`) next to an images/ folder holding the files. Images are converted to RGB and,
  when not already S x S, resized with LANCZOS, as the `proc_images.py` scripts of Finn et al. (2017)
  and Rajendran et al. (2020) do (non-square images are stretched, as there).
- npz: mini-imagenet-{train,validation,test}.npz holding image_data [N, H, W, 3] uint8,
  class_names [C] (unicode) and class_indices [C, K] (indices into image_data), as written by
  `convert_pickles_to_npz`. Read with np.load(allow_pickle=False): safe.
- pickle: the cache files mini-imagenet-cache-{train,validation,test}.pkl, each a dict with
  image_data [N, 84, 84, 3] uint8 and class_dict (class name -> list of indices into image_data).
  Unpickling runs whatever code the file's author chose, so these are read only when the caller
  opts in (`fetch.allow_pickle`).

Every class of a split must hold the same number of images (600 in the real data); a split that
does not is reported rather than silently cut.
"""

from __future__ import annotations

import csv
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from noisymaml.core.progress import Progress
from noisymaml.datasets.base import FINN, RAJENDRAN, FetchSettings, Reported
from noisymaml.datasets.imagefiles import common_count, read_rgb, rgb
from noisymaml.datasets.images import ImageDataset, ImagePools, ImageSettings, rgb_pools
from noisymaml.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
ALLOW_PICKLE_PARAM = "fetch.allow_pickle"

# Checked in this order: the safe .npz wins over the pickles it is usually converted from.
LAYOUTS = {
    "npz": "mini-imagenet-{train,validation,test}.npz with arrays image_data [N,H,W,3] uint8, "
           "class_names [C] and class_indices [C,K] (written by convert_pickles_to_npz)",
    "csv": "train.csv, val.csv, test.csv (header filename,label) with the listed files in images/ "
           "(Ravi & Larochelle 2017)",
    "pickle": "mini-imagenet-cache-{train,validation,test}.pkl, dicts of image_data [N,84,84,3] uint8 "
              f"and class_dict (read only with {ALLOW_PICKLE_PARAM}: true)",
}
# The npz and pickle files spell the validation split out.
_FILE_SPLIT = {"train": "train", "val": "validation", "test": "test"}
_NPZ_KEYS = ("image_data", "class_names", "class_indices")
_PARTIAL_SUFFIX = ".part"
# What a corrupt or foreign .npz can raise from np.load (object arrays raise ValueError).
_NPZ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile)


def detect_layout(folder: Path) -> str:
    """Return 'npz', 'csv' or 'pickle': the first layout (in that order) with a split file in `folder`.

    A missing split file of the detected layout is reported when that split is read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MiniImageNet folder {folder} does not exist; expected a folder with {_layouts_help()}")
    for layout in LAYOUTS:
        if any(_layout_file(folder, layout, split).is_file() for split in SPLITS):
            return layout
    raise DataError(f"no MiniImageNet data in {folder}: expected {_layouts_help()}")


def load_split(folder: Path, split: str, allow_pickle: bool = False,
               image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """Images uint8 [classes, images_per_class, image_size, image_size, 3] and sorted class names of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(folder)
    layout = detect_layout(folder)
    path = _layout_file(folder, layout, split)
    if layout == "csv":
        return _load_csv(path, image_size)
    if layout == "npz":
        return _load_npz(path, image_size)
    if not allow_pickle:
        raise _pickle_refused(folder)
    return _grouped(*_read_pickle(path), image_size)


def verify(folder: Path, allow_pickle: bool = False) -> str:
    """The layout of `folder`, once every split file of it is there (csv: and every image it
    lists), without decoding any image. Pickles are refused unless `allow_pickle`."""
    folder = Path(folder)
    layout = detect_layout(folder)
    if layout == "pickle" and not allow_pickle:
        raise _pickle_refused(folder)
    for split in SPLITS:
        path = _layout_file(folder, layout, split)
        if layout == "csv":
            _csv_classes(path)
        elif not path.is_file():
            raise _missing(path, layout)
    return layout


def _pickle_refused(folder: Path) -> DataError:
    return DataError(
        f"{folder} holds MiniImageNet pickles (mini-imagenet-cache-*.pkl) and no safe layout; they are "
        f"refused because unpickling runs whatever code the file's author put in it. If you trust "
        f"the files, set {ALLOW_PICKLE_PARAM}: true, or better convert them once to the safe .npz "
        "layout: python -c \"from noisymaml.datasets.miniimagenet import convert_pickles_to_npz; "
        f"convert_pickles_to_npz('{folder}')\""
    )


def load_splits(folder: Path, allow_pickle: bool = False,
                image_size: int = IMAGE_SIZE) -> dict[str, tuple[np.ndarray, list[str]]]:
    """`load_split` for 'train', 'val' and 'test'."""
    return {split: load_split(folder, split, allow_pickle, image_size) for split in SPLITS}


def convert_pickles_to_npz(folder: Path) -> list[Path]:
    """Rewrite the three pickle caches of `folder` as mini-imagenet-{train,validation,test}.npz.

    Calling this is the opt-in: it unpickles the caches once, so run it only on files you trust;
    afterwards the folder loads without `allow_pickle`. All or nothing: the .npz files appear only
    once every split converted, so a failure leaves no partial layout behind. Returns their paths.
    """
    folder = Path(folder)
    targets = [_layout_file(folder, "npz", split) for split in SPLITS]
    partials = [target.with_name(target.name + _PARTIAL_SUFFIX) for target in targets]
    try:
        for split, partial in zip(SPLITS, partials):
            _write_npz(partial, *_read_pickle(_layout_file(folder, "pickle", split)))
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    for partial, target in zip(partials, targets):
        partial.replace(target)
    return targets


def _layouts_help() -> str:
    return "one of the layouts " + "; ".join(f"({name}) {text}" for name, text in LAYOUTS.items())


def _layout_file(folder: Path, layout: str, split: str) -> Path:
    if layout == "csv":
        return folder / f"{split}.csv"
    template = "mini-imagenet-{}.npz" if layout == "npz" else "mini-imagenet-cache-{}.pkl"
    return folder / template.format(_FILE_SPLIT[split])


def _missing(path: Path, layout: str) -> DataError:
    return DataError(f"{path} is missing; the {layout} layout needs {LAYOUTS[layout]}")


def _load_csv(path: Path, image_size: int) -> tuple[np.ndarray, list[str]]:
    files = _csv_classes(path)
    names = list(files)
    images = np.empty((len(names), len(files[names[0]]), image_size, image_size, 3), dtype=np.uint8)
    progress = Progress(f"[miniimagenet] decoding {path.name}", len(names), "classes")
    for c, label in enumerate(names):
        for k, image in enumerate(files[label]):
            images[c, k] = read_rgb(image, image_size)
        progress(c + 1)
    return images, names


def _csv_classes(path: Path) -> dict[str, list[Path]]:
    """Sorted labels of a split file -> their image paths, once all classes are equally large
    and every listed file exists."""
    files = _read_csv(path)
    names = sorted(files)
    common_count({name: len(files[name]) for name in names}, f"in {path} (MiniImageNet: 600 each)")
    images_dir = path.parent / "images"
    absent = [name for label in names for name in files[label] if not (images_dir / name).is_file()]
    if absent:
        raise DataError(
            f"{len(absent)} image(s) listed in {path} are not in {images_dir}, e.g. {absent[:3]}; "
            f"the csv layout needs {LAYOUTS['csv']}"
        )
    return {label: [images_dir / name for name in files[label]] for label in names}


def _read_csv(path: Path) -> dict[str, list[str]]:
    """Map each label of a split file to its image file names, in row order."""
    if not path.is_file():
        raise _missing(path, "csv")
    expected = "expected a header filename,label and rows such as n0153282900000005.jpg,n01532829"
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [[cell.strip() for cell in row] for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path} ({error}); {expected}") from error
    if not rows or rows[0] != ["filename", "label"]:
        raise DataError(f"{path} does not start with the header filename,label; {expected}")
    files: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        # A plain file name: the csv must not reach outside images/.
        if len(row) != 2 or not all(row) or Path(row[0]).name != row[0]:
            raise DataError(f"{path} line {line} is {','.join(row)!r}; {expected}")
        files.setdefault(row[1], []).append(row[0])
    if not files:
        raise DataError(f"{path} lists no images; {expected}")
    return files


def _read_pickle(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Unpickle one cache file (callers have checked the opt-in) and validate it."""
    if not path.is_file():
        raise _missing(path, "pickle")
    try:
        with path.open("rb") as f:
            # latin1 also reads the Python 2 pickles some copies of the caches are.
            cache = pickle.load(f, encoding="latin1")
    except Exception as error:  # unpickling can raise anything the pickled objects raise
        raise DataError(f"cannot unpickle {path} ({error!r}); expected {LAYOUTS['pickle']}") from error
    if not isinstance(cache, dict) or not {"image_data", "class_dict"} <= cache.keys():
        raise DataError(f"{path} is not a dict with keys image_data and class_dict; expected {LAYOUTS['pickle']}")
    class_dict = cache["class_dict"]
    if (not isinstance(class_dict, dict) or not class_dict
            or not all(isinstance(value, (list, tuple, np.ndarray)) for value in class_dict.values())):
        raise DataError(f"class_dict in {path} is not a non-empty dict of index lists; expected {LAYOUTS['pickle']}")
    names = list(class_dict)
    common_count({str(name): len(class_dict[name]) for name in names}, f"in {path} (MiniImageNet: 600 each)")
    indices = np.asarray([list(class_dict[name]) for name in names])
    return _checked_pool(cache["image_data"], names, indices, path)


def _load_npz(path: Path, image_size: int) -> tuple[np.ndarray, list[str]]:
    if not path.is_file():
        raise _missing(path, "npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            absent = [key for key in _NPZ_KEYS if key not in data.files]
            arrays = {key: data[key] for key in _NPZ_KEYS if key in data.files}
    except _NPZ_ERRORS as error:
        raise DataError(f"cannot read {path} ({error}); expected {LAYOUTS['npz']}") from error
    if absent:
        raise DataError(f"{path} lacks the arrays {absent}; expected {LAYOUTS['npz']}")
    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise DataError(f"class_names in {path} is not a 1-D array of strings; expected {LAYOUTS['npz']}")
    return _grouped(*_checked_pool(arrays["image_data"], names.tolist(), arrays["class_indices"], path), image_size)


def _checked_pool(image_data: object, names: list, indices: np.ndarray,
                  source: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Validate images [N, H, W, 3] and per-class index rows [C, K]; return them with the classes sorted."""
    if not (isinstance(image_data, np.ndarray) and image_data.dtype == np.uint8
            and image_data.ndim == 4 and image_data.shape[-1] == 3):
        raise DataError(f"image_data in {source} is not a uint8 array [N, H, W, 3]")
    if not names or not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise DataError(f"the class names in {source} are not one or more distinct strings")
    if (indices.dtype.kind not in "iu" or indices.ndim != 2 or len(indices) != len(names)
            or indices.shape[1] == 0):
        raise DataError(f"the class indices in {source} are not one row of integer indices per class")
    if indices.min() < 0 or indices.max() >= len(image_data):
        raise DataError(f"the class indices in {source} point outside image_data (0..{len(image_data) - 1})")
    order = sorted(range(len(names)), key=names.__getitem__)
    return image_data, [names[i] for i in order], indices[order].astype(np.int64)


def _grouped(image_data: np.ndarray, names: list[str], indices: np.ndarray,
             image_size: int) -> tuple[np.ndarray, list[str]]:
    images = image_data[indices]
    if images.shape[2:4] != (image_size, image_size):
        flat = images.reshape(-1, *images.shape[2:])
        resized = np.stack([rgb(Image.fromarray(image), image_size) for image in flat])
        images = resized.reshape(*indices.shape, image_size, image_size, 3)
    return images, names


def _write_npz(path: Path, image_data: np.ndarray, names: list[str], indices: np.ndarray) -> None:
    try:
        # Through a file object: np.savez would append .npz to a path not ending in it.
        with path.open("wb") as f:
            np.savez(f, image_data=image_data, class_names=np.asarray(names, dtype=str), class_indices=indices)
    except OSError as error:
        raise DataError(f"cannot write {path} ({error})") from error


# --- the dataset ------------------------------------------------------------------------------

class MiniImageNet(ImageDataset):
    """The fixed 64/16/20-class split of Ravi & Larochelle (2017), Finn et al. 2017's protocol."""

    name = "miniimagenet"
    paper_iterations = 60_000  # Finn et al. 2017
    reported = (
        Reported("NME, 5-way 1-shot", "MAML", "30.2%", RAJENDRAN),
        Reported("intrashuffle, 5-way 1-shot", "MAML", "42.7%", RAJENDRAN),
        Reported("intershuffle, 5-way 1-shot", "MAML", "46%", RAJENDRAN),
        Reported("standard (mutually exclusive), 5-way 1-shot", "MAML", "48.70 ± 1.84%", FINN),
    )

    def fetch(self, folder: Path, fetch: FetchSettings) -> str:
        return f"{verify(folder, fetch.allow_pickle)} layout"

    def pools(self, settings: ImageSettings, seed: int, source: Path,
              fetch: FetchSettings) -> ImagePools:
        splits = load_splits(source, fetch.allow_pickle, settings.tasks.image_size)
        return rgb_pools(splits, {"layout": detect_layout(source)})


DATASET = MiniImageNet()
