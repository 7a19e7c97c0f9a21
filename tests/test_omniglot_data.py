"""Omniglot archives: the official sets told apart by checksum, downloads from a local HTTP server,
refusals, and decoding (real and tiny archives)."""

import http.server
import io
import shutil
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisymaml.datasets import DATASETS, omniglot
from noisymaml.datasets.base import FetchSettings
from noisymaml.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/omniglot"
SMALL_ARCHIVES = ["images_background_small1.zip", "images_background_small2.zip"]


def _png(value: int, size: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (size, size), color=value).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_zip(path: Path, counts: dict[str, int], prefix: str = "") -> Path:
    """A zip with `counts[ALPHABET/CHARACTER]` 10x10 PNGs per character."""
    with zipfile.ZipFile(path, "w") as zf:
        for character, count in counts.items():
            for i in range(count):
                zf.writestr(f"{prefix}{character}/{i:04d}_{i + 1:02d}.png", _png(i % 2))
    return path


def _tiny_counts(alphabets: int = 2, characters: int = 3, images: int = 4) -> dict[str, int]:
    return {f"Alpha{a}/character{c + 1:02d}": images for a in range(alphabets) for c in range(characters)}


@pytest.fixture(scope="module")
def real_archives(tmp_path_factory) -> list[Path]:
    if not all((SHARED / name).is_file() for name in SMALL_ARCHIVES):
        pytest.skip(f"real Omniglot archives {SMALL_ARCHIVES} not found in {SHARED}")
    folder = tmp_path_factory.mktemp("omniglot")
    for name in SMALL_ARCHIVES:
        shutil.copy(SHARED / name, folder / name)
    return omniglot.fetch_archives(folder, "small", download=False)


@pytest.fixture
def small_copy(real_archives, tmp_path) -> Path:
    """A folder holding copies of the two real small archives."""
    folder = tmp_path / "omniglot"
    folder.mkdir()
    for archive in real_archives:
        shutil.copy(archive, folder / archive.name)
    return folder


