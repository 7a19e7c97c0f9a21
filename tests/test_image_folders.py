"""MiniImageNet and D'Claw folder readers, on tiny fixtures written in the real file formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_fixtures import (
    CLASSES_PER_SPLIT,
    LANCZOS,
    PICKLE_NAMES,
    expected_spelling,
    spelled,
    write_dclaw,
    write_miniimagenet,
)
from noisymaml.datasets import dclaw, miniimagenet
from noisymaml.errors import DataError

# ---- MiniImageNet ------------------------------------------------------------------------------

def test_csv_layout_loads_each_split_grouped_by_label_in_row_order(tmp_path):
    source = write_miniimagenet(tmp_path, "csv")
    assert miniimagenet.detect_layout(tmp_path) == "csv"
    splits = miniimagenet.load_splits(tmp_path)
    assert list(splits) == ["train", "val", "test"]
    for split, (images, names) in splits.items():
        assert names == sorted(source[split])
        assert images.shape == (CLASSES_PER_SPLIT[split], 3, 84, 84, 3)
        assert images.dtype == np.uint8
        expected = np.stack([source[split][name] for name in names]).astype(int)
        # JPEG is lossy: each image is close to its own source, far (~85) from any other.
        assert np.abs(images.astype(int) - expected).mean(axis=(2, 3, 4)).max() < 6


@pytest.mark.parametrize(("written", "wanted"), [(20, 84), (84, 32)])
def test_csv_images_are_resized_with_lanczos(tmp_path, written, wanted):
    source = write_miniimagenet(tmp_path, "csv", {"train": 2, "val": 1, "test": 1}, size=written)
    images, names = miniimagenet.load_split(tmp_path, "train", image_size=wanted)
    assert images.shape == (2, 3, wanted, wanted, 3)
    expected = np.stack([[np.asarray(Image.fromarray(image).resize((wanted, wanted), LANCZOS))
                          for image in source["train"][name]] for name in names]).astype(int)
    assert np.abs(images.astype(int) - expected).mean() < 6


def test_pickle_layout_is_refused_without_opt_in(tmp_path):
    write_miniimagenet(tmp_path, "pickle")
    assert miniimagenet.detect_layout(tmp_path) == "pickle"
    with pytest.raises(DataError) as caught:
        miniimagenet.load_splits(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "fetch.allow_pickle" in message
    assert "convert_pickles_to_npz" in message and ".npz" in message


class _Trap:
    """Unpickling this creates `marker`: evidence that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_refusing_a_pickle_does_not_unpickle_it(tmp_path):
    folder, marker = tmp_path / "data", tmp_path / "unpickled"
    folder.mkdir()
    (folder / PICKLE_NAMES["train"]).write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(DataError, match="allow_pickle"):
        miniimagenet.load_split(folder, "train")
    assert not marker.exists()
    # Control: with the opt-in the file is unpickled (and then rejected: it is not a cache dict).
    with pytest.raises(DataError, match="not a dict"):
        miniimagenet.load_split(folder, "train", allow_pickle=True)
    assert marker.exists()


def test_pickle_layout_with_opt_in_gives_the_exact_pixels_by_class(tmp_path):
    source = write_miniimagenet(tmp_path, "pickle")
    for split, (images, names) in miniimagenet.load_splits(tmp_path, allow_pickle=True).items():
        assert names == sorted(source[split])
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(images, np.stack([source[split][name] for name in names]))


def test_pickled_images_of_another_size_are_resized(tmp_path):
    source = write_miniimagenet(tmp_path, "pickle", {"train": 2, "val": 1, "test": 1}, size=20)
    images, names = miniimagenet.load_split(tmp_path, "val", allow_pickle=True)
    assert images.shape == (1, 3, 84, 84, 3)
    expected = [np.asarray(Image.fromarray(image).resize((84, 84), LANCZOS)) for image in source["val"][names[0]]]
    np.testing.assert_array_equal(images[0], np.stack(expected))


def test_converted_npz_loads_without_pickle_and_equals_the_pickles(tmp_path):
    write_miniimagenet(tmp_path, "pickle")
    from_pickles = miniimagenet.load_splits(tmp_path, allow_pickle=True)
    written = miniimagenet.convert_pickles_to_npz(tmp_path)
    assert [path.name for path in written] == [
        "mini-imagenet-train.npz", "mini-imagenet-validation.npz", "mini-imagenet-test.npz"]
    with np.load(written[0], allow_pickle=False) as data:
        assert set(data.files) == {"image_data", "class_names", "class_indices"}
    assert not list(tmp_path.glob("*.part"))
    # The npz is preferred over the pickles still there, and needs no opt-in.
    assert miniimagenet.detect_layout(tmp_path) == "npz"
    for path in tmp_path.glob("*.pkl"):
        path.unlink()
    from_npz = miniimagenet.load_splits(tmp_path)
    for split, (images, names) in from_npz.items():
        assert names == from_pickles[split][1]
        np.testing.assert_array_equal(images, from_pickles[split][0])


