"""`noisymaml predict`: adapt a (tiny, untrained) Conv-4 to a support folder and classify a query folder."""

import csv
import io
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from faults import full_disk
from noisymaml import predict
from noisymaml.cli import main
from noisymaml.core.models import build_model, init_params, save_model
from noisymaml.datasets import omniglot
from noisymaml.errors import DataError, OutputError
from noisymaml.methods import METHODS

CLASSES = ["bar", "ring", "slash"]
SPEC = {"kind": "conv4", "in_channels": 1, "image_size": 28, "n_classes": 3, "filters": 8,
        "downsample": "stride"}


def draw(shape: str, size: int, variant: int = 0, mode: str = "L") -> Image.Image:
    """Dark strokes on white paper, as Omniglot; `variant` moves the stroke a little."""
    image = Image.new(mode, (size, size), "white")
    pen = ImageDraw.Draw(image)
    s, d = size / 28, variant
    width = max(1, round(3 * s))
    if shape == "bar":
        pen.line([(4 * s, (14 + d) * s), (24 * s, (14 + d) * s)], fill="black", width=width)
    elif shape == "ring":
        pen.ellipse([(6 + d) * s, 6 * s, (22 + d) * s, 22 * s], outline="black", width=width)
    else:
        pen.line([((4 + d) * s, 24 * s), ((24 + d) * s, 4 * s)], fill="black", width=width)
    return image


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


INFO = {"algorithm": "maml", "algorithm_settings": {},
        "meta_test": {"inner_lr": 0.1, "inner_steps": 5, "first_order": True},
        "inputs": {"image_size": 28, "channels": 1, "colour": "grey_inverted", "query_batch": 3}}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    model = build_model(SPEC)
    path = tmp_path_factory.mktemp("model") / "maml.pt"
    save_model(path, SPEC, init_params(model, seed=0), INFO)
    return path


def model_with(tmp_path: Path, spec: dict = SPEC, **info) -> Path:
    path = tmp_path / "model.pt"
    save_model(path, spec, init_params(build_model(spec), seed=0), {**INFO, **info})
    return path


@pytest.fixture
def support(tmp_path) -> Path:
    """3 classes x 3 images: several sizes, PNG and JPEG, one RGB."""
    root = tmp_path / "support"
    for name in CLASSES:
        save(draw(name, 28, 0), root / name / "a.png")
        save(draw(name, 105, 1), root / name / "b.png")
        save(draw(name, 60, -1, mode="RGB"), root / name / "c.jpg")
    return root


@pytest.fixture
def query(tmp_path) -> Path:
    """Flat query folder: 6 images, assorted sizes and formats."""
    root = tmp_path / "query"
    for i, name in enumerate(CLASSES):
        save(draw(name, 40 + 10 * i, 2), root / f"{name}_1.png")
        save(draw(name, 80, -2, mode="RGB"), root / f"{name}_2.jpeg")
    return root


def run(tmp_path: Path, model: Path, support: Path, query: Path, *extra: str):
    output = tmp_path / "out" / "predictions.csv"
    result = CliRunner().invoke(main, ["predict", "--model", str(model), "--support", str(support),
                                       "--query", str(query), "--output", str(output), *extra])
    rows = list(csv.DictReader(output.open())) if output.exists() else None
    return result, rows


