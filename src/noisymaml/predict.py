"""Classify image folders with a meta-trained model: adapt to a labelled support set, then predict.

The steps of `noisymaml predict`, as small functions usable from notebooks and tests:

    classifier = load_classifier(model_file, device)
    support = load_support(support_dir, classifier)            # x, y and the class names
    items = find_query(query_dir, support.classes)             # files (+ labels from class folders)
    query = load_query(items, classifier, device)             # unreadable files are skipped
    params = adapt_to_support(classifier, support, steps, inner_lr)  # None: the model's own
    probs = predict_probs(classifier, params, query.x)
    rows = prediction_rows(query.items, probs, support.classes)

`predict_folders` runs all of them; `write_predictions` writes the CSV.

Everything meta-test did is read from the model file, so predict adapts exactly as the
evaluate stage: the method (MR-MAML(W) adapts from the posterior mean and only its
deterministic layers), the inner loop (steps, learning rate; the command line may override),
and the inputs: images are converted as the dataset's training images (`datasets.imagefiles`):
Omniglot grey ("L"), LANCZOS-resized, inverted (strokes bright); MiniImageNet and D'Claw RGB,
LANCZOS-resized. Only two things happen before that, both no-ops for training files: an EXIF
orientation tag is applied, and a transparent background is laid on white paper.

The Conv-4 normalises with batch statistics (as MAML does), so a prediction depends on the
other images of its batch: query images go through in batches of the size evaluation used
(one episode's query set, ways x query shots), in sorted order, so a prediction does not
depend on how many files the folder holds.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from noisymaml.core import Params
from noisymaml.core.files import atomic_open, check_archive, load_file
from noisymaml.core.maml import CLASSIFICATION, InnerLoop, adapt, make_forward
from noisymaml.core.models import MAX_MODEL_BYTES, rebuild_model
from noisymaml.datasets.imagefiles import grey, rgb
from noisymaml.errors import DataError, NoisyMamlError
from noisymaml.methods import MAML, METHODS

CSV_COLUMNS = ("file", "predicted_class", "probability")


class ImageError(NoisyMamlError):
    """One image file cannot be read (corrupt, not an image, too large); the message names it."""


def image_suffixes() -> frozenset[str]:
    """File name endings of the formats PIL can open here (.png, .jpg, ...), lower case."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


# --- the model ------------------------------------------------------------------------------

@dataclass
class Classifier:
    """A meta-trained Conv-4 image classifier, its meta-parameters and how meta-test used it."""

    model: torch.nn.Module
    params: Params
    spec: dict
    path: Path
    method: MAML  # the trained method's hooks (which layers adapt, which weights to adapt from)
    inner: InnerLoop | None  # meta-test's inner loop, None when the file does not say
    colour: str  # grey_inverted | rgb
    query_batch: int  # query images normalised together, as in one evaluation episode

    @property
    def image_size(self) -> int:
        return image_spec(self.spec)["image_size"]

    @property
    def n_classes(self) -> int:
        return image_spec(self.spec)["n_classes"]


def image_spec(spec: dict) -> dict:
    """The image network's spec, also when a method put an encoder in front (MR-MAML(W))."""
    return spec["base"] if spec.get("kind") == "encoded" and isinstance(spec.get("base"), dict) else spec


