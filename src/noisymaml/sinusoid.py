"""Non-mutually-exclusive sinusoid regression (Yin et al. 2020, "Meta-Learning without Memorization").

Input = x ~ U[-x_range, x_range] concatenated with a one-hot of the task's amplitude bin;
target = A sin(x) + label noise, phase 0. Training tasks come from the first `train_bins`
bins, so the one-hot identifies the task and a network can memorise every amplitude without
adapting. Test tasks draw A continuously while the one-hot points at a random training bin:
the input misleads, and only adaptation to the support set can give a low error.
"""

from __future__ import annotations

import torch

from noisymaml.params import SinusoidTasks
from noisymaml.tasks import TaskBatch


class SinusoidNME:
    def __init__(self, spec: SinusoidTasks):
        self.spec = spec

    @property
    def input_size(self) -> int:
        return 1 + self.spec.bins

    def amplitudes(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.linspace(self.spec.amp_min, self.spec.amp_max, self.spec.bins, device=device)

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Training tasks: a random training bin each, its amplitude fixed by the bin."""
        bins = self._training_bins(n_tasks, generator)
        amplitude = self.amplitudes(generator.device)[bins]
        return self._tasks(bins, amplitude, self.spec.support, self.spec.query, generator)

    def test_tasks(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Evaluation tasks: continuous amplitude, misleading one-hot of a training bin."""
        bins = self._training_bins(n_tasks, generator)
        spec = self.spec
        amplitude = spec.amp_min + (spec.amp_max - spec.amp_min) * torch.rand(
            n_tasks, generator=generator, device=generator.device)
        return self._tasks(bins, amplitude, spec.test_support, spec.test_query, generator)

    def _training_bins(self, n_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.spec.train_bins, (n_tasks,), generator=generator,
                             device=generator.device)

    def _tasks(self, bins: torch.Tensor, amplitude: torch.Tensor, support: int, query: int,
               generator: torch.Generator) -> TaskBatch:
        n_tasks, n_points = bins.shape[0], support + query
        device = generator.device
        x = (torch.rand(n_tasks, n_points, 1, generator=generator, device=device) * 2 - 1) \
            * self.spec.x_range
        noise = torch.randn(n_tasks, n_points, 1, generator=generator, device=device)
        y = amplitude.view(-1, 1, 1) * torch.sin(x) + self.spec.label_noise * noise
        one_hot = torch.nn.functional.one_hot(bins, self.spec.bins).float()
        inputs = torch.cat([x, one_hot.unsqueeze(1).expand(n_tasks, n_points, self.spec.bins)], -1)
        return TaskBatch(inputs[:, :support], y[:, :support], inputs[:, support:], y[:, support:])
