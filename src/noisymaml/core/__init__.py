"""The meta-learning core: inner loop, gradient noise, trainer, evaluation, feedback weighting,
models, tasks and metrics.

Everything here takes plain values (numbers, tensors, small frozen dataclasses), like
`learn2learn.algorithms.MAML(model, lr, first_order)`; turning params.yaml into them is the
adapter layer's job (`noisymaml.pipeline`). Nothing in this package knows the params schema.
"""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]  # parameter (or gradient) name -> tensor