def load_classifier(path: Path, device: torch.device | str = "cpu") -> Classifier:
    """Load a model file written by the train stage; refuse anything but a Conv-4 image classifier.

    Raises DataError for a missing file, a file that is not a noisymaml model (files that
    would run code when unpickled are refused unread), or a model of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file {path} not found" if not path.exists()
                        else f"model file {path} is not a file")
    saved = _load_plain(path)
    _check_spec(path, saved)  # before the network is built from the spec
    model, params, spec = rebuild_model(path, saved, device)
    info = saved.get("info") or {}
    return Classifier(model, {name: p.float() for name, p in params.items()}, spec, path,
                      _method(path, info), _inner(info),
                      info.get("inputs", {}).get("colour", _default_colour(spec)),
                      info.get("inputs", {}).get("query_batch", image_spec(spec)["n_classes"]))


def _default_colour(spec: dict) -> str:
    """For model files that do not say: grey and inverted (Omniglot) for 1 channel, else RGB."""
    return "grey_inverted" if image_spec(spec)["in_channels"] == 1 else "rgb"


def _method(path: Path, info: dict) -> MAML:
    """The method the model was trained with (plain MAML for files that do not say)."""
    name = info.get("algorithm", "maml")
    if name not in METHODS:
        raise DataError(f"{path}: trained with the method {name!r}, which this noisymaml does not know "
                        f"({', '.join(METHODS)})")
    return METHODS[name](**info.get("algorithm_settings", {}))


def _inner(info: dict) -> InnerLoop | None:
    meta_test = info.get("meta_test")
    if not meta_test:
        return None
    return InnerLoop(meta_test["inner_lr"], meta_test["inner_steps"], meta_test["first_order"])


def _load_plain(path: Path):
    """load_file (weights_only: tensors and plain data), with a message for command-line users;
    empty, cut, inflating or oversized files are refused unread, saying which."""
    try:
        check_archive(path, MAX_MODEL_BYTES)
    except DataError as err:
        raise DataError(f"not a noisymaml model file: {err}") from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return load_file(path, MAX_MODEL_BYTES)
    except DataError:
        raise DataError(f"{path}: not a noisymaml model file; refusing to load it (it is corrupt or "
                        "holds objects other than tensors and plain data, which could run code; "
                        "nothing in it was run)") from None


def _check_spec(path: Path, saved) -> None:
    if not isinstance(saved, dict) or not {"spec", "params"} <= set(saved):
        raise DataError(f"{path}: not a noisymaml model file (expected keys spec and params)")
    spec = saved["spec"]
    if not isinstance(spec, dict) or "kind" not in spec:
        raise DataError(f"{path}: not a noisymaml model file (its spec is not a model spec)")
    spec = image_spec(spec)
    if spec["kind"] != "conv4":
        raise DataError(f"{path}: a model of kind {spec['kind']!r}, not an image classifier; "
                        "predict needs a Conv-4 model (kind 'conv4', e.g. from the omniglot stages)")
    for key in ("in_channels", "image_size", "n_classes"):
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{path}: model spec has {key} = {value!r}; expected a positive integer")
    if spec["in_channels"] not in (1, 3):
        raise DataError(f"{path}: the model takes {spec['in_channels']}-channel images; "
                        "predict reads grey (1 channel) or RGB (3 channels) images")


# --- image files ------------------------------------------------------------------------------

def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files (by name ending) in `folder`, at any depth or only directly in it, sorted by
    relative path; hidden names (.*) are skipped, symbolic links to sub-folders are not followed."""
    suffixes = image_suffixes()
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(root, f) for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_image(path: Path, image_size: int, colour: str = "grey_inverted") -> np.ndarray:
    """One image as in training: uint8 [S, S] grey, LANCZOS, inverted (grey_inverted), or
    uint8 [S, S, 3] RGB, LANCZOS (rgb).

    PIL's decompression-bomb guard stays on (Image.MAX_IMAGE_PIXELS); images above it are
    refused (its warning is taken as an error). Raises ImageError naming the file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                upright = ImageOps.exif_transpose(image)
                if upright.has_transparency_data:  # transparent background -> white paper
                    rgba = upright.convert("RGBA")
                    upright = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
                pixels = grey(upright, image_size) if colour == "grey_inverted" else rgb(upright, image_size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: image too large, refused as a possible decompression bomb ({err})") from None
    except Exception as err:  # PIL raises many types on broken files (OSError, SyntaxError, ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"{path}: cannot read image ({reason})") from None
    return pixels


def to_batch(images: list[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images [H, W] or [H, W, 3] -> float [N, C, H, W] in [0, 1], as tasks.gather_tasks
    feeds the model."""
    batch = torch.from_numpy(np.stack(images))
    batch = batch.unsqueeze(1) if batch.dim() == 3 else batch.permute(0, 3, 1, 2)
    return batch.to(device).float().div_(255.0)


# --- support and query sets ------------------------------------------------------------------

@dataclass
class Support:
    classes: list[str]
    files: list[Path]
    x: torch.Tensor  # [N, C, S, S]
    y: torch.Tensor  # [N] label = index of the class in `classes`


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _check_folder(folder: Path, option: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{option} {folder}: " + ("not a folder" if folder.exists() else "folder not found"))
    return folder


def support_classes(folder: Path, n_classes: int) -> dict[str, list[Path]]:
    """Class name (sub-folder name, sorted) -> its image files; checks the layout against the model."""
    folder = _check_folder(folder, "--support")
    class_dirs = _subfolders(folder)
    if not class_dirs:
        loose = len(list_images(folder))
        hint = f" (its {loose} image(s) must go into class sub-folders)" if loose else ""
        raise DataError(f"--support {folder} is empty: expected one sub-folder of images per class{hint}")
    names = [d.name for d in class_dirs]
    if len(class_dirs) < 2:
        raise DataError(f"--support {folder} has only 1 class ({names[0]}); at least 2 class "
                        "sub-folders are needed")
    if len(class_dirs) != n_classes:
        raise DataError(f"--support {folder} has {len(class_dirs)} classes ({', '.join(names)}), "
                        f"but the model was meta-trained for {n_classes} classes; give exactly "
                        f"{n_classes} class sub-folders")
    classes = {d.name: list_images(d) for d in class_dirs}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"--support {folder}: class folder(s) without images: {', '.join(empty)}")
    return classes


