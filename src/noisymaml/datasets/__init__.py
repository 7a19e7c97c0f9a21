"""The datasets the pipeline runs, by name: one module per dataset, one line each here.

A new dataset is a module of this package whose `DATASET` is an instance of a `Dataset`
subclass (`datasets.base`; image classification: `datasets.images.ImageDataset`), plus its
module name in `MODULES` below, and its section in params.yaml.

A dataset's name is its module's name, so `MODULES` alone names the datasets without importing
them (or torch): the command line offers them as choices and still answers `--help` at once.
`DATASETS` imports the modules on first use.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from noisymaml.datasets.base import Dataset

MODULES = (  # one line per dataset module of this package
    "sinusoid",
    "omniglot",
    "miniimagenet",
    "dclaw",
)


@cache
def _registry() -> dict[str, Dataset]:
    datasets = {}
    for module in MODULES:
        dataset = import_module(f"{__name__}.{module}").DATASET
        if dataset.name != module:
            raise TypeError(f"{__name__}.{module}: DATASET.name is {dataset.name!r}, not the module's "
                            "name: a dataset is named after its module")
        datasets[module] = dataset
    return datasets


def __getattr__(name: str):
    if name == "DATASETS":  # dict[str, Dataset], built on first use
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
