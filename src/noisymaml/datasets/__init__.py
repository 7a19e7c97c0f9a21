"""The datasets the pipeline runs, by name: one module per dataset, one line each here.

A new dataset is a module of this package whose `DATASET` is an instance of a `Dataset`
subclass (`datasets.base`; image classification: `datasets.images.ImageDataset`), plus its
module name in `MODULES` below, and its section in params.yaml.
"""

from __future__ import annotations

from importlib import import_module

from noisymaml.datasets.base import Dataset

MODULES = (  # one line per dataset module of this package
    "sinusoid",
    "omniglot",
    "miniimagenet",
    "dclaw",
)
DATASETS: dict[str, Dataset] = {
    dataset.name: dataset for dataset in (import_module(f"{__name__}.{module}").DATASET
                                          for module in MODULES)}
