"""Reading and writing the pipeline's files: tensors without code, atomic saves, JSON, CSV."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from noisymaml.errors import DataError


def load_file(path: Path) -> dict:
    """torch.load restricted to tensors and plain data: a file that carries code is refused."""
    if not path.exists():
        raise DataError(f"{path}: file not found; run the stage that makes it (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise DataError(f"{path}: not a plain tensor file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0]}); refusing to load it") from None


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file then rename: a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_curve(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                         for row in rows)
