"""Feedback from meta-test to meta-train (arXiv 2405.12299, second idea).

Test tasks leave their support-set gradient at the meta-parameters (captured at evaluation,
no query labels involved). During re-meta-training every training task's meta-gradient is
weighted by its similarity to those stored gradients: similarity averaged over the stored
gradients, negative values clipped to zero, weights normalised to sum to one over the
meta-batch. When no task points the same way as the test gradients (all weights zero) the
batch falls back to uniform weights, i.e. plain MAML for that step.
"""

from __future__ import annotations

import torch

from noisymaml.core import Params

SIMILARITIES = ("cosine", "dot")


def flatten(grads: Params) -> torch.Tensor:
    """{name: [n, *shape]} -> [n, total] (names in sorted order, so layouts always agree)."""
    return torch.cat([grads[name].flatten(1) for name in sorted(grads)], dim=1)


def similarity(task_grads: torch.Tensor, reference: torch.Tensor, kind: str) -> torch.Tensor:
    """Pairwise similarity [n_tasks, n_reference] between flattened gradients."""
    if kind == "cosine":
        task_grads = torch.nn.functional.normalize(task_grads, dim=1)
        reference = torch.nn.functional.normalize(reference, dim=1)
    elif kind != "dot":
        raise ValueError(f"unknown similarity {kind!r}; allowed: {', '.join(SIMILARITIES)}")
    return task_grads @ reference.T


def task_weights(task_grads: Params, reference: Params, kind: str = "cosine") -> torch.Tensor:
    """Weights [n_tasks] summing to one for the meta-gradients of a meta-batch.

    Only the parameters the reference gradients have are compared (MR-MAML's posterior scales
    have meta-gradients but no test-task gradient).
    """
    shared = {name: task_grads[name] for name in reference}
    scores = similarity(flatten(shared), flatten(reference), kind).mean(dim=1).clamp(min=0)
    total = scores.sum()
    if total <= 0:
        return torch.full_like(scores, 1.0 / scores.numel())
    return scores / total