def assert_clean_error(result, *fragments: str) -> None:
    """Exit status 2, one `error:` message holding the fragments, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- working runs ------------------------------------------------------------------------------

def test_end_to_end_writes_one_row_per_query_image(tmp_path, model_file, support, query):
    result, rows = run(tmp_path, model_file, support, query)
    assert result.exit_code == 0, result.output
    assert [row["file"] for row in rows] == sorted(p.name for p in query.iterdir())
    assert list(rows[0]) == ["file", "predicted_class", "probability"]
    for row in rows:
        assert row["predicted_class"] in CLASSES
        assert 1 / 3 <= float(row["probability"]) <= 1
        assert len(row["probability"].split(".")[1]) == 4
    assert "predicted 6 image(s) into 3 classes (bar, ring, slash)" in result.stdout
    assert "accuracy" not in result.stdout


def test_default_output_is_predictions_csv_in_the_current_folder(tmp_path, model_file, support, query,
                                                                monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--support", str(support),
                                       "--query", str(query)])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader((tmp_path / "cwd" / "predictions.csv").open()))) == 6


def test_query_class_folders_give_accuracy(tmp_path, model_file, support):
    query = tmp_path / "labelled"
    for name in CLASSES:
        save(draw(name, 50, 2), query / name / "x.png")
        save(draw(name, 50, -2), query / name / "y.png")
    result, rows = run(tmp_path, model_file, support, query)
    assert result.exit_code == 0, result.output
    assert [row["file"] for row in rows] == [f"{c}/{f}" for c in CLASSES for f in ("x.png", "y.png")]
    assert "accuracy " in result.stdout and "/6)" in result.stdout


def test_adaptation_learns_the_support_set(tmp_path, support):
    """With enough steps, an untrained network fits the 3 shapes: the support images, used as
    query (one episode of 3 ways x 3 query shots), come out with their own classes (which the
    unadapted network does not manage)."""
    model_file = model_with(tmp_path, inputs={**INFO["inputs"], "query_batch": 9})
    result, rows = run(tmp_path, model_file, support, support, "--steps", "20", "--inner-lr", "0.5")
    assert result.exit_code == 0, result.output
    assert len(rows) == 9
    assert all(row["file"].split("/")[0] == row["predicted_class"] for row in rows), rows
    assert "accuracy 1.0000 (9/9)" in result.stdout

    assert min(float(row["probability"]) for row in rows) > 0.9

    result, rows = run(tmp_path, model_file, support, support, "--steps", "0")
    assert result.exit_code == 0, result.output
    assert np.mean([float(row["probability"]) for row in rows]) < 0.7


def test_corrupt_query_image_is_skipped_and_the_rest_predicted(tmp_path, model_file, support, query):
    (query / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    data = io.BytesIO()
    draw("ring", 200).save(data, format="JPEG")
    (query / "truncated.jpg").write_bytes(data.getvalue()[:300])
    (query / "notes.txt").write_text("not an image, ignored")
    result, rows = run(tmp_path, model_file, support, query)
    assert result.exit_code == 0, result.output
    assert len(rows) == 6 and "broken.png" not in [row["file"] for row in rows]
    assert "broken.png: cannot read image" in result.stderr
    assert "truncated.jpg: cannot read image" in result.stderr
    assert "skipped 2 unreadable image(s)" in result.stdout
    assert "Traceback" not in result.output


def test_decompression_bombs_are_refused_per_file(tmp_path, model_file, support, query, monkeypatch):
    # Limit 12000 pixels: support images (at most 105 x 105 = 11025) pass; 100 x 150 = 15000 only
    # warns in PIL (taken as an error); 200 x 200 = 40000 > 2 x 12000 raises DecompressionBombError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_000)
    save(Image.new("L", (100, 150), "white"), query / "warns.png")
    save(Image.new("L", (200, 200), "white"), query / "bomb.png")
    with pytest.raises(predict.ImageError, match="decompression bomb"):
        predict.read_image(query / "bomb.png", 28)
    result, rows = run(tmp_path, model_file, support, query)
    assert result.exit_code == 0, result.output
    assert len(rows) == 6
    for name in ("warns.png", "bomb.png"):
        assert f"{name}: image too large, refused as a possible decompression bomb" in result.stderr
    assert "skipped 2" in result.stdout


def test_images_are_converted_as_in_training(tmp_path):
    png = io.BytesIO()
    draw("ring", 105, mode="1").save(png, format="PNG")
    (tmp_path / "a.png").write_bytes(png.getvalue())
    with zipfile.ZipFile(tmp_path / "o.zip", "w") as zf:
        zf.writestr("A/character01/a.png", png.getvalue())
    with zipfile.ZipFile(tmp_path / "o.zip") as zf:
        expected = omniglot._decode(zf, "A/character01/a.png", 28)
    np.testing.assert_array_equal(predict.read_image(tmp_path / "a.png", 28), expected)
    assert expected.max() > 200 and np.median(expected) == 0  # strokes bright, paper dark


def test_transparent_background_reads_as_white_paper(tmp_path):
    paper = save(draw("slash", 56), tmp_path / "paper.png")
    strokes = Image.new("RGBA", (56, 56), (0, 0, 0, 0))  # transparent black, strokes opaque black
    strokes.putalpha(Image.open(paper).point(lambda v: 255 - v))
    save(strokes, tmp_path / "transparent.png")
    np.testing.assert_array_equal(predict.read_image(tmp_path / "transparent.png", 28),
                                  predict.read_image(paper, 28))


def test_the_models_own_inner_loop_is_used_unless_overridden(tmp_path, support, query):
    stored_zero = model_with(tmp_path, meta_test={"inner_lr": 0.1, "inner_steps": 0, "first_order": True})
    _, by_file = run(tmp_path, stored_zero, support, query)
    _, by_flag = run(tmp_path, stored_zero, support, query, "--steps", "0")
    _, overridden = run(tmp_path, stored_zero, support, query, "--steps", "5")
    assert by_file == by_flag and by_file != overridden


def test_a_model_that_does_not_say_how_it_adapts_needs_the_flags(tmp_path, support, query):
    legacy = tmp_path / "legacy.pt"
    save_model(legacy, SPEC, init_params(build_model(SPEC), seed=0), {"method": "maml"})
    assert_clean_error(run(tmp_path, legacy, support, query)[0], "--steps and --inner-lr")
    result, rows = run(tmp_path, legacy, support, query, "--steps", "5", "--inner-lr", "0.1")
    assert result.exit_code == 0 and len(rows) == 6


def test_rgb_models_read_rgb_images_without_inversion(tmp_path, support, query):
    spec = {**SPEC, "in_channels": 3}
    rgb_model = model_with(tmp_path, spec, inputs={**INFO["inputs"], "channels": 3, "colour": "rgb"})
    result, rows = run(tmp_path, rgb_model, support, query)
    assert result.exit_code == 0, result.output
    assert len(rows) == 6
    red = save(Image.new("RGB", (28, 28), (255, 0, 0)), tmp_path / "red.png")
    assert predict.read_image(red, 28, "rgb")[0, 0].tolist() == [255, 0, 0]


def test_a_prediction_does_not_depend_on_how_many_files_the_folder_holds(tmp_path, model_file, support,
                                                                          query):
    """Query images go through in batches of one evaluation episode (here 3), in sorted order."""
    _, alone = run(tmp_path, model_file, support, query)
    for i in range(4):  # more files, sorted after the others: the first batches are unchanged
        save(draw("ring", 50, i), query / f"zz_extra_{i}.png")
    _, crowded = run(tmp_path, model_file, support, query)
    assert crowded[:6] == alone


# --- errors: one message, exit status 2 ------------------------------------------------------

def test_missing_model_file(tmp_path, support, query):
    result, _ = run(tmp_path, tmp_path / "nope.pt", support, query)
    assert_clean_error(result, "nope.pt", "not found")


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_with_code_is_refused_without_running_it(tmp_path, support, query):
    # The payload is live: plain pickle.load runs it.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))
    assert proof.exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"spec": SPEC, "params": Payload(marker)}))
    result, rows = run(tmp_path, evil, support, query)
    assert_clean_error(result, "evil.pt", "not a noisymaml model file", "refusing to load it")
    assert "weights_only" not in result.output
    assert not marker.exists()
    assert rows is None


def test_plain_tensor_file_is_not_a_model(tmp_path, support, query):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    result, _ = run(tmp_path, tmp_path / "other.pt", support, query)
    assert_clean_error(result, "not a noisymaml model file")


def test_model_that_is_not_an_image_classifier(tmp_path, support, query):
    spec = {"kind": "mlp", "in_features": 1, "hidden": [4], "out_features": 1}
    save_model(tmp_path / "sine.pt", spec, init_params(build_model(spec), 0), {})
    result, _ = run(tmp_path, tmp_path / "sine.pt", support, query)
    assert_clean_error(result, "kind 'mlp'", "not an image classifier")


def test_empty_support_folder(tmp_path, model_file, query):
    (tmp_path / "empty").mkdir()
    result, _ = run(tmp_path, model_file, tmp_path / "empty", query)
    assert_clean_error(result, "--support", "is empty")


def test_support_with_one_class(tmp_path, model_file, query):
    save(draw("bar", 28), tmp_path / "one" / "bar" / "a.png")
    result, _ = run(tmp_path, model_file, tmp_path / "one", query)
    assert_clean_error(result, "only 1 class (bar)", "at least 2")


def test_support_class_count_must_match_the_model(tmp_path, model_file, support, query):
    save(draw("bar", 28, 3), support / "zigzag" / "a.png")
    result, _ = run(tmp_path, model_file, support, query)
    assert_clean_error(result, "has 4 classes", "meta-trained for 3 classes")


def test_support_class_without_images(tmp_path, model_file, support, query):
    for path in (support / "ring").iterdir():
        path.unlink()
    (support / "ring" / "readme.txt").write_text("no images here")
    result, _ = run(tmp_path, model_file, support, query)
    assert_clean_error(result, "without images: ring")


def test_unreadable_support_image_is_fatal(tmp_path, model_file, support, query):
    (support / "slash" / "d.png").write_bytes(b"not a png")
    result, rows = run(tmp_path, model_file, support, query)
    assert_clean_error(result, str(support / "slash" / "d.png"), "support image")
    assert rows is None


def test_empty_query_folder(tmp_path, model_file, support):
    (tmp_path / "q").mkdir()
    result, _ = run(tmp_path, model_file, support, tmp_path / "q")
    assert_clean_error(result, "--query", "holds no images")


def test_query_with_only_unreadable_images(tmp_path, model_file, support):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "x.png").write_bytes(b"nope")
    result, _ = run(tmp_path, model_file, support, tmp_path / "q")
    assert_clean_error(result, "none of its 1 image(s) could be read", "x.png")


def test_query_subfolders_must_be_support_classes(tmp_path, model_file, support):
    save(draw("bar", 28), tmp_path / "q" / "bar" / "a.png")
    save(draw("bar", 28), tmp_path / "q" / "cats" / "a.png")
    save(draw("bar", 28), tmp_path / "q" / "dogs" / "a.png")
    result, _ = run(tmp_path, model_file, support, tmp_path / "q")
    assert_clean_error(result, "cats, dogs are not support classes")


def test_missing_folders(tmp_path, model_file, support):
    result, _ = run(tmp_path, model_file, tmp_path / "nowhere", tmp_path / "q")
    assert_clean_error(result, "--support", "folder not found")


def test_library_refuses_bad_inner_settings():
    with pytest.raises(DataError, match="inner-lr"):
        predict.check_inner(5, float("nan"))
    with pytest.raises(DataError, match="steps"):
        predict.check_inner(-1, 0.1)


@pytest.mark.parametrize("variant", ["encoder", "feature_layers"])
def test_mr_maml_w_models_predict_from_the_posterior_mean(tmp_path, support, query, variant):
    """Its file holds log sigmas besides the network (and, for the encoder variant, an encoder
    in front of it): predict adapts from the posterior mean, the deterministic layers only."""
    settings = {"beta": 1e-3, "init_scale": 0.05, "variant": variant}
    chosen = METHODS["mr_maml_w"](**settings)
    spec = chosen.model_spec(SPEC)
    path = tmp_path / "mr.pt"
    save_model(path, spec, chosen.initial_params(build_model(spec), 0),
               {**INFO, "algorithm": "mr_maml_w", "algorithm_settings": settings})
    result, rows = run(tmp_path, path, support, query)
    assert result.exit_code == 0, result.output
    assert len(rows) == 6


# --- files: names of any bytes, atomic output, broken and hostile model files --------------

def test_file_names_that_are_not_utf8_are_written_as_the_file_system_holds_them(tmp_path, model_file,
                                                                               support, query):
    save(draw("ring", 40), query / os.fsdecode(b"caf\xe9.png"))
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    output.write_text("an earlier run's predictions\n")
    result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--support", str(support),
                                       "--query", str(query), "--output", str(output)])
    assert result.exit_code == 0, (result.output, result.exception)
    written = output.read_bytes()
    assert b"\ncaf\xe9.png," in written and b"earlier" not in written
    with output.open(newline="", errors="surrogateescape") as handle:
        assert {row["file"] for row in csv.DictReader(handle)} == set(os.listdir(query))


def test_a_failed_write_leaves_earlier_predictions_whole(tmp_path):
    output = tmp_path / "predictions.csv"
    output.write_text("earlier predictions\n")
    rows = [predict.Prediction(f"image_{i}.png", "bar", 0.5, None) for i in range(100)]
    with pytest.raises(OutputError, match=f"cannot write {output}: File too large"), full_disk():
        predict.write_predictions(output, rows)
    assert output.read_text() == "earlier predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_empty_model_file(tmp_path, support, query):
    (tmp_path / "empty.pt").write_bytes(b"")
    result, _ = run(tmp_path, tmp_path / "empty.pt", support, query)
    assert_clean_error(result, "not a noisymaml model file", "empty.pt: empty file (0 bytes)")


def test_inflating_model_file_is_refused_unread(tmp_path, support, query, monkeypatch):
    """A model file whose 8 MB of weights are deflated into a few KB: torch.load would inflate it."""
    spec = {**SPEC, "filters": 8}
    params = init_params(build_model(spec), seed=0)
    save_model(tmp_path / "plain.pt", spec, {**params, "padding/zeros": torch.zeros(2_000_000)}, {})
    with zipfile.ZipFile(tmp_path / "plain.pt") as plain, \
            zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as packed:
        for entry in plain.infolist():
            packed.writestr(entry.filename, plain.read(entry))
    read = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: read.append(args))
    result, _ = run(tmp_path, tmp_path / "bomb.pt", support, query)
    assert_clean_error(result, "bomb.pt: compressed contents declaring", "refusing to inflate it")
    assert read == []


def test_model_file_above_the_size_limit_is_refused_unread(tmp_path, model_file, support, query,
                                                          monkeypatch):
    monkeypatch.setattr(predict, "MAX_MODEL_BYTES", 1000)
    result, _ = run(tmp_path, model_file, support, query)
    assert_clean_error(result, "more than the 1000 bytes such a file may hold")


def test_symlink_loop_in_a_support_class_is_not_followed(tmp_path, model_file, support, query):
    (support / "bar" / "loop").symlink_to(support / "bar", target_is_directory=True)
    result, rows = run(tmp_path, model_file, support, query)
    assert result.exit_code == 0, result.output
    assert "after adapting to 9 support image(s)" in result.stdout and len(rows) == 6
