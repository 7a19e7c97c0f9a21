"""Omniglot (Lake et al. 2015): find, verify or download the archives, decode their characters
from the zips, and split the characters into train/val/test pools (Finn et al. 2017's protocol)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator

from noisymaml.core.progress import Progress
from noisymaml.core.tasks import seeded
from noisymaml.datasets.base import FINN, YIN, FetchSettings, Reported
from noisymaml.datasets.imagefiles import DECODE_ERRORS, common_count, grey
from noisymaml.datasets.images import SPLITS, ImageDataset, ImagePools, ImageSettings, ImageTasks
from noisymaml.errors import DataError, ParamError
from noisymaml.settings import Section

# The official archive sets, told apart by checksum (`fetch.omniglot`): the two small archives,
# 242 distinct characters, are what every figure of this project comes from; the two full ones
# hold all 1623 characters.
ARCHIVE_SETS = {
    "small": {
        "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
        "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
    },
    "full": {
        "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
        "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
    },
}
OWN = "own"  # `fetch.omniglot: own`: every zip of the folder, checked for the layout only
DOWNLOAD_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"

_LAYOUT = "ALPHABET/CHARACTER/IMAGE.png"
# Suffix of an archive being downloaded: not *.zip, so an interrupted download is never taken for an archive.
_PARTIAL_SUFFIX = ".part"


def fetch_archives(folder: Path, archive_set: str, download: bool) -> list[Path]:
    """Return the archives of `archive_set` in `folder` (sorted), verified.

    An official set's archives are recognised by their MD5, whatever their file names; the
    set's missing archives are downloaded first when `download` is True. Archives of the other
    official set may lie beside them (a folder that served both settings) and are not returned;
    any other zip is refused, so that no archive is silently left out. `own` returns every zip
    of the folder that has the Omniglot layout.
    """
    folder = Path(folder)
    if archive_set == OWN:
        return _own_archives(folder)
    members = _official_in(folder).get(archive_set, {})
    missing = {name: md5 for name, md5 in ARCHIVE_SETS[archive_set].items() if name not in members}
    if missing:
        if not download:
            raise DataError(f"{folder} lacks {', '.join(missing)} of the {archive_set} Omniglot set "
                            f"(`fetch.omniglot` = {archive_set}): copy them there, or let fetch@omniglot "
                            "download them (`fetch.download: true`)")
        _download_official(folder, missing)
        members = _official_in(folder)[archive_set]
    return sorted(members.values())


def _zips_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.zip") if path.is_file())


def _official_in(folder: Path) -> dict[str, dict[str, Path]]:
    """set -> {official name: path} for the folder's zips, told apart by MD5; a zip that is no
    official archive is a DataError."""
    official = {md5: (set_name, name) for set_name, archives in ARCHIVE_SETS.items()
                for name, md5 in archives.items()}
    found: dict[str, dict[str, Path]] = {}
    for archive in _zips_in(folder):
        actual = _md5(archive)
        if actual not in official:
            raise DataError(_not_official(archive, actual))
        set_name, name = official[actual]
        found.setdefault(set_name, {})[name] = archive
    return found


def _not_official(archive: Path, actual: str) -> str:
    expected = next((archives[archive.name] for archives in ARCHIVE_SETS.values() if archive.name in archives),
                    None)
    if expected:
        return (f"{archive.name} in {archive.parent} has md5 {actual}, expected {expected}: "
                "the file is corrupt or not the official archive; replace it (or delete it to download it)")
    return (f"{archive.name} in {archive.parent} is no official Omniglot archive (md5 {actual}): "
            "remove it, or set `fetch.omniglot: own` to read your own archives")


def _own_archives(folder: Path) -> list[Path]:
    archives = _zips_in(folder)
    if not archives:
        raise DataError(f"no Omniglot archive (*.zip) in {folder}: `fetch.omniglot` = own reads your "
                        f"own zips of {_LAYOUT} entries and downloads nothing")
    for archive in archives:
        with _open_zip(archive) as zf:
            if not _character_members(zf):
                raise DataError(f"{archive} holds no PNG at a path ending {_LAYOUT}; expected an Omniglot archive")
    return archives


def _download_official(folder: Path, archives: dict[str, str]) -> None:
    """Download official archives (name -> MD5), all or nothing.

    Each file goes to a temporary name and all are renamed only once every checksum passed,
    so a failure leaves no new zip behind and the next call retries the whole set.
    """
    # torchvision is heavy to import and only needed here.
    from torchvision.datasets import utils as tv_utils

    partials = {name: folder / (name + _PARTIAL_SUFFIX) for name in archives}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, md5 in archives.items():
            # download_url raises RuntimeError when the downloaded file fails the md5 check.
            tv_utils.download_url(f"{DOWNLOAD_URL}/{name}", root=folder, filename=partials[name].name, md5=md5)
    except (OSError, RuntimeError) as error:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download Omniglot into {folder} ({error}); place the archives "
            f"{', '.join(archives)} there manually (from {DOWNLOAD_URL}/)"
        ) from error
    for name, partial in partials.items():
        partial.rename(folder / name)


def _md5(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{archive} is not a readable zip archive ({error}); expected an Omniglot zip of {_LAYOUT} entries"
        ) from error


def _character_members(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    """Map "Alphabet/characterNN" to its PNG member names (sorted by file name)."""
    members: dict[str, list[str]] = {}
    for member in zf.namelist():
        path = PurePosixPath(member)
        if len(path.parts) >= 3 and path.suffix.lower() == ".png" and not member.endswith("/"):
            members.setdefault(f"{path.parts[-3]}/{path.parts[-2]}", []).append(member)
    for names in members.values():
        names.sort(key=lambda member: PurePosixPath(member).name)
    return members


def load_characters(archives: list[Path], image_size: int) -> tuple[np.ndarray, list[str]]:
    """Decode every character of the archives straight from the zips (no extraction to disk).

    Returns uint8 images [n_characters, n_drawers, image_size, image_size], strokes bright,
    and the names "Alphabet/characterNN" sorted. A character present in several archives
    is kept once, from the first archive in sorted order. A plain loop: PIL holds the GIL
    for these tiny PNGs, so threads measured slower.
    """
    with ExitStack() as stack:
        opened = [stack.enter_context(_open_zip(archive)) for archive in sorted(map(Path, archives))]
        sources = _collect_characters(opened)
        if not sources:
            raise DataError(f"no Omniglot characters ({_LAYOUT}) in the archives {[str(a) for a in archives]}")
        names = sorted(sources)
        n_drawers = common_count({name: len(sources[name][1]) for name in names}, "in the Omniglot archives")
        images = np.empty((len(names), n_drawers, image_size, image_size), dtype=np.uint8)
        progress = Progress("[omniglot] decoding", len(names), "characters")
        for c, name in enumerate(names):
            zf, members = sources[name]
            for d, member in enumerate(members):
                images[c, d] = _decode(zf, member, image_size)
            progress(c + 1)
    return images, names


def _collect_characters(opened: list[zipfile.ZipFile]) -> dict[str, tuple[zipfile.ZipFile, list[str]]]:
    """Map each character name to (zip, member names); earlier archives win on duplicates."""
    sources: dict[str, tuple[zipfile.ZipFile, list[str]]] = {}
    for zf in opened:
        for name, members in _character_members(zf).items():
            sources.setdefault(name, (zf, members))
    return sources


def _decode(zf: zipfile.ZipFile, member: str, image_size: int) -> np.ndarray:
    """Grey, LANCZOS-resized and inverted (255 - pixel) so strokes are bright, as Finn et al. 2017 (1 - image)."""
    try:
        with Image.open(io.BytesIO(zf.read(member))) as image:
            return grey(image, image_size)
    except DECODE_ERRORS as error:
        raise DataError(f"cannot decode {member} in {zf.filename}: {error}") from error


# --- the dataset ------------------------------------------------------------------------------

class SplitSettings(Section):
    """Character counts (integers) or fractions of all characters (floats below 1)."""

    train: float = Field(gt=0)
    val: float = Field(gt=0)
    test: float = Field(gt=0)

    @model_validator(mode="after")
    def _one_kind(self):
        values = (self.train, self.val, self.test)
        fractions = [v < 1 for v in values]
        if any(fractions) and not all(fractions):
            raise ValueError("give all three as counts (>= 1) or all as fractions (< 1)")
        if all(fractions) and sum(values) > 1 + 1e-9:
            raise ValueError(f"fractions add up to {sum(values):g}, more than 1")
        if not any(fractions) and any(v != int(v) for v in values):
            raise ValueError("character counts must be whole numbers")
        return self


class OmniglotTasks(ImageTasks):
    """Omniglot adds its character split and rotations."""

    rotations: Literal["off", "classes", "augment"] = "off"
    split: SplitSettings


class OmniglotSettings(ImageSettings):
    tasks: OmniglotTasks


def split_counts(split: SplitSettings, total: int) -> tuple[int, int, int]:
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


FULL_CHARACTERS = 1623


class Omniglot(ImageDataset):
    """Omniglot characters (Lake et al. 2015), Finn et al. 2017's protocol."""

    name = "omniglot"
    Settings = OmniglotSettings
    colour = "grey_inverted"
    paper_iterations = 60_000  # Finn et al. 2017
    reported = (
        Reported("NME, 20-way 1-shot, full Omniglot", "MAML", "7.8%", YIN),
        Reported("NME, 20-way 1-shot, full Omniglot", "noisy MAML", "82.36%",
                 "Gogoi, Tiwari & Verma 2024, arXiv 2405.12299"),
        Reported("standard (mutually exclusive), 20-way 1-shot, full Omniglot", "MAML",
                 "95.8 ± 0.3%", FINN),
    )

    def fetch(self, folder: Path, fetch: FetchSettings) -> str:
        archives = fetch_archives(folder, fetch.omniglot, fetch.download)
        unread = sorted(set(_zips_in(folder)) - set(archives))
        return (f"{fetch.omniglot} set, {len(archives)} verified archive(s): "
                + ", ".join(a.name for a in archives)
                + (f"; not read: {', '.join(a.name for a in unread)}" if unread else ""))

    def pools(self, settings: OmniglotSettings, seed: int, source: Path,
              fetch: FetchSettings) -> ImagePools:
        """Characters of the archives, split at random (seeded) into train/val/test characters."""
        archives = fetch_archives(source, fetch.omniglot, download=False)
        images, names = load_characters(archives, settings.tasks.image_size)
        counts = split_counts(settings.tasks.split, len(names))
        order = torch.randperm(len(names), generator=seeded(seed, "omniglot/characters")).numpy()
        bounds = np.cumsum((0, *counts))
        index = {s: order[bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}
        pools = {s: torch.from_numpy(expand_rotations(images[i], settings.tasks.rotations)).unsqueeze(2)
                 for s, i in index.items()}
        return ImagePools(pools, {s: [names[j] for j in i] for s, i in index.items()},
                          {"archives": [a.name for a in archives],
                           "characters": {s: len(i) for s, i in index.items()}})

    def reductions(self, settings: OmniglotSettings) -> list[str]:
        split = settings.tasks.split
        characters = split.train + split.val + split.test
        reduced = []
        if characters < FULL_CHARACTERS:
            reduced.append(f"{characters:g} characters" if characters >= 1
                           else "a fraction of the characters")
        return reduced + super().reductions(settings)

    def paper_scale(self) -> str:
        return f"all {FULL_CHARACTERS} characters, " + super().paper_scale()


DATASET = Omniglot()
