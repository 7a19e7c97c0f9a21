"""Reading and writing the pipeline's files: tensors without code, atomic saves, JSON, CSV.

Writing: every file goes to a uniquely named temporary file beside its target, is flushed and
fsynced, then renamed over the target. A kill, a full disk or a second copy of the same stage
never leaves a cut or mixed file, and a failed write leaves the previous file as it was; the
failure is one OutputError naming the file.

Reading: a .pt file is torch.save's zip archive, whose entries torch stores uncompressed. The
archive's directory is checked before torch reads anything: contents that declare more bytes
than the file holds (compressed entries: a decompression bomb), or more than the caller's
limit, are refused without being inflated. torch.load then runs with weights_only: tensors and
plain data only, so a file that carries code is refused unread.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

from noisymaml.errors import DataError, NoisyMamlError, OutputError

MIB = 2**20


# --- writing --------------------------------------------------------------------------------

@contextmanager
def atomic_open(path: Path, mode: str = "wb", **options) -> Iterator[IO]:
    """A file object whose contents replace `path` once the block ends without an error.

    `options` go to open() (e.g. encoding, newline). OSErrors become an OutputError naming
    `path`; on any error the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _cannot_write(path, err) from None
    temporary = Path(name)
    try:
        with os.fdopen(fd, mode, **options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _new_file_mode())
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise _cannot_write(path, err) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _cannot_write(path: Path, err: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {err.strerror or err}")


def _new_file_mode() -> int:
    """The permissions open() would give a new file (mkstemp's are owner-only)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


class _Writes:
    """The file object torch.save writes through. torch reports a failed write only as
    "unexpected pos"; the OSError behind it (no space left, ...) is kept for the message."""

    def __init__(self, handle: IO[bytes]):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_atomic(obj: object, path: Path) -> None:
    """torch.save through atomic_open: a kill or a failed write never leaves a half-written file."""
    with atomic_open(path) as handle:
        writes = _Writes(handle)
        try:
            torch.save(obj, writes)
        except RuntimeError:
            if writes.error is None:
                raise
            raise writes.error from None


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: Path, payload: dict) -> None:
    """Indented, sorted JSON; NaN and infinity are refused, never written as numbers."""
    try:
        text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        raise NoisyMamlError(f"refusing to write non-finite numbers (NaN/inf) into {path}") from None
    write_text(path, text + "\n")


def write_curve(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                         for row in rows)


# --- reading --------------------------------------------------------------------------------

def check_archive(path: Path, max_bytes: int | None = None) -> None:
    """Refuse, before torch reads it, a file that is not a whole torch.save archive, whose
    contents would inflate beyond the file's own size, or that holds more than `max_bytes`."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes); refusing to load it")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise DataError(f"{path}: not a whole torch.save file (cut short, or another format: "
                        f"{_first_line(err)}); refusing to load it") from None
    declared = sum(entry.file_size for entry in entries)
    if declared > size or any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
        raise DataError(f"{path}: compressed contents declaring {_mib(declared)} in a {_mib(size)} "
                        "file (torch.save never compresses); refusing to inflate it")
    if max_bytes is not None and declared > max_bytes:
        raise DataError(f"{path}: {_mib(declared)} of contents, more than the {_mib(max_bytes)} "
                        "such a file may hold; refusing to load it")


def load_file(path: Path, max_bytes: int | None = None) -> object:
    """torch.load restricted to tensors and plain data, after check_archive."""
    if not path.exists():
        raise DataError(f"{path}: file not found; run the stage that makes it (dvc repro)")
    check_archive(path, max_bytes)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise DataError(f"{path}: not a plain tensor file ({_first_line(err)}); "
                        "refusing to load it") from None


def load_fields(path: Path, fields: dict[str, type], what: str) -> dict:
    """load_file of a mapping with exactly `fields`, each value of its type (`what`: e.g. "an
    episodes file"); anything else is a DataError naming the file."""
    saved = load_file(path)
    if not isinstance(saved, dict) or set(saved) != set(fields):
        found = (f"keys {', '.join(map(str, saved)) or 'none'}" if isinstance(saved, dict)
                 else f"a {type(saved).__name__}")
        raise DataError(f"{path}: expected {what} holding {', '.join(fields)}, found {found}; "
                        "run the stage that makes it again")
    for key, kind in fields.items():
        if not isinstance(saved[key], kind):
            raise DataError(f"{path}: `{key}` is a {type(saved[key]).__name__}, expected a "
                            f"{kind.__name__}; run the stage that makes it again")
    return saved


def tensors(path: Path, value: object, key: str,
            names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """`value`, entry `key` of the file at `path`, checked to map names (exactly `names` when
    given) to tensors."""
    if (not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values())
            or (names is not None and set(value) != set(names))):
        expected = f"of {', '.join(names)}" if names is not None else "of names"
        raise DataError(f"{path}: `{key}` is not a mapping {expected} to tensors; "
                        "run the stage that makes it again")
    return value


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size} bytes"
