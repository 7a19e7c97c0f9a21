"""Gaussian gradient noise (Gogoi, Tiwari & Verma, arXiv 2405.12299).

Noise is drawn fresh for every tensor at every step from a dedicated, seeded generator, so
that switching noise on or off never shifts the task-sampling random stream: sigma = 0
(with mean 0) draws nothing and reproduces plain MAML bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from noisymaml.core import Params


@dataclass(frozen=True)
class GradientNoise:
    """Where and how much noise to add; inner std = sigma_t, outer std = outer_scale * sigma_t."""

    sigma: float = 0.0
    mean: float = 0.0
    where: str = "both"
    outer_scale: float = 0.4
    schedule: str = "constant"
    gamma: float = 0.55
    decay: float = 1.5
    decay_every: int = 1000

    @property
    def active(self) -> bool:
        return self.sigma > 0 or self.mean != 0

    def sigma_at(self, iteration: int) -> float:
        """The scheduled std at a meta-iteration (0-based).

        anneal: the variance decays as sigma^2 / (1 + t)^gamma (Neelakantan et al. 2015, whose
        gamma = 0.55 this borrows), so the std decays with the exponent gamma / 2.
        """
        if self.schedule == "anneal":
            return self.sigma / (1 + iteration) ** (self.gamma / 2)
        if self.schedule == "step":
            return self.sigma / self.decay ** (iteration // self.decay_every)
        return self.sigma

    def inner(self, params: Params, n_tasks: int, steps: int, iteration: int,
              generator: torch.Generator) -> Params | None:
        """Noise for every task's every inner step: tensors shaped [n_tasks, steps, *param]."""
        if not (self.active and self.where in ("inner", "both")):
            return None
        return _gaussian(params, (n_tasks, steps), self.mean, self.sigma_at(iteration), generator)

    def outer(self, params: Params, iteration: int, generator: torch.Generator) -> Params | None:
        """Noise for the meta-gradient of one meta-iteration."""
        if not (self.active and self.where in ("outer", "both")):
            return None
        std = self.outer_scale * self.sigma_at(iteration)
        return _gaussian(params, (), self.mean, std, generator)


def _gaussian(params: Params, leading: tuple[int, ...], mean: float, std: float,
              generator: torch.Generator) -> Params:
    return {
        name: torch.randn((*leading, *p.shape), generator=generator, device=p.device, dtype=p.dtype)
        * std + mean
        for name, p in params.items()
    }


def describe(noise: GradientNoise) -> str:
    """One line naming the noise settings, for progress and error messages."""
    if not noise.active:
        return "noise off"
    schedule = noise.schedule
    if schedule == "anneal":
        schedule += f"(gamma={noise.gamma:g})"
    elif schedule == "step":
        schedule += f"(/{noise.decay:g} every {noise.decay_every})"
    return (f"noise sigma={noise.sigma:g} mean={noise.mean:g} where={noise.where} "
            f"outer_scale={noise.outer_scale:g} schedule={schedule}")

