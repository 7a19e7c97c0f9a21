"""core.files: atomic writes that fail cleanly, and .pt files refused before torch reads them."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from faults import full_disk, read_only
from noisymaml.core import files
from noisymaml.core.files import atomic_open, load_fields, load_file, save_atomic, write_json
from noisymaml.errors import DataError, NoisyMamlError, OutputError


def leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


# --- writing --------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["full disk", "read-only folder"])
def test_a_failed_save_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, fault):
    path = tmp_path / "out" / "model.pt"
    save_atomic({"old": torch.arange(3)}, path)
    big = {"new": torch.zeros(10_000)}
    with pytest.raises(OutputError) as info:
        if fault == "full disk":
            with full_disk():
                save_atomic(big, path)
        else:
            with read_only(path.parent, monkeypatch):
                save_atomic(big, path)
    reason = "File too large" if fault == "full disk" else "Permission denied"
    assert str(info.value) == f"cannot write {path}: {reason}"
    assert torch.equal(load_file(path)["old"], torch.arange(3))
    assert leftovers(path.parent, "model.pt") == []


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "data").write_text("a file where a folder should be")
    with pytest.raises(OutputError, match=r"cannot write .*data/episodes/val\.pt: "):
        save_atomic({"x": torch.zeros(1)}, tmp_path / "data" / "episodes" / "val.pt")


def test_two_writers_of_one_file_use_their_own_temporary_files(tmp_path, monkeypatch):
    """A second copy of a stage finishes its save while the first is writing the same file:
    with one fixed temporary name the first one's rename would find nothing to rename."""
    path = tmp_path / "metrics.json"
    real_replace = os.replace
    calls = []

    def replace_after_the_other_writer(source, target):
        calls.append(source)
        if len(calls) == 1:
            write_json(path, {"writer": "second"})
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_the_other_writer)
    write_json(path, {"writer": "first"})
    assert calls[0] != calls[1]
    assert path.read_text() == '{\n  "writer": "first"\n}\n'
    assert leftovers(tmp_path, "metrics.json") == []


def test_contents_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    save_atomic({"x": torch.zeros(2)}, tmp_path / "x.pt")
    assert [kind for kind, _ in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1]  # the temporary file, synced, is what gets renamed


def test_new_files_get_the_usual_permissions(tmp_path):
    with atomic_open(tmp_path / "a.csv", "w") as handle:
        handle.write("x\n")
    (tmp_path / "b.csv").write_text("x\n")
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == stat.S_IMODE((tmp_path / "b.csv").stat().st_mode)


def test_an_error_inside_the_block_leaves_the_target_alone(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("before\n")
    with pytest.raises(ZeroDivisionError), atomic_open(path, "w") as handle:
        handle.write("half")
        1 / 0  # noqa: B018
    assert path.read_text() == "before\n"
    assert leftovers(tmp_path, "a.txt") == []


def test_non_finite_metrics_are_never_written(tmp_path):
    with pytest.raises(NoisyMamlError, match="non-finite"):
        write_json(tmp_path / "m.json", {"test": {"loss_post": float("nan")}})
    assert not (tmp_path / "m.json").exists()


# --- reading --------------------------------------------------------------------------------

def inflating_copy(source: Path, target: Path) -> None:
    """The same archive with every entry deflated: torch reads it, inflating it in memory."""
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as packed:
        for entry in plain.infolist():
            packed.writestr(entry.filename, plain.read(entry))


def test_an_inflating_archive_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    plain, bomb = tmp_path / "plain.pt", tmp_path / "bomb.pt"
    torch.save({"zeros": torch.zeros(2_000_000)}, plain)  # 8 MB of zeros: a 10 KB archive
    inflating_copy(plain, bomb)
    assert torch.load(bomb, weights_only=True)["zeros"].numel() == 2_000_000  # torch would inflate it
    read = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: read.append(args))
    with pytest.raises(DataError) as info:
        load_file(bomb)
    assert "compressed contents declaring 7.6 MiB" in str(info.value) and "refusing" in str(info.value)
    assert read == []


def test_contents_beyond_the_callers_limit_are_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    read = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: read.append(args))
    with pytest.raises(DataError, match="more than the 1000 bytes such a file may hold"):
        load_file(path, max_bytes=1000)
    assert read == []


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty file (0 bytes)"),
    (b"not an archive", "not a whole torch.save file"),
])
def test_empty_and_foreign_files_are_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_file(path)
    assert str(info.value).startswith(f"{path}: {fragment}")


def test_a_cut_file_is_one_clear_error(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="not a whole torch.save file"):
        load_file(path)


def test_load_fields_names_what_is_wrong(tmp_path):
    path = tmp_path / "val.pt"
    fields = {"classes": torch.Tensor, "drawers": torch.Tensor}
    torch.save([1, 2], path)
    with pytest.raises(DataError, match=r"expected an episodes file holding classes, drawers, found a list"):
        load_fields(path, fields, "an episodes file")
    torch.save({"classes": torch.zeros(1), "drawers": [1]}, path)
    with pytest.raises(DataError, match="`drawers` is a list, expected a Tensor"):
        load_fields(path, fields, "an episodes file")
    torch.save({"classes": torch.zeros(1), "drawers": torch.zeros(1)}, path)
    assert set(load_fields(path, fields, "an episodes file")) == set(fields)


def test_the_first_line_of_an_empty_message_is_the_error_type():
    assert files._first_line(EOFError()) == "EOFError"
    assert files._first_line(ValueError("a\nb")) == "ValueError: a"
