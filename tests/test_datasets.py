"""The Omniglot episodes stage on the real shared archives: character splits, fixed episodes, refusals."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch

from noisymaml.core.files import load_file
from noisymaml.datasets import DATASETS
from noisymaml.datasets.base import FetchSettings
from noisymaml.datasets.omniglot import OmniglotSettings
from noisymaml.errors import ParamError
from noisymaml.pipeline.params import read_params

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "omniglot"

pytestmark = pytest.mark.skipif(not list(SHARED.glob("*.zip")), reason=f"no archives in {SHARED}")


def omniglot_params(**tasks) -> OmniglotSettings:
    raw = copy.deepcopy(read_params(ROOT / "params.yaml")["omniglot"])
    raw["tasks"].update({"ways": 5, "test_episodes": 30, "val_episodes": 10, "feedback_classes": 8,
                         "feedback_episodes": 6, "split": {"train": 40, "val": 10, "test": 20}, **tasks})
    return OmniglotSettings.model_validate(raw)


def build_omniglot(params: OmniglotSettings, seed: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return DATASETS["omniglot"].build_episodes(params, seed, SHARED, FetchSettings(), out)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("episodes")
    build_omniglot(omniglot_params(), 0, out)
    return out


def image_keys(images: torch.Tensor) -> set[bytes]:
    """One key per image [C, D, 1, H, W] -> bytes of each drawing."""
    return {image.numpy().tobytes() for image in images.flatten(0, 1)}


def test_splits_are_disjoint_characters_of_the_asked_sizes(built):
    pool = load_file(built / "pool.pt")
    characters = {split: set(names) for split, names in pool["classes"].items()}
    assert {split: len(names) for split, names in characters.items()} == {
        "train": 40, "val": 10, "feedback": 8, "test": 12}
    for a, b in itertools.combinations(characters, 2):
        assert not characters[a] & characters[b], (a, b)
    assert {split: images.shape[0] for split, images in pool["images"].items()} == {
        "train": 40, "val": 10, "feedback": 8, "test": 12}


def test_feedback_and_heldout_test_episodes_share_no_class_and_no_image(built):
    """Held out means sharing no class and no image with what fed back."""
    pool = load_file(built / "pool.pt")
    assert not image_keys(pool["images"]["feedback"]) & image_keys(pool["images"]["test"])
    feedback, test = load_file(built / "feedback.pt"), load_file(built / "test.pt")
    assert feedback["classes"].shape == (6, 5) and test["classes"].shape == (30, 5)
    assert feedback["classes"].max() < 8 and test["classes"].max() < 12  # each within its own pool
    assert test["classes"].unique().numel() == 12  # the held-out episodes use the held-out classes


def test_no_test_drawing_is_ever_a_training_drawing(built):
    pool = load_file(built / "pool.pt")
    assert not image_keys(pool["images"]["test"]) & image_keys(pool["images"]["train"])


def test_training_tasks_only_use_training_characters(built):
    data = DATASETS["omniglot"].load(omniglot_params(), built, torch.device("cpu"))
    pool = load_file(built / "pool.pt")
    train_keys, test_keys = image_keys(pool["images"]["train"]), image_keys(pool["images"]["test"])
    tasks = data.train.sample(8, torch.Generator().manual_seed(1))
    drawn = {(image * 255).round().to(torch.uint8).numpy().tobytes()
             for image in torch.cat([tasks.support_x, tasks.query_x], 1).flatten(0, 2)}
    assert drawn <= train_keys and not drawn & test_keys


def test_nme_training_labels_are_fixed_per_character(built):
    data = DATASETS["omniglot"].load(omniglot_params(), built, torch.device("cpu"))
    label_of: dict[bytes, int] = {}
    tasks = data.train.sample(40, torch.Generator().manual_seed(2))
    for x, y in zip(tasks.support_x.flatten(0, 1), tasks.support_y.flatten()):
        key = (x * 255).round().to(torch.uint8).numpy().tobytes()
        assert label_of.setdefault(key, int(y)) == int(y)
    assert len(set(label_of.values())) == 5


def test_same_seed_same_files_other_seed_other_split(built, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    build_omniglot(omniglot_params(), 0, again)
    build_omniglot(omniglot_params(), 1, other)
    for name in ("pool.pt", "val.pt", "test.pt"):
        first, second = load_file(built / name), load_file(again / name)
        assert repr(first) == repr(second), name
    assert load_file(built / "pool.pt")["classes"] != load_file(other / "pool.pt")["classes"]


def test_test_episodes_are_standard_tasks_over_test_characters(built):
    episodes = load_file(built / "test.pt")
    classes = episodes["classes"]
    assert classes.shape == (30, 5)
    assert classes.max() < 12  # indices into the 12 held-out test characters
    assert all(len(set(row.tolist())) == 5 for row in classes)


def test_rotations_as_classes_quadruple_every_split(tmp_path):
    build_omniglot(omniglot_params(rotations="classes"), 0, tmp_path)
    pool = load_file(tmp_path / "pool.pt")
    assert {s: images.shape[0] for s, images in pool["images"].items()} == {
        "train": 160, "val": 40, "feedback": 8, "test": 72}


def test_too_few_characters_for_the_ways_names_the_key(tmp_path):
    with pytest.raises(ParamError, match="`omniglot.tasks.ways` = 20 but the val split has only 10"):
        build_omniglot(omniglot_params(ways=20), 0, tmp_path)


def test_asking_for_more_characters_than_the_archives_hold(tmp_path):
    params = omniglot_params(split={"train": 200, "val": 30, "test": 30})
    with pytest.raises(ParamError, match="asks for 260 characters .* archives hold 242"):
        build_omniglot(params, 0, tmp_path)
