"""params.yaml validation: the shipped file parses; bad values give messages naming key, value, rule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from noisymaml.datasets.base import FetchSettings
from noisymaml.datasets.dclaw import DClawSettings
from noisymaml.datasets.omniglot import OmniglotSettings
from noisymaml.datasets.sinusoid import SinusoidSettings
from noisymaml.errors import ParamError
from noisymaml.pipeline.params import (
    AlgorithmsParams,
    FeedbackParams,
    NoiseParams,
    check_method,
    parse_dataset,
    parse_datasets,
    parse_device,
    parse_method_lists,
    parse_section,
    parse_seed,
    read_params,
    trained_methods,
)
from noisymaml.pipeline.run import gradient_noise


@pytest.fixture
def shipped(root) -> dict:
    return read_params(root / "params.yaml")


def error_of(data: dict, key: str, schema) -> str:
    with pytest.raises(ParamError) as info:
        parse_section(data, key, schema)
    return str(info.value)


def changed(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


# --- the shipped file ---------------------------------------------------------------------

def test_shipped_params_parse_in_every_section(shipped, root):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    noise = parse_section(shipped, "noise", NoiseParams)
    assert noise.model_dump() == raw["noise"]
    assert gradient_noise(noise).active
    feedback = parse_section(shipped, "feedback", FeedbackParams)
    assert feedback.model_dump() == raw["feedback"]
    sinusoid = parse_dataset(shipped, "sinusoid")
    assert isinstance(sinusoid, SinusoidSettings)
    assert sinusoid.model_dump() == raw["sinusoid"]
    omniglot = parse_dataset(shipped, "omniglot")
    assert isinstance(omniglot, OmniglotSettings)
    assert omniglot.tasks.ways == raw["omniglot"]["tasks"]["ways"]
    assert omniglot.tasks.split.train == raw["omniglot"]["tasks"]["split"]["train"]
    assert parse_seed(shipped) == raw["seed"]
    assert parse_device(shipped) == raw["device"]
    algorithms = parse_section(shipped, "algorithms", AlgorithmsParams)
    assert algorithms.mr_maml_w.model_dump() == raw["algorithms"]["mr_maml_w"]
    assert parse_method_lists(shipped) == (raw["methods"], raw["noisy_methods"])
    assert parse_datasets(shipped) == raw["datasets"]
    assert parse_section(shipped, "fetch", FetchSettings).model_dump() == raw["fetch"]
    for name in ("miniimagenet", "dclaw"):  # not run by default, but ready to select
        assert parse_dataset(shipped, name).model_dump(exclude_unset=True) == raw[name]
    assert sorted(raw) == ["algorithms", "datasets", "dclaw", "device", "feedback", "fetch", "methods",
                           "miniimagenet", "noise", "noisy_methods", "omniglot", "seed", "sinusoid"]


@pytest.mark.parametrize("value", [[], ["omniglot", "omniglot"], ["imagenet"], "omniglot", None])
def test_datasets_must_be_distinct_known_names(shipped, value):
    with pytest.raises(ParamError, match="`datasets`"):
        parse_datasets({**shipped, "datasets": value})


def test_dclaw_split_and_ways_are_checked(shipped):
    message = error_of(changed(shipped, "dclaw.tasks.split", 4), "dclaw", DClawSettings)
    assert "`dclaw.tasks.split` = 4" in message
    message = error_of(changed(shipped, "dclaw.tasks.ways", 5), "dclaw", DClawSettings)
    assert "`dclaw.tasks.ways` = 5" in message


# --- bad values ---------------------------------------------------------------------------

def test_negative_sigma(shipped):
    message = error_of(changed(shipped, "noise.sigma", -0.1), "noise", NoiseParams)
    assert "`noise.sigma`" in message and "-0.1" in message
    assert "greater than or equal to 0" in message
    assert "params.yaml" in message


def test_unknown_where_lists_the_allowed_values(shipped):
    message = error_of(changed(shipped, "noise.where", "sideways"), "noise", NoiseParams)
    assert "`noise.where`" in message and "'sideways'" in message
    for allowed in ("inner", "outer", "both"):
        assert allowed in message


def test_unknown_schedule(shipped):
    message = error_of(changed(shipped, "noise.schedule", "cosine"), "noise", NoiseParams)
    assert "`noise.schedule`" in message and "'cosine'" in message
    for allowed in ("constant", "anneal", "step"):
        assert allowed in message


def test_unknown_omniglot_archive_set_lists_the_allowed_values(shipped):
    message = error_of(changed(shipped, "fetch.omniglot", "big"), "fetch", FetchSettings)
    assert "`fetch.omniglot` = 'big'" in message
    for allowed in ("small", "full", "own"):
        assert allowed in message


def test_zero_ways(shipped):
    message = error_of(changed(shipped, "omniglot.tasks.ways", 0), "omniglot", OmniglotSettings)
    assert "`omniglot.tasks.ways` = 0" in message
    assert "greater than or equal to 2" in message


def test_misspelt_key_is_reported_as_unknown(shipped):
    data = copy.deepcopy(shipped)
    data["noise"]["sigam"] = data["noise"].pop("sigma")
    message = error_of(data, "noise", NoiseParams)
    assert "unknown key `noise.sigam`" in message
    assert "missing key `noise.sigma`" in message
    nested = changed(shipped, "omniglot.tasks.wyas", 5)
    assert "unknown key `omniglot.tasks.wyas`" in error_of(nested, "omniglot", OmniglotSettings)


def test_train_bins_above_bins(shipped):
    data = changed(shipped, "sinusoid.tasks.train_bins", 25)
    message = error_of(data, "sinusoid", SinusoidSettings)
    assert "`sinusoid.tasks`" in message
    assert "train_bins (25)" in message and "bins (20)" in message


def test_amp_min_above_amp_max(shipped):
    data = changed(shipped, "sinusoid.tasks.amp_min", 5.0)
    message = error_of(data, "sinusoid", SinusoidSettings)
    assert "amp_min (5.0)" in message and "amp_max (4.0)" in message


@pytest.mark.parametrize("split, fragment", [
    ({"train": 100, "val": 0.1, "test": 0.2}, "all three as counts (>= 1) or all as fractions"),
    ({"train": 0.7, "val": 0.2, "test": 0.3}, "fractions add up to 1.2"),
    ({"train": 100.5, "val": 20, "test": 60}, "whole numbers"),
])
def test_bad_splits(shipped, split, fragment):
    message = error_of(changed(shipped, "omniglot.tasks.split", split), "omniglot", OmniglotSettings)
    assert "`omniglot.tasks.split`" in message
    assert fragment in message


@pytest.mark.parametrize("split", [{"train": 0.6, "val": 0.1, "test": 0.3},
                                   {"train": 1100, "val": 100, "test": 423}])
def test_good_splits(shipped, split):
    parsed = parse_section(changed(shipped, "omniglot.tasks.split", split), "omniglot", OmniglotSettings)
    assert parsed.tasks.split.train == split["train"]


def test_every_problem_is_reported_at_once(shipped):
    data = changed(changed(shipped, "noise.sigma", -1), "noise.where", "sideways")
    message = error_of(data, "noise", NoiseParams)
    assert "`noise.sigma`" in message and "`noise.where`" in message
    assert len(message.splitlines()) == 2


def test_missing_section(shipped):
    data = copy.deepcopy(shipped)
    del data["feedback"]
    assert "missing section `feedback`" in error_of(data, "feedback", FeedbackParams)


def test_unknown_similarity(shipped):
    message = error_of(changed(shipped, "feedback.similarity", "euclid"), "feedback", FeedbackParams)
    assert "`feedback.similarity`" in message and "cosine" in message and "dot" in message


@pytest.mark.parametrize("seed", [-1, 1.5, True, "zero", None])
def test_bad_seed(seed):
    with pytest.raises(ParamError, match="`seed`"):
        parse_seed({"seed": seed})


@pytest.mark.parametrize("device, ok", [("auto", True), ("cpu", True), ("cuda", True),
                                        ("cuda:1", True), ("gpu", False), ("cuda:x", False),
                                        (3, False)])
def test_device_values(device, ok):
    if ok:
        assert parse_device({"device": device}) == device
    else:
        with pytest.raises(ParamError, match="auto, cpu, cuda, cuda:N"):
            parse_device({"device": device})


def test_device_defaults_to_auto():
    assert parse_device({}) == "auto"


def test_unknown_dataset_and_method():
    with pytest.raises(ParamError, match="sinusoid, omniglot"):
        parse_dataset({}, "mnist")
    with pytest.raises(ParamError, match="maml, fomaml, mr_maml_w, meta_aug, each optionally "
                                         "prefixed noisy_"):
        check_method("reptile")
    assert check_method("noisy_maml") == "noisy_maml"
    assert check_method("noisy_mr_maml_w") == "noisy_mr_maml_w"
    with pytest.raises(ParamError, match="noisy_noisy_maml"):
        check_method("noisy_noisy_maml")


@pytest.mark.parametrize("key, value, message", [
    ("methods", "maml", "must be a list of algorithm names"),
    ("methods", ["maml", "reptile"], "each of maml, fomaml, mr_maml_w, meta_aug at most once"),
    ("noisy_methods", ["maml", "maml"], "at most once"),
])
def test_method_lists_are_checked(shipped, key, value, message):
    with pytest.raises(ParamError, match=f"`{key}` = .*{message}"):
        parse_method_lists(changed(shipped, key, value))


def test_trained_methods_name_the_noisy_ones(shipped):
    data = changed(changed(shipped, "methods", ["fomaml", "meta_aug"]), "noisy_methods", ["mr_maml_w"])
    assert trained_methods(data) == ["fomaml", "meta_aug", "noisy_mr_maml_w"]


def test_feedback_method_must_be_a_method(shipped):
    assert "feedback.method" in error_of(changed(shipped, "feedback.method", "reptile"), "feedback",
                                         FeedbackParams)


@pytest.mark.parametrize("dotted, value", [("mr_maml_w.beta", -1.0), ("mr_maml_w.init_scale", 0.0),
                                           ("mr_maml_w.stochastic_layers", 0),
                                           ("mr_maml_w.stochastic_layers", "some"),
                                           ("meta_aug.range", 0.0)])
def test_bad_algorithm_settings_name_the_key(shipped, dotted, value):
    message = error_of(changed(shipped, f"algorithms.{dotted}", value), "algorithms", AlgorithmsParams)
    assert f"algorithms.{dotted}" in message


def test_read_params_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ParamError, match="file not found"):
        read_params(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("noise: [unclosed\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        read_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ParamError, match="expected a mapping"):
        read_params(listing)


def test_error_messages_name_the_given_path(shipped, tmp_path: Path):
    path = tmp_path / "other.yaml"
    with pytest.raises(ParamError, match="other.yaml"):
        parse_section(changed(shipped, "noise.sigma", -1), "noise", NoiseParams, path)


# --- values that pass their own field's check but cannot work ---

def test_bad_batched_tasks_names_the_key_and_the_choices(shipped):
    message = error_of(changed(shipped, "sinusoid.train.batched_tasks", "maybe"), "sinusoid",
                       SinusoidSettings)
    assert "`sinusoid.train.batched_tasks` = 'maybe'" in message
    assert "auto" in message and "true" in message.lower() and "false" in message.lower()


@pytest.mark.parametrize("width", [0, -4])
def test_hidden_layer_widths_must_be_positive(shipped, width):
    message = error_of(changed(shipped, "sinusoid.model.hidden", [40, width]), "sinusoid",
                       SinusoidSettings)
    assert "`sinusoid.model.hidden.1`" in message


def test_valid_omniglot_params_always_give_a_buildable_network(shipped):
    """Either validation refuses the combination (naming image_size), or the network builds."""
    from noisymaml.core.models import Conv4

    data = changed(changed(shipped, "omniglot.tasks.image_size", 8), "omniglot.model.downsample",
                   "maxpool")
    try:
        parsed = parse_section(data, "omniglot", OmniglotSettings)
    except ParamError as err:
        assert "image_size" in str(err) and "maxpool" in str(err)
        return
    Conv4(1, parsed.tasks.image_size, parsed.tasks.ways, filters=4,
          downsample=parsed.model.downsample)


def test_smallest_images_work_with_strided_convolutions(shipped):
    from noisymaml.core.models import Conv4

    data = changed(shipped, "omniglot.tasks.image_size", 8)
    parsed = parse_section(data, "omniglot", OmniglotSettings)
    assert parsed.model.downsample == "stride"
    Conv4(1, parsed.tasks.image_size, 5, filters=4, downsample="stride")  # builds fine


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_sigma_must_be_finite(shipped, value):
    message = error_of(changed(shipped, "noise.sigma", value), "noise", NoiseParams)
    assert "`noise.sigma`" in message and "finite" in message


def test_params_are_read_as_dvc_writes_them(tmp_path: Path):
    """After `dvc exp run -S`, quotes are gone: `off` must stay the string DVC hashed, not False."""
    path = tmp_path / "params.yaml"
    path.write_text("omniglot:\n  tasks:\n    rotations: off\n    answer: yes\n  maml:\n    inner_lr: 1e-3\n"
                    "sinusoid:\n  model:\n    hidden:\n    - 40\n    - 40\n")
    assert read_params(path) == {"omniglot": {"tasks": {"rotations": "off", "answer": "yes"},
                                              "maml": {"inner_lr": 0.001}},
                                 "sinusoid": {"model": {"hidden": [40, 40]}}}


# --- strict values, unknown top-level keys, YAML errors ------------------------------------

@pytest.mark.parametrize("dotted, value, schema", [
    ("noise.sigma", "0.1", NoiseParams), ("noise.sigma", True, NoiseParams),
    ("sinusoid.train.iterations", "4", SinusoidSettings),
    ("sinusoid.train.iterations", True, SinusoidSettings),
    ("sinusoid.train.iterations", 4.0, SinusoidSettings),
    ("fetch.download", "yes", FetchSettings),
])
def test_values_of_the_wrong_type_are_refused_not_coerced(shipped, dotted, value, schema):
    message = error_of(changed(shipped, dotted, value), dotted.split(".")[0], schema)
    assert f"`{dotted}` = {value!r}" in message


def test_an_integer_is_a_valid_float(shipped):
    assert parse_section(changed(shipped, "noise.sigma", 1), "noise", NoiseParams).sigma == 1.0


def test_unknown_top_level_keys_are_refused_with_a_hint(root, tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text((root / "params.yaml").read_text() + "sead: 3\nnosie:\n  sigma: 0.2\n")
    with pytest.raises(ParamError) as info:
        read_params(path)
    assert str(info.value).splitlines() == [f"{path}: unknown key `sead` (misspelt?)",
                                            f"{path}: unknown key `nosie` (misspelt?)"]


def test_a_yaml_error_is_one_line_with_its_line_and_column(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\nnoise:\n  sigma: 0.1\n where: both\n")
    with pytest.raises(ParamError) as info:
        read_params(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML at line 4, column 2: ")
