"""Omniglot archives: verification, download failure handling and decoding (real and tiny archives)."""

import io
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisymaml.datasets import omniglot
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
    return omniglot.fetch_archives(folder, download=False)


def test_real_archives_are_found_and_verified(real_archives):
    assert [path.name for path in real_archives] == SMALL_ARCHIVES


def test_real_archives_decode_to_242_characters_with_bright_strokes(real_archives):
    images, names = omniglot.load_characters(real_archives, image_size=28)
    assert images.shape == (242, 20, 28, 28)
    assert images.dtype == np.uint8
    assert len(set(names)) == len(names) == 242
    assert names == sorted(names)
    assert "Greek/character01" in names and "Balinese/character01" in names
    assert images.mean() < 64  # inverted: background is 0, strokes are bright
    assert images.max() == 255


def test_tiny_archive_loads_with_right_shape_and_order(tmp_path, capsys):
    _tiny_zip(tmp_path / "mine.zip", _tiny_counts(), prefix="images_mine/")
    archives = omniglot.fetch_archives(tmp_path, download=False)
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


def test_known_name_with_wrong_content_reports_md5(tmp_path):
    _tiny_zip(tmp_path / "images_background.zip", _tiny_counts())
    with pytest.raises(DataError, match="md5") as error:
        omniglot.fetch_archives(tmp_path, download=False)
    assert "images_background.zip" in str(error.value)
    assert omniglot.OFFICIAL_ARCHIVES["images_background.zip"] in str(error.value)


def test_truncated_zip_is_reported(tmp_path):
    whole = _tiny_zip(tmp_path / "whole.zip", _tiny_counts()).read_bytes()
    (tmp_path / "whole.zip").unlink()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="cut.zip"):
        omniglot.fetch_archives(tmp_path, download=False)


def test_zip_without_omniglot_layout_is_reported(tmp_path):
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as zf:
        zf.writestr("only/one.png", _png(0))
        zf.writestr("a/b/notes.txt", "not an image")
    with pytest.raises(DataError, match="flat.zip.*ALPHABET/CHARACTER"):
        omniglot.fetch_archives(tmp_path, download=False)


def test_undecodable_png_names_archive_and_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("Alpha/character01/x.png", b"not a png")
    with pytest.raises(DataError, match="Alpha/character01/x.png.*bad.zip"):
        omniglot.load_characters([tmp_path / "bad.zip"], image_size=4)


def test_empty_folder_without_download_names_folder(tmp_path):
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(tmp_path, download=False)
    assert str(tmp_path) in str(error.value)


def test_failed_download_names_folder_and_leaves_no_archive(tmp_path, monkeypatch):
    def failing_download(url, root, filename=None, md5=None):
        (Path(root) / filename).write_bytes(b"partial")  # what an interrupted transfer leaves
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", failing_download)
    with pytest.raises(DataError) as error:
        omniglot.fetch_archives(tmp_path, download=True)
    message = str(error.value)
    assert str(tmp_path) in message and omniglot.DOWNLOAD_URL in message
    assert all(name in message for name in omniglot.OFFICIAL_ARCHIVES)
    assert list(tmp_path.iterdir()) == []


def test_downloaded_archives_get_final_names_then_are_verified(tmp_path, monkeypatch):
    def fake_download(url, root, filename=None, md5=None):
        _tiny_zip(Path(root) / filename, _tiny_counts())

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    # the fake archives cannot match the official md5, so verification after the rename rejects them
    with pytest.raises(DataError, match="md5"):
        omniglot.fetch_archives(tmp_path, download=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(omniglot.OFFICIAL_ARCHIVES)


def test_unequal_image_counts_are_reported(tmp_path):
    counts = _tiny_counts()
    counts["Alpha1/character02"] = 3
    _tiny_zip(tmp_path / "uneven.zip", counts)
    with pytest.raises(DataError, match="Alpha1/character02 has 3 images.*4"):
        omniglot.load_characters([tmp_path / "uneven.zip"], image_size=4)
