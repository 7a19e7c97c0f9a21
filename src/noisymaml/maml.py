"""MAML as pure functions of a parameter dict (torch.func), after PyTorch's functorch example.

A task's meta-gradient is `grad` of its post-adaptation query loss with respect to the
meta-parameters; `per_task_meta_gradients` computes it for every task of a meta-batch, either
all at once with `vmap` or in a plain loop (the two give the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_leaves, tree_map

from noisymaml.tasks import TaskBatch

Params = dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InnerLoop:
    lr: float
    steps: int
    first_order: bool = False


@dataclass(frozen=True)
class Objective:
    """The per-task loss and whether accuracy is meaningful (classification)."""

    loss: LossFn
    classification: bool

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {"loss": self.loss(output, target)}
        if self.classification:
            values["acc"] = (output.argmax(-1) == target).float().mean()
        return values


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


REGRESSION = Objective(mse, classification=False)
CLASSIFICATION = Objective(cross_entropy, classification=True)


def make_forward(model: nn.Module) -> Forward:
    """The network as a function of (params, inputs); the module itself is never mutated."""
    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (x,))
    return forward


def adapt(forward: Forward, objective: Objective, params: Params, x: torch.Tensor,
          y: torch.Tensor, inner: InnerLoop, noise: Params | None = None) -> Params:
    """`inner.steps` gradient steps on one task's support set.

    noise[name][t] is added to the gradient of step t (noisy MAML's inner-loop noise). With
    first_order, the inner gradients are treated as constants (FOMAML).
    """
    def support_loss(p: Params) -> torch.Tensor:
        return objective.loss(forward(p, x), y)

    for step in range(inner.steps):
        grads = grad(support_loss)(params)
        if inner.first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        if noise is not None:
            grads = {name: g + noise[name][step] for name, g in grads.items()}
        params = {name: p - inner.lr * grads[name] for name, p in params.items()}
    return params


def _task_objective(forward: Forward, objective: Objective, inner: InnerLoop):
    """Query loss after adaptation (the value to differentiate) plus pre/post metrics."""
    def task_loss(params: Params, support_x, support_y, query_x, query_y, noise=None):
        before = objective.metrics(forward(params, query_x), query_y)
        adapted = adapt(forward, objective, params, support_x, support_y, inner, noise)
        after = objective.metrics(forward(adapted, query_x), query_y)
        report = {f"{k}_pre": v.detach() for k, v in before.items()}
        report |= {f"{k}_post": v.detach() for k, v in after.items()}
        return after["loss"], report
    return task_loss


def map_over_tasks(fn: Callable, batched: bool, *task_args):
    """Apply fn to every task (leading dimension of task_args) and stack the results.

    batched: all tasks at once with vmap (fast on GPUs); else a plain loop (faster for
    convolutions on CPUs). Both give the same numbers.
    """
    if batched:
        return vmap(fn)(*task_args)
    n_tasks = tree_leaves(task_args)[0].shape[0]
    results = [fn(*tree_map(lambda t: t[i], task_args)) for i in range(n_tasks)]
    return tree_map(lambda *parts: torch.stack(parts), results[0], *results[1:])


def per_task_meta_gradients(forward: Forward, objective: Objective, params: Params,
                            tasks: TaskBatch, inner: InnerLoop, noise: Params | None = None,
                            batched: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
    """Meta-gradient of every task: ({name: [tasks, *shape]}, {metric: [tasks]}).

    noise, when given, holds inner-loop noise shaped [tasks, steps, *shape].
    """
    task_grad = grad(_task_objective(forward, objective, inner), has_aux=True)
    inputs = (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
    if noise is not None:
        inputs += (noise,)
    return map_over_tasks(lambda *task: task_grad(params, *task), batched, *inputs)


def support_gradient(forward: Forward, objective: Objective, params: Params,
                     support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
    """Gradient of one task's support-set loss at the meta-parameters (query never used)."""
    return grad(lambda p: objective.loss(forward(p, support_x), support_y))(params)


def evaluate_tasks(forward: Forward, objective: Objective, params: Params, tasks: TaskBatch,
                   inner: InnerLoop, batched: bool = True) -> dict[str, torch.Tensor]:
    """Pre/post-adaptation query metrics for every task of a batch: {metric: [tasks]}."""
    task_loss = _task_objective(forward, objective, inner)
    return map_over_tasks(lambda *task: task_loss(params, *task)[1], batched,
                          tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