def load_support(folder: Path, classifier: Classifier,
                 device: torch.device | str = "cpu") -> Support:
    """Read every support image; any unreadable one is fatal (DataError naming the file)."""
    classes = support_classes(folder, classifier.n_classes)
    files, images, labels = [], [], []
    for label, paths in enumerate(classes.values()):
        for path in paths:
            try:
                images.append(read_image(path, classifier.image_size, classifier.colour))
            except ImageError as err:
                raise DataError(f"support image {err}; fix or remove it (the adaptation needs "
                                "every support image)") from None
            files.append(path)
            labels.append(label)
    return Support(list(classes), files, to_batch(images, device),
                   torch.tensor(labels, dtype=torch.long, device=device))


@dataclass(frozen=True)
class QueryItem:
    path: Path
    name: str  # path relative to the query folder, with "/"
    label: int | None  # index of its class folder among the support classes, None when flat


def find_query(folder: Path, classes: list[str]) -> list[QueryItem]:
    """Query images: directly in `folder` (unlabelled) and/or in sub-folders named like support classes."""
    folder = _check_folder(folder, "--query")
    subdirs = _subfolders(folder)
    unknown = [d.name for d in subdirs if d.name not in classes]
    if unknown:
        raise DataError(f"--query {folder}: sub-folder(s) {', '.join(unknown)} are not support classes "
                        f"({', '.join(classes)}); query images go directly in the folder or in "
                        "sub-folders named like the support classes")
    items = [QueryItem(path, path.name, None) for path in list_images(folder, recursive=False)]
    for subdir in subdirs:
        label = classes.index(subdir.name)
        items += [QueryItem(path, f"{subdir.name}/{path.relative_to(subdir).as_posix()}", label)
                  for path in list_images(subdir)]
    if not items:
        raise DataError(f"--query {folder} holds no images")
    return sorted(items, key=lambda item: item.name)


@dataclass
class Query:
    items: list[QueryItem]  # the readable ones, in the order of x
    x: torch.Tensor | None
    skipped: list[str] = field(default_factory=list)  # one message per unreadable file


def load_query(items: list[QueryItem], classifier: Classifier, device: torch.device | str = "cpu") -> Query:
    """Read the query images; unreadable ones are skipped with a message each."""
    kept, images, skipped = [], [], []
    for item in items:
        try:
            images.append(read_image(item.path, classifier.image_size, classifier.colour))
        except ImageError as err:
            skipped.append(str(err))
            continue
        kept.append(item)
    return Query(kept, to_batch(images, device) if images else None, skipped)


# --- adaptation and prediction ---------------------------------------------------------------

def check_inner(steps: int | None, inner_lr: float | None) -> None:
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise DataError(f"--steps must be an integer >= 0, got {steps!r}")
    if inner_lr is not None and (not math.isfinite(inner_lr) or inner_lr <= 0):
        raise DataError(f"--inner-lr must be a positive number, got {inner_lr!r}")


def meta_test_loop(classifier: Classifier, steps: int | None = None,
                   inner_lr: float | None = None) -> InnerLoop:
    """The model's meta-test inner loop, with the user's overrides; as the method runs it."""
    check_inner(steps, inner_lr)
    stored = classifier.inner
    if stored is None and (steps is None or inner_lr is None):
        raise DataError(f"{classifier.path}: the model file does not say how meta-test adapted; "
                        "give --steps and --inner-lr")
    inner = InnerLoop(stored.lr if inner_lr is None else inner_lr,
                      stored.steps if steps is None else steps,
                      True if stored is None else stored.first_order)
    return classifier.method.inner_loop(inner, classifier.params)


