"""Meta-regularisation on weights, MR-MAML(W) (Yin et al. 2020, "Meta-Learning without Memorization").

Some weights become a mean-field Gaussian posterior q(theta) = N(mu, sigma^2): every task draws
one sample by reparameterisation (theta = mu + sigma * eps), those weights are not adapted in
the inner loop, and the outer loss adds beta * KL(q(theta) || N(0, I)). The information the
stochastic weights can carry about the training tasks is thereby bounded, so the model must
use the support set instead of memorising the tasks.

Two variants (`algorithms.mr_maml_w.variant`):
- `encoder` (the default, as Yin et al.'s released code builds it: google-research,
  meta_learning_without_memorization, pose_code/maml_bbb.py and sinusoid/MR_MAML.ipynb): a
  separate encoder (`core.models.EncodedNet`) in front of the MAML network; the encoder's
  kernels are stochastic, its biases deterministic, the encoder is never adapted, the MAML
  network is adapted whole, and the KL covers the encoder kernels only. Differences from their
  code: sigma = exp(log sigma) here (softplus there); one weight sample per task, shared by its
  support and query (one per meta-batch and per half there); the posterior mean at meta-test
  (a sample there), so that evaluation and `noisymaml predict` are deterministic.
- `feature_layers`: the first `stochastic_layers` feature layers of the dataset's own network
  (weights, biases and batch-norm scales) are stochastic and unadapted; only the rest (the
  head) adapts, close to ANIL.

The meta-parameters hold mu under the network's own parameter names and log sigma under
`LOG_SIGMA + name`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from noisymaml.core import Params
from noisymaml.core.maml import InnerLoop, Realise
from noisymaml.methods.maml import MAML
from noisymaml.settings import Section

LOG_SIGMA = "log_sigma/"
ENCODER = "encoder."  # parameter names of EncodedNet's encoder
DIM_W = {"conv4": 196, "mlp": 5}  # Yin et al.: 14 x 14 for images, 5 for the sinusoid


def stochastic_names(layers: list[list[str]], count: int | str) -> list[str]:
    """Parameter names of the first `count` feature layers ("all": every feature layer)."""
    if count != "all" and count > len(layers):
        raise ValueError(f"stochastic_layers is {count} but the model has "
                         f"{len(layers)} feature layers (use a number up to {len(layers)}, or all)")
    chosen = layers if count == "all" else layers[:count]
    return [name for layer in chosen for name in layer]


def with_posterior(params: Params, names: list[str], init_scale: float) -> Params:
    """Meta-parameters plus a log sigma per stochastic tensor, every sigma = init_scale."""
    return {**params, **{LOG_SIGMA + name: torch.full_like(params[name], math.log(init_scale))
                         for name in names}}


def stochastic(params: Params) -> list[str]:
    """The names whose weights are sampled (those with a log sigma), in a stable order."""
    return sorted(k.removeprefix(LOG_SIGMA) for k in params if k.startswith(LOG_SIGMA))


def posterior_mean(params: Params) -> Params:
    """The network's weights at the posterior mean (what meta-test uses)."""
    return {k: v for k, v in params.items() if not k.startswith(LOG_SIGMA)}


def adapted_names(params: Params) -> frozenset[str]:
    """What the inner loop adapts: the MAML network of an encoded model, else every network
    weight that is not stochastic."""
    weights = posterior_mean(params)
    if any(name.startswith(ENCODER) for name in weights):
        return frozenset(k for k in weights if not k.startswith(ENCODER))
    sampled = set(stochastic(params))
    return frozenset(k for k in weights if k not in sampled)


def draw_noise(params: Params, n_tasks: int, generator: torch.Generator) -> Params:
    """Standard-normal eps for every task and stochastic tensor: {name: [n_tasks, *shape]}."""
    return {name: torch.randn((n_tasks, *params[name].shape), generator=generator,
                              device=params[name].device, dtype=params[name].dtype)
            for name in stochastic(params)}


def sample_weights(params: Params, eps: Params) -> Params:
    """One task's weights: mu + sigma * eps on the stochastic tensors, the rest as they are."""
    weights = posterior_mean(params)
    return {**weights, **{name: weights[name] + params[LOG_SIGMA + name].exp() * eps[name]
                          for name in eps}}


def kl_to_standard_normal(params: Params) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over every stochastic weight (closed form)."""
    terms = []
    for name in stochastic(params):
        mu, log_sigma = params[name], params[LOG_SIGMA + name]
        terms.append((0.5 * (torch.exp(2 * log_sigma) + mu ** 2 - 1) - log_sigma).sum())
    return torch.stack(terms).sum()


class MrMamlSettings(Section):
    """`algorithms.mr_maml_w`: stochastic weights, beta * KL(q || N(0, I))."""

    variant: Literal["encoder", "feature_layers"] = "encoder"
    beta: float = Field(ge=0)
    init_scale: float = Field(gt=0)  # initial posterior std of every stochastic weight
    dim_w: Annotated[int, Field(ge=1)] | None = None  # encoder output (None: 196 images, 5 vectors)
    stochastic_layers: Literal["all"] | Annotated[int, Field(ge=1)] = "all"  # feature_layers variant


class MRMAMLW(MAML):
    """MR-MAML(W): a mean-field Gaussian posterior over some weights, sampled per task, left
    unadapted by the inner loop, with beta * KL to N(0, I) in the outer loss."""

    name = "mr_maml_w"
    label = "MR-MAML(W)"
    Settings = MrMamlSettings
    regularised = True

    def __init__(self, beta: float, init_scale: float, variant: str = "encoder", dim_w: int | None = None,
                 stochastic_layers: int | str = "all"):
        self.beta, self.init_scale, self.variant = beta, init_scale, variant
        self.dim_w, self.stochastic_layers = dim_w, stochastic_layers

    def model_spec(self, spec: dict) -> dict:
        if self.variant != "encoder":
            return spec
        return {"kind": "encoded", "base": spec, "dim_w": self.dim_w or DIM_W[spec["kind"]]}

    def initial_params(self, model: nn.Module, seed: int) -> Params:
        names = (model.encoder_kernels() if self.variant == "encoder" else
                 stochastic_names(model.feature_layers(), self.stochastic_layers))
        return with_posterior(super().initial_params(model, seed), names, self.init_scale)

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop:
        return replace(inner, adapted=adapted_names(params))

    @property
    def realise(self) -> Realise:
        return sample_weights

    def draws(self, params: Params, n_tasks: int, generator: torch.Generator) -> Params:
        return draw_noise(params, n_tasks, generator)

    def regulariser(self, params: Params) -> torch.Tensor:
        return self.beta * kl_to_standard_normal(params)

    def evaluation_params(self, params: Params) -> Params:
        """The posterior mean."""
        return posterior_mean(params)

    def describe(self) -> str:
        """One line for the report: which variant ran, with its settings."""
        if self.variant == "encoder":
            return (f"MR-MAML(W), Yin et al.'s encoder variant: stochastic encoder (dim_w "
                    f"{self.dim_w or 'default'}) in front of a fully adapted MAML network, KL on the "
                    f"encoder kernels, beta = {self.beta:g}, initial posterior std {self.init_scale:g}")
        return (f"MR-MAML(W), feature-layer variant: stochastic feature layers "
                f"{self.stochastic_layers}, head adapted only, beta = {self.beta:g}, initial posterior "
                f"std {self.init_scale:g}")


METHOD = MRMAMLW
