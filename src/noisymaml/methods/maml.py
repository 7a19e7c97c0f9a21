"""MAML (Finn et al. 2017), the base of every method the pipeline compares.

A method differs from MAML only through the hooks below, each a no-op here, so gradient noise
and feedback (which live in the trainer) combine with any method. A new method is one module
with a subclass that overrides what differs, plus one line in `methods/__init__.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from noisymaml.core import Params
from noisymaml.core.maml import InnerLoop, Realise
from noisymaml.core.models import init_params
from noisymaml.core.tasks import TaskBatch
from noisymaml.settings import NoSettings


class MAML:
    """Second-order MAML unless `<dataset>.maml.first_order`; the inner loop is the dataset's."""

    name = "maml"  # the key in params.yaml (`methods`, `algorithms.<name>`)
    label = "MAML"  # how reports name it
    Settings = NoSettings  # the schema of `algorithms.<name>`; its fields are __init__'s arguments
    regularised = False  # whether `regulariser` adds a term to the outer loss

    def model_spec(self, spec: dict) -> dict:
        """The network this method trains, from the dataset's (a method may wrap it)."""
        return spec

    def initial_params(self, model: nn.Module, seed: int) -> Params:
        """The meta-parameters training starts from."""
        return init_params(model, seed)

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop:
        """The dataset's inner loop as this method runs it on these meta-parameters."""
        return inner

    def augment(self, tasks: TaskBatch, classification: bool, ways: int,
                generator: torch.Generator) -> TaskBatch:
        """A sampled meta-batch as this method trains on it; randomness from `generator`."""
        return tasks

    @property
    def realise(self) -> Realise | None:
        """How a training task's weights are drawn from the meta-parameters (None: they are them)."""
        return None

    def draws(self, params: Params, n_tasks: int, generator: torch.Generator) -> Params | None:
        """Per-task random inputs of `realise`, from `generator`."""
        return None

    def regulariser(self, params: Params) -> torch.Tensor:
        """The term a regularised method adds to the outer loss."""
        raise NotImplementedError(f"{self.name} adds no regulariser")

    def evaluation_params(self, params: Params) -> Params:
        """The network weights meta-test adapts from."""
        return params

    def describe(self) -> str:
        """A line for the report's settings: what ran, with which settings ("" for none)."""
        return ""


METHOD = MAML
