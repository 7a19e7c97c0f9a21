"""First-order MAML (Finn et al. 2017): the inner gradients are treated as constants."""

from __future__ import annotations

from dataclasses import replace

from noisymaml.core import Params
from noisymaml.core.maml import InnerLoop
from noisymaml.methods.maml import MAML


class FOMAML(MAML):
    name = "fomaml"
    label = "first-order MAML"

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop:
        return replace(inner, first_order=True)


METHOD = FOMAML
