"""Where the stages read and write: one function per kind of file, relative to the project root."""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
METRICS = Path("metrics")
PLOTS = Path("plots")
CHECKPOINTS = Path("checkpoints")


def downloads_dir(dataset: str) -> Path:
    """The dataset's own files (archives, images), as the user or the fetch stage put them."""
    return DATA / "downloads" / dataset


def episodes_dir(dataset: str) -> Path:
    return DATA / "episodes" / dataset


def model_path(dataset: str, method: str) -> Path:
    return DATA / "models" / dataset / f"{method}.pt"


def gradients_path(dataset: str, method: str) -> Path:
    return DATA / "gradients" / dataset / f"{method}.pt"


def metrics_path(dataset: str, method: str) -> Path:
    return METRICS / dataset / f"{method}.json"


def curve_path(dataset: str, method: str) -> Path:
    return PLOTS / dataset / f"{method}.csv"


def checkpoint_path(dataset: str, label: str) -> Path:
    """A training run's checkpoint: not a DVC output, so that a re-run stage resumes from it."""
    return CHECKPOINTS / dataset / f"{label}.pt"