@pytest.fixture
def server(tmp_path, monkeypatch) -> Path:
    """A local HTTP server on 127.0.0.1 as omniglot.DOWNLOAD_URL; returns the folder it serves."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(omniglot, "DOWNLOAD_URL", f"http://127.0.0.1:{httpd.server_port}")
    yield served
    httpd.shutdown()
    thread.join()


@pytest.fixture
def tiny_full_set(tmp_path, monkeypatch) -> dict[str, Path]:
    """Two tiny archives standing in for the full set (their MD5s registered as the full set's)."""
    folder = tmp_path / "tiny_full"
    folder.mkdir()
    archives = {name: _tiny_zip(folder / name, _tiny_counts(), prefix=f"{name}/")
                for name in omniglot.ARCHIVE_SETS["full"]}
    sets = {**omniglot.ARCHIVE_SETS, "full": {name: omniglot._md5(path) for name, path in archives.items()}}
    monkeypatch.setattr(omniglot, "ARCHIVE_SETS", sets)
    return archives


def test_real_archives_are_found_and_verified(real_archives):
    assert [path.name for path in real_archives] == SMALL_ARCHIVES


def test_default_set_is_the_small_archives_the_figures_come_from():
    assert FetchSettings().omniglot == "small"
    assert omniglot.ARCHIVE_SETS["small"] == {
        "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
        "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
    }


def test_real_archives_decode_to_242_characters_with_bright_strokes(real_archives):
    images, names = omniglot.load_characters(real_archives, image_size=28)
    assert images.shape == (242, 20, 28, 28)
    assert images.dtype == np.uint8
    assert len(set(names)) == len(names) == 242
    assert names == sorted(names)
    assert "Greek/character01" in names and "Balinese/character01" in names
    assert images.mean() < 64  # inverted: background is 0, strokes are bright
    assert images.max() == 255


def test_official_archives_are_recognised_by_checksum_not_name(real_archives, tmp_path):
    for archive, name in zip(real_archives, ["a.zip", "b.zip"], strict=True):
        shutil.copy(archive, tmp_path / name)
    assert [a.name for a in omniglot.fetch_archives(tmp_path, "small", download=False)] == ["a.zip", "b.zip"]


def test_corrupted_copy_of_an_official_archive_is_refused_with_both_checksums(small_copy):
    corrupt = small_copy / SMALL_ARCHIVES[0]
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.chmod(0o644)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(small_copy, "small", download=True)
    message = str(error.value)
    assert "\n" not in message and SMALL_ARCHIVES[0] in message and str(small_copy) in message
    assert omniglot.ARCHIVE_SETS["small"][SMALL_ARCHIVES[0]] in message
    assert omniglot._md5(corrupt) in message and "corrupt" in message


def test_unknown_zip_beside_an_official_set_is_refused_not_skipped(small_copy):
    _tiny_zip(small_copy / "mine.zip", _tiny_counts())
    with pytest.raises(DataError, match="mine.zip.*no official Omniglot archive.*fetch.omniglot: own"):
        omniglot.fetch_archives(small_copy, "small", download=False)


def test_small_archives_present_when_full_asked_without_download(small_copy):
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(small_copy, "full", download=False)
    message = str(error.value)
    assert str(small_copy) in message and "`fetch.omniglot` = full" in message
    assert all(name in message for name in omniglot.ARCHIVE_SETS["full"])


def test_the_other_set_beside_the_chosen_one_is_not_read(small_copy, tiny_full_set):
    for path in tiny_full_set.values():
        shutil.copy(path, small_copy / path.name)
    small = omniglot.fetch_archives(small_copy, "small", download=False)
    full = omniglot.fetch_archives(small_copy, "full", download=False)
    assert [a.name for a in small] == SMALL_ARCHIVES
    assert [a.name for a in full] == sorted(tiny_full_set)
    summary = DATASETS["omniglot"].fetch(small_copy, FetchSettings(omniglot="small", download=False))
    assert summary.startswith("small set, 2 verified archive(s)")
    assert summary.endswith("not read: " + ", ".join(sorted(tiny_full_set)))


def test_switching_to_full_downloads_it_beside_the_small_set(small_copy, tiny_full_set, server):
    for path in tiny_full_set.values():
        shutil.copy(path, server / path.name)
    full = omniglot.fetch_archives(small_copy, "full", download=True)
    assert [a.read_bytes() for a in full] == [tiny_full_set[a.name].read_bytes() for a in full]
    assert sorted(a.name for a in small_copy.iterdir()) == sorted([*SMALL_ARCHIVES, *tiny_full_set])


def test_small_set_downloads_from_the_official_place_byte_identical(real_archives, tmp_path, server):
    for archive in real_archives:
        shutil.copy(archive, server / archive.name)
    folder = tmp_path / "downloads"
    fetched = omniglot.fetch_archives(folder, "small", download=True)
    assert [a.name for a in fetched] == SMALL_ARCHIVES
    assert [a.read_bytes() for a in fetched] == [a.read_bytes() for a in real_archives]
    assert sorted(p.name for p in folder.iterdir()) == SMALL_ARCHIVES


def test_only_the_missing_archive_of_the_set_is_downloaded(real_archives, tmp_path, server):
    shutil.copy(real_archives[1], server / real_archives[1].name)  # the server lacks the first one
    shutil.copy(real_archives[0], tmp_path / real_archives[0].name)
    fetched = omniglot.fetch_archives(tmp_path, "small", download=True)
    assert [a.read_bytes() for a in fetched] == [a.read_bytes() for a in real_archives]


def test_download_failing_the_checksum_leaves_no_archive(real_archives, tmp_path, server):
    for archive in real_archives:
        data = bytearray(archive.read_bytes())
        data[100] ^= 0xFF
        (server / archive.name).write_bytes(bytes(data))
    folder = tmp_path / "downloads"
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(folder, "small", download=True)
    message = str(error.value)
    assert "could not download" in message and str(folder) in message and omniglot.DOWNLOAD_URL in message
    assert list(folder.iterdir()) == []


def test_failed_download_names_folder_archives_and_leaves_no_archive(tmp_path, server):
    # the server holds nothing: every request is a 404
    folder = tmp_path / "downloads"
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(folder, "small", download=True)
    message = str(error.value)
    assert str(folder) in message and omniglot.DOWNLOAD_URL in message and "404" in message
    assert all(name in message for name in SMALL_ARCHIVES)
    assert list(folder.iterdir()) == []


def test_own_archives_load_with_right_shape_and_order(tmp_path, capsys):
    _tiny_zip(tmp_path / "mine.zip", _tiny_counts(), prefix="images_mine/")
    archives = omniglot.fetch_archives(tmp_path, "own", download=True)
    images, names = omniglot.load_characters(archives, image_size=6)
    assert capsys.readouterr().out.splitlines() == [  # progress: the first, then each quarter
        "[omniglot] decoding: 1/6 characters", "[omniglot] decoding: 2/6 characters",
        "[omniglot] decoding: 3/6 characters", "[omniglot] decoding: 5/6 characters",
        "[omniglot] decoding: 6/6 characters"]
    assert images.shape == (6, 4, 6, 6)
    assert names[0] == "Alpha0/character01" and names == sorted(names)
    # drawer order follows file names: 0000 is black (inverted to 255), 0001 white (inverted to 0)
    assert (images[:, 0] == 255).all() and (images[:, 1] == 0).all()


def test_duplicate_character_is_taken_from_first_archive(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("Alpha/character01/x.png", _png(0))
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("Alpha/character01/x.png", _png(1))
    images, names = omniglot.load_characters([tmp_path / "b.zip", tmp_path / "a.zip"], image_size=4)
    assert names == ["Alpha/character01"]
    assert (images == 255).all()


def test_truncated_own_zip_is_reported(tmp_path):
    whole = _tiny_zip(tmp_path / "whole.zip", _tiny_counts()).read_bytes()
    (tmp_path / "whole.zip").unlink()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="cut.zip"):
        omniglot.fetch_archives(tmp_path, "own", download=False)


def test_own_zip_without_omniglot_layout_is_reported(tmp_path):
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as zf:
        zf.writestr("only/one.png", _png(0))
        zf.writestr("a/b/notes.txt", "not an image")
    with pytest.raises(DataError, match="flat.zip.*ALPHABET/CHARACTER"):
        omniglot.fetch_archives(tmp_path, "own", download=False)


def test_undecodable_png_names_archive_and_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("Alpha/character01/x.png", b"not a png")
    with pytest.raises(DataError, match="Alpha/character01/x.png.*bad.zip"):
        omniglot.load_characters([tmp_path / "bad.zip"], image_size=4)


@pytest.mark.parametrize("archive_set", ["small", "own"])
def test_empty_folder_without_download_names_folder(tmp_path, archive_set):
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(tmp_path, archive_set, download=False)
    assert str(tmp_path) in str(error.value)


def test_unequal_image_counts_are_reported(tmp_path):
    counts = _tiny_counts()
    counts["Alpha1/character02"] = 3
    _tiny_zip(tmp_path / "uneven.zip", counts)
    with pytest.raises(DataError, match="Alpha1/character02 has 3 images.*4"):
        omniglot.load_characters([tmp_path / "uneven.zip"], image_size=4)
