"""The methods the pipeline compares, by name: one module per algorithm, one line each here.

Every method is trained on the same tasks, model and episodes; any of them can also be
trained with gradient noise on top (`noisy_<name>` in params.yaml's `noisy_methods`).
A new method is a module of this package whose `METHOD` is a `MAML` subclass (its `name`,
`label`, `Settings` and the hooks it overrides), plus its module name in `MODULES` below.
"""

from __future__ import annotations

from importlib import import_module

from noisymaml.methods.maml import MAML

MODULES = (  # one line per method module of this package
    "maml",
    "fomaml",
    "mr_maml_w",
    "meta_aug",
)
METHODS: dict[str, type[MAML]] = {
    method.name: method for method in (import_module(f"{__name__}.{module}").METHOD
                                       for module in MODULES)}