def test_conversion_is_all_or_nothing(tmp_path):
    write_miniimagenet(tmp_path, "pickle")
    (tmp_path / PICKLE_NAMES["test"]).unlink()
    with pytest.raises(DataError, match="mini-imagenet-cache-test.pkl is missing"):
        miniimagenet.convert_pickles_to_npz(tmp_path)
    assert not list(tmp_path.glob("*.npz*"))


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_folder_without_any_layout_names_folder_and_layouts(tmp_path, make):
    folder = tmp_path / "mini"
    if make == "empty":
        folder.mkdir()
        (folder / "README.txt").write_text("nothing here")
    with pytest.raises(DataError) as caught:
        miniimagenet.load_splits(folder)
    message = str(caught.value)
    assert str(folder) in message
    for marker in ("train.csv", "images/", ".npz", ".pkl"):
        assert marker in message


def test_csv_image_missing_from_images_folder_is_named(tmp_path):
    write_miniimagenet(tmp_path, "csv")
    (tmp_path / "images" / "n0100000100000002.jpg").unlink()
    with pytest.raises(DataError) as caught:
        miniimagenet.load_split(tmp_path, "val")
    assert "n0100000100000002.jpg" in str(caught.value) and str(tmp_path / "images") in str(caught.value)


def test_csv_split_file_missing_is_named_while_other_splits_load(tmp_path):
    write_miniimagenet(tmp_path, "csv")
    (tmp_path / "test.csv").unlink()
    assert miniimagenet.load_split(tmp_path, "train")[0].shape[0] == 4
    with pytest.raises(DataError, match=r"test\.csv is missing"):
        miniimagenet.load_split(tmp_path, "test")


@pytest.mark.parametrize(("text", "complaint"), [
    ("name,class\nn0153282900000005.jpg,n01532829\n", "header"),
    ("filename,label\nn0153282900000005.jpg\n", "line 2"),
    ("filename,label\n../secret.jpg,n01532829\n", "line 2"),
    ("filename,label\n", "no images"),
])
def test_malformed_csv_is_reported(tmp_path, text, complaint):
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(DataError, match=complaint) as caught:
        miniimagenet.load_split(tmp_path, "train")
    assert str(tmp_path / "train.csv") in str(caught.value)


def test_classes_with_unequal_image_counts_are_reported(tmp_path):
    write_miniimagenet(tmp_path, "csv")
    csv_path = tmp_path / "train.csv"
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(row for row in rows if row != "n0000000000000003.jpg,n00000000") + "\n")
    with pytest.raises(DataError, match="class n00000000 has 2 images"):
        miniimagenet.load_split(tmp_path, "train")


@pytest.mark.parametrize(("cache", "complaint"), [
    ({"image_data": np.zeros((2, 84, 84, 3), np.uint8)}, "image_data and class_dict"),
    ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": 0}}, "index lists"),
    ({"image_data": np.zeros((2, 84, 84, 3), np.float32), "class_dict": {"n1": [0, 1]}}, "uint8"),
    ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 2]}}, "outside"),
    ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0], "n2": []}}, "class n2 has 0"),
])
def test_malformed_pickle_cache_is_reported(tmp_path, cache, complaint):
    (tmp_path / PICKLE_NAMES["train"]).write_bytes(pickle.dumps(cache))
    with pytest.raises(DataError, match=complaint):
        miniimagenet.load_split(tmp_path, "train", allow_pickle=True)


@pytest.mark.parametrize(("arrays", "complaint"), [
    (None, "cannot read"),
    ({"image_data": np.zeros((1, 8, 8, 3), np.uint8), "class_names": np.array(["n1"])}, "class_indices"),
    ({"image_data": np.zeros((1, 8, 8, 3), np.uint8), "class_names": np.array(["n1"], dtype=object),
      "class_indices": np.zeros((1, 1), np.int64)}, "cannot read"),
])
def test_malformed_npz_is_reported(tmp_path, arrays, complaint):
    path = tmp_path / "mini-imagenet-train.npz"
    if arrays is None:
        path.write_bytes(b"not a zip")
    else:
        with path.open("wb") as f:
            np.savez(f, **arrays)
    with pytest.raises(DataError, match=complaint) as caught:
        miniimagenet.load_split(tmp_path, "train")
    assert str(path) in str(caught.value)


# ---- D'Claw ------------------------------------------------------------------------------------

