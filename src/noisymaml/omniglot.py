"""Omniglot archives: find, verify or download them, and decode their characters from the zips."""

import hashlib
import io
import zipfile
import zlib
from collections import Counter
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from noisymaml.errors import DataError

OFFICIAL_ARCHIVES = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
KNOWN_CHECKSUMS = {
    **OFFICIAL_ARCHIVES,
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
}
DOWNLOAD_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"

_LAYOUT = "ALPHABET/CHARACTER/IMAGE.png"
# Suffix of an archive being downloaded: not *.zip, so an interrupted download is never taken for an archive.
_PARTIAL_SUFFIX = ".part"
# What a corrupt member or PNG can raise, from zipfile, zlib or PIL (PIL plugins use SyntaxError).
_DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, zlib.error, zipfile.BadZipFile)


def fetch_archives(folder: Path, download: bool) -> list[Path]:
    """Return the Omniglot-format zip archives in `folder` (sorted), verified.

    Downloads the official archives first when the folder holds no zip and `download` is True.
    """
    folder = Path(folder)
    archives = _zips_in(folder)
    if not archives:
        if not download:
            raise DataError(
                f"no Omniglot archive (*.zip) in {folder}: expected zips such as "
                f"{', '.join(OFFICIAL_ARCHIVES)} holding {_LAYOUT} entries (or enable download)"
            )
        _download_official(folder)
        archives = _zips_in(folder)
    for archive in archives:
        _verify_archive(archive)
    return archives


def _zips_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.zip") if path.is_file())


def _download_official(folder: Path) -> None:
    """Download every official archive, all or nothing.

    Each file goes to a temporary name and all are renamed only once every checksum passed,
    so a failure leaves no zip behind and the next call retries the whole set.
    """
    # torchvision is heavy to import and only needed here.
    from torchvision.datasets import utils as tv_utils

    folder.mkdir(parents=True, exist_ok=True)
    partials = {name: folder / (name + _PARTIAL_SUFFIX) for name in OFFICIAL_ARCHIVES}
    try:
        for name, md5 in OFFICIAL_ARCHIVES.items():
            # download_url raises RuntimeError when the downloaded file fails the md5 check.
            tv_utils.download_url(f"{DOWNLOAD_URL}/{name}", root=folder, filename=partials[name].name, md5=md5)
    except (OSError, RuntimeError) as error:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download Omniglot into {folder} ({error}); place the archives "
            f"{', '.join(OFFICIAL_ARCHIVES)} there manually (from {DOWNLOAD_URL}/)"
        ) from error
    for name, partial in partials.items():
        partial.rename(folder / name)


def _verify_archive(archive: Path) -> None:
    """Check the known checksum (if the name is known) and that the zip opens with the Omniglot layout."""
    expected = KNOWN_CHECKSUMS.get(archive.name)
    if expected is not None:
        actual = _md5(archive)
        if actual != expected:
            raise DataError(
                f"{archive.name} in {archive.parent} has md5 {actual}, expected {expected}: "
                "the file is corrupt or not the official archive; replace it"
            )
    with _open_zip(archive) as zf:
        if not _character_members(zf):
            raise DataError(f"{archive} holds no PNG at a path ending {_LAYOUT}; expected an Omniglot archive")


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
        n_drawers = _common_image_count({name: len(sources[name][1]) for name in names})
        images = np.empty((len(names), n_drawers, image_size, image_size), dtype=np.uint8)
        for c, name in enumerate(names):
            zf, members = sources[name]
            for d, member in enumerate(members):
                images[c, d] = _decode(zf, member, image_size)
    return images, names


def _collect_characters(opened: list[zipfile.ZipFile]) -> dict[str, tuple[zipfile.ZipFile, list[str]]]:
    """Map each character name to (zip, member names); earlier archives win on duplicates."""
    sources: dict[str, tuple[zipfile.ZipFile, list[str]]] = {}
    for zf in opened:
        for name, members in _character_members(zf).items():
            sources.setdefault(name, (zf, members))
    return sources


def _common_image_count(counts: dict[str, int]) -> int:
    expected = Counter(counts.values()).most_common(1)[0][0]
    for name, count in counts.items():
        if count != expected:
            raise DataError(f"Omniglot character {name} has {count} images, while most have {expected}")
    return expected


def _decode(zf: zipfile.ZipFile, member: str, image_size: int) -> np.ndarray:
    """Grey, LANCZOS-resized and inverted (255 - pixel) so strokes are bright, as Finn et al. 2017 (1 - image)."""
    try:
        with Image.open(io.BytesIO(zf.read(member))) as image:
            grey = image.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot decode {member} in {zf.filename}: {error}") from error
    return 255 - np.asarray(grey, dtype=np.uint8)