def adapt_to_support(classifier: Classifier, support: Support, steps: int | None = None,
                     inner_lr: float | None = None) -> Params:
    """Meta-test's adaptation on the support set, as the evaluate stage runs it: the method's
    starting weights (MR-MAML(W): the posterior mean) and adapted layers, the stored inner loop."""
    inner = meta_test_loop(classifier, steps, inner_lr)
    forward = make_forward(classifier.model)
    adapted = adapt(forward, CLASSIFICATION, classifier.method.evaluation_params(classifier.params),
                    support.x, support.y, inner)
    adapted = {name: p.detach() for name, p in adapted.items()}
    if not all(torch.isfinite(p).all() for p in adapted.values()):
        raise DataError(f"adaptation diverged (parameters became NaN/inf after {inner.steps} steps at "
                        f"inner lr {inner.lr}); use a smaller --inner-lr or fewer --steps")
    return adapted


def predict_probs(classifier: Classifier, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, n_classes]. Batch norm uses the statistics of each forward batch:
    the images go through in batches of one evaluation episode's query set, in order."""
    forward = make_forward(classifier.model)
    with torch.no_grad():
        logits = torch.cat([forward(params, chunk) for chunk in x.split(classifier.query_batch)])
    if not torch.isfinite(logits).all():
        raise DataError(f"{classifier.path}: the model's outputs are NaN/inf; the model file is "
                        "broken or --inner-lr is too large")
    return logits.softmax(-1).cpu()


@dataclass(frozen=True)
class Prediction:
    file: str
    predicted_class: str
    probability: float
    true_class: str | None


def prediction_rows(items: list[QueryItem], probs: torch.Tensor, classes: list[str]) -> list[Prediction]:
    best, index = probs.max(-1)
    rows = [Prediction(item.name, classes[i], p, None if item.label is None else classes[item.label])
            for item, p, i in zip(items, best.tolist(), index.tolist())]
    return sorted(rows, key=lambda row: row.file)


@dataclass
class Result:
    classes: list[str]
    rows: list[Prediction]
    skipped: list[str]
    support_images: int

    @property
    def labelled(self) -> list[Prediction]:
        return [row for row in self.rows if row.true_class is not None]

    @property
    def correct(self) -> int:
        return sum(row.predicted_class == row.true_class for row in self.labelled)

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the query images whose class is known (class sub-folders), else None."""
        return self.correct / len(self.labelled) if self.labelled else None


def predict_folders(model_file: Path, support_dir: Path, query_dir: Path, steps: int | None = None,
                    inner_lr: float | None = None, device: torch.device | str = "cpu") -> Result:
    """The whole of `noisymaml predict` but writing: load, adapt to the support set, predict.
    `steps` and `inner_lr` override the model's meta-test inner loop (None: as in evaluation)."""
    check_inner(steps, inner_lr)
    classifier = load_classifier(model_file, device)
    support = load_support(support_dir, classifier, device)
    query = load_query(find_query(query_dir, support.classes), classifier, device)
    if query.x is None:
        raise DataError(f"--query {query_dir}: none of its {len(query.skipped)} image(s) could be read:\n"
                        + "\n".join(query.skipped))
    params = adapt_to_support(classifier, support, steps, inner_lr)
    probs = predict_probs(classifier, params, query.x)
    return Result(support.classes, prediction_rows(query.items, probs, support.classes),
                  query.skipped, len(support.files))


def write_predictions(path: Path, rows: list[Prediction]) -> None:
    """CSV of file, predicted_class, probability (4 decimals), one row per prediction.

    Written to a temporary file and renamed: a failure leaves an earlier CSV as it was. File
    names are written as the file system holds them, also those that are not valid UTF-8.
    """
    with atomic_open(Path(path), "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows((row.file, row.predicted_class, f"{row.probability:.4f}") for row in rows)


def summary(result: Result, output: Path) -> str:
    """One line: images, classes, accuracy when known, skipped files, where the CSV went."""
    line = (f"predicted {len(result.rows)} image(s) into {len(result.classes)} classes "
            f"({', '.join(result.classes)}) after adapting to {result.support_images} support image(s)")
    if result.accuracy is not None:
        line += f"; accuracy {result.accuracy:.4f} ({result.correct}/{len(result.labelled)}"
        line += " labelled)" if len(result.labelled) < len(result.rows) else ")"
    if result.skipped:
        line += f"; skipped {len(result.skipped)} unreadable image(s)"
    return line + f"; wrote {shown(output)}"


def shown(path: Path) -> str:
    """A path for the terminal: bytes that are not UTF-8 as \\x escapes (printing them raw can fail)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