def test_split_one_matches_the_paper_and_every_split_partitions_the_ten_objects():
    assert dclaw.split_objects(1) == {"train": [1, 2, 3, 6, 7, 8], "val": [4, 9], "test": [5, 10]}
    for split in (1, 2, 3):
        lists = dclaw.split_objects(split)
        assert [len(lists[name]) for name in ("train", "val", "test")] == [6, 2, 2]
        assert sorted(sum(lists.values(), [])) == list(range(1, 11))
    assert dclaw.split_objects(2)["test"] == [4, 9] and dclaw.split_objects(3)["test"] == [3, 8]
    with pytest.raises(ValueError, match="split"):
        dclaw.split_objects(4)


def test_flat_layout_gives_neg_pos_pairs_per_object(tmp_path):
    write_dclaw(tmp_path)
    splits = dclaw.load_splits(tmp_path, 1)
    for name, objects in dclaw.split_objects(1).items():
        images, names = splits[name]
        assert images.shape == (2 * len(objects), 3, 84, 84, 3) and images.dtype == np.uint8
        assert names == [f"obj{obj}_{outcome}" for obj in objects for outcome in ("neg", "pos")]
        np.testing.assert_array_equal(spelled(images), expected_spelling(objects, 3))


def test_images_are_resized_to_the_requested_size(tmp_path):
    write_dclaw(tmp_path, size=20)
    images, _ = dclaw.load_splits(tmp_path, 2, image_size=84)["val"]
    assert images.shape == (4, 3, 84, 84, 3)
    np.testing.assert_array_equal(spelled(images), expected_spelling([3, 8], 3))
    assert np.ptp(images.astype(int), axis=(2, 3)).max() <= 1  # a constant image stays constant


def test_objects_keep_the_smaller_outcome_count_and_splits_the_smallest_class(tmp_path):
    write_dclaw(tmp_path, objects=(1, 2, 3, 6, 7, 8), counts=(3, 4))
    write_dclaw(tmp_path, objects=(4, 9, 5, 10), counts=(2, 3))
    objects = dclaw.load_objects(tmp_path)
    assert sorted(objects) == list(range(1, 11))
    assert objects[1].shape == (2, 3, 84, 84, 3) and objects[4].shape == (2, 2, 84, 84, 3)
    np.testing.assert_array_equal(spelled(objects[1]), expected_spelling([1], 3))
    assert dclaw.load_splits(tmp_path, 1)["train"][0].shape[1] == 3
    assert dclaw.load_splits(tmp_path, 2)["train"][0].shape[1] == 2  # objects 5 and 10 have 2 each


def test_published_split_folders_are_read_as_they_are(tmp_path):
    for name, objects in dclaw.split_objects(1).items():
        write_dclaw(tmp_path / f"{name}1", objects=tuple(objects), counts=(2, 2))
    splits = dclaw.load_splits(tmp_path, 1)
    assert splits["test"][1] == ["obj5_neg", "obj5_pos", "obj10_neg", "obj10_pos"]
    np.testing.assert_array_equal(spelled(splits["train"][0]), expected_spelling([1, 2, 3, 6, 7, 8], 2))
    with pytest.raises(DataError, match="train2"):
        dclaw.load_splits(tmp_path, 2)


def test_split_folder_with_other_objects_is_reported(tmp_path):
    for name, objects in {"train": (1, 2, 3, 6, 7, 8), "val": (4, 5), "test": (5, 10)}.items():
        write_dclaw(tmp_path / f"{name}1", objects=objects, counts=(1, 1))
    with pytest.raises(DataError, match=r"holds objects \[4, 5\].*\[4, 9\]"):
        dclaw.load_splits(tmp_path, 1)


def test_missing_neg_folder_is_reported(tmp_path):
    write_dclaw(tmp_path)
    for path in (tmp_path / "obj3_neg").iterdir():
        path.unlink()
    (tmp_path / "obj3_neg").rmdir()
    with pytest.raises(DataError) as caught:
        dclaw.load_splits(tmp_path, 1)
    message = str(caught.value)
    assert str(tmp_path) in message and "no obj3_neg" in message and "objN_pos" in message


def test_folder_without_object_folders_is_reported(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError) as caught:
        dclaw.load_objects(tmp_path)
    assert str(tmp_path) in str(caught.value) and "objN_neg" in str(caught.value)


def test_split_needing_an_absent_object_is_reported(tmp_path):
    write_dclaw(tmp_path, objects=(1, 2, 3, 5, 6, 7, 8, 10))
    with pytest.raises(DataError, match=r"objects \[4, 9\] in val.*no obj4_pos/obj4_neg, obj9_pos/obj9_neg") as caught:
        dclaw.load_splits(tmp_path, 1)
    assert str(tmp_path) in str(caught.value)


def test_outcome_folder_without_images_is_reported(tmp_path):
    write_dclaw(tmp_path, objects=(1,))
    for path in (tmp_path / "obj1_pos").iterdir():
        path.unlink()
    (tmp_path / "obj1_pos" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="obj1_pos holds no PNG or JPEG"):
        dclaw.load_objects(tmp_path)
