"""The meta-learning methods the pipeline compares, all on the same tasks, model and episodes.

A method is an algorithm, optionally with gradient noise on top (`noisy_<algorithm>`):
- `maml`: MAML, second order unless `<dataset>.maml.first_order`;
- `fomaml`: first-order MAML (inner gradients treated as constants);
- `mr_maml_w`: meta-regularisation on weights (Yin et al. 2020), see meta_regularisation;
- `meta_aug`: meta-augmentation (Rajendran et al. 2020), see augmentation.
Each differs from MAML only through the hooks below, so noise and feedback combine with any.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from noisymaml import meta_regularisation as mr
from noisymaml.augmentation import MetaAugmented
from noisymaml.maml import InnerLoop, Realise
from noisymaml.models import init_params
from noisymaml.params import NOISY, AlgorithmsParams, NoSettings, Section, check_method
from noisymaml.tasks import TaskSource

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    algorithm: str
    noisy: bool
    settings: Section

    @classmethod
    def parse(cls, name: str, algorithms: AlgorithmsParams) -> "Method":
        check_method(name)
        algorithm = name.removeprefix(NOISY)
        return cls(name, algorithm, name != algorithm, getattr(algorithms, algorithm))

    def initial_params(self, model: nn.Module, seed: int) -> Params:
        params = init_params(model, seed)
        if self.algorithm != "mr_maml_w":
            return params
        names = mr.stochastic_names(model.feature_layers(), self.settings.stochastic_layers)
        return mr.with_posterior(params, names, self.settings.init_scale)

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop:
        """The dataset's inner loop as this method runs it on these meta-parameters."""
        if self.algorithm == "fomaml":
            return replace(inner, first_order=True)
        if self.algorithm == "mr_maml_w":
            return replace(inner, adapted=mr.adapted_names(params))
        return inner

    def training_source(self, source: TaskSource, classification: bool, ways: int) -> TaskSource:
        if self.algorithm != "meta_aug":
            return source
        return MetaAugmented(source, classification, ways, self.settings.range)

    @property
    def realise(self) -> Realise | None:
        """How a training task's weights are drawn from the meta-parameters (None: they are them)."""
        return mr.sample_weights if self.algorithm == "mr_maml_w" else None

    def draws(self, params: Params, n_tasks: int, generator: torch.Generator) -> Params | None:
        """Per-task random inputs of `realise`."""
        return mr.draw_noise(params, n_tasks, generator) if self.algorithm == "mr_maml_w" else None

    @property
    def regularised(self) -> bool:
        return self.algorithm == "mr_maml_w"

    def regulariser(self, params: Params) -> torch.Tensor:
        """The term added to the outer loss of a regularised method: beta * KL for MR-MAML."""
        return self.settings.beta * mr.kl_to_standard_normal(params)

    @staticmethod
    def evaluation_params(params: Params) -> Params:
        """The network weights meta-test adapts from (the posterior mean for MR-MAML)."""
        return mr.posterior_mean(params)


MAML = Method("maml", "maml", False, NoSettings())
