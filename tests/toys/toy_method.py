"""A toy method for the extension test: MAML whose inner loop takes `factor` times the step size.

Copied into src/noisymaml/methods/ by tests/test_extending.py, with one line in the registry.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from noisymaml.core import Params
from noisymaml.core.maml import InnerLoop
from noisymaml.methods.maml import MAML
from noisymaml.settings import Section


class ScaledStepSettings(Section):
    factor: float = Field(gt=0)


class ScaledStepMAML(MAML):
    name = "scaled_step"
    label = "MAML, scaled inner step"
    Settings = ScaledStepSettings

    def __init__(self, factor: float):
        self.factor = factor

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop:
        return replace(inner, lr=inner.lr * self.factor)


METHOD = ScaledStepMAML
