"""MAML as pure functions of a parameter dict (torch.func), after PyTorch's functorch example.

A task's meta-gradient is the gradient of its post-adaptation query loss with respect to the
meta-parameters; `per_task_meta_gradients` computes it for every task of a meta-batch, either
all at once with `vmap` over `torch.func.grad`, or task by task with ordinary autograd calls
(the way learn2learn computes it, and faster than `torch.func` task by task on a CPU), the
tasks shared among threads on a CPU. The two paths give the same numbers.

Methods other than MAML plug in through two hooks: `InnerLoop.adapted` (which parameters the
inner loop adapts) and `realise` (how a task's starting weights are drawn from the
meta-parameters, given per-task random `draws`; MR-MAML samples its stochastic weights there).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_leaves, tree_map

from noisymaml.core import Params
from noisymaml.core.tasks import TaskBatch

Forward = Callable[[Params, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


Realise = Callable[[Params, Params], Params]  # (meta-parameters, one task's draws) -> weights


@dataclass(frozen=True)
class InnerLoop:
    """Inner-loop SGD; `adapted` names the parameters it updates (None: all of them)."""

    lr: float
    steps: int
    first_order: bool = False
    adapted: frozenset[str] | None = None

    def splits(self, params: Params) -> tuple[Params, Params]:
        """(adapted, fixed) parameters."""
        if self.adapted is None:
            return params, {}
        return ({k: v for k, v in params.items() if k in self.adapted},
                {k: v for k, v in params.items() if k not in self.adapted})


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


def make_forward(model: nn.Module, autocast: torch.dtype | None = None) -> Forward:
    """The network as a function of (params, inputs), safe to call from several threads.

    functional_call swaps the given tensors into the module for the duration of a call, so
    concurrent calls on one module would see each other's weights: every thread other than the
    creating one calls its own copy (whose own weights are never used). With `autocast` (e.g.
    torch.bfloat16) the forward pass runs under torch.autocast and its output is cast back to
    float32, so losses, gradients and parameters stay float32.
    """
    owner = threading.get_ident()
    copies = threading.local()

    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() == owner:
            module = model
        else:
            module = getattr(copies, "module", None)
            if module is None:
                module = copies.module = copy.deepcopy(model)
        if autocast is None:
            return functional_call(module, params, (x,))
        with torch.autocast(x.device.type, dtype=autocast):  # autocast state is per thread
            return functional_call(module, params, (x,)).float()
    return forward


def functional_gradients(loss: Callable[[Params], torch.Tensor], params: Params,
                         create_graph: bool) -> Params:
    """d loss / d params with torch.func (composes with vmap; differentiable unless detached)."""
    grads = grad(loss)(params)
    return grads if create_graph else {k: g.detach() for k, g in grads.items()}


def autograd_gradients(loss: Callable[[Params], torch.Tensor], params: Params,
                       create_graph: bool) -> Params:
    """d loss / d params with torch.autograd.grad, as learn2learn's `adapt` does.

    Adaptation needs gradients even where the caller evaluates under torch.no_grad.
    """
    with torch.enable_grad():
        leaves = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        grads = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves, grads))


def adapt(forward: Forward, objective: Objective, params: Params, x: torch.Tensor,
          y: torch.Tensor, inner: InnerLoop, noise: Params | None = None,
          gradients=functional_gradients) -> Params:
    """`inner.steps` gradient steps on one task's support set, on the `inner.adapted` parameters.

    noise[name][t] is added to the gradient of step t (noisy MAML's inner-loop noise). With
    first_order, the inner gradients are treated as constants (FOMAML).
    """
    fast, fixed = inner.splits(params)

    def support_loss(p: Params) -> torch.Tensor:
        return objective.loss(forward({**fixed, **p}, x), y)

    for step in range(inner.steps):
        grads = gradients(support_loss, fast, not inner.first_order)
        if noise is not None:
            grads = {name: g + noise[name][step] for name, g in grads.items()}
        fast = {name: p - inner.lr * grads[name] for name, p in fast.items()}
    return {**fixed, **fast}


def _task_objective(forward: Forward, objective: Objective, inner: InnerLoop,
                    realise: Realise | None = None, gradients=functional_gradients):
    """Query loss after adaptation (the value to differentiate) plus pre/post metrics."""
    def task_loss(params: Params, support_x, support_y, query_x, query_y, randomness=None):
        randomness = randomness or {}
        weights = realise(params, randomness["draws"]) if realise else params
        with torch.no_grad():
            before = objective.metrics(forward(weights, query_x), query_y)
        adapted = adapt(forward, objective, weights, support_x, support_y, inner,
                        randomness.get("noise"), gradients)
        after = objective.metrics(forward(adapted, query_x), query_y)
        report = {f"{k}_pre": v.detach() for k, v in before.items()}
        report |= {f"{k}_post": v.detach() for k, v in after.items()}
        return after["loss"], report
    return task_loss


def map_over_tasks(fn: Callable, batched: bool, *task_args):
    """Apply fn to every task (leading dimension of task_args) and stack the results.

    batched: all tasks at once with vmap (fast on GPUs); else task by task (faster for
    convolutions on CPUs, see `task_threads`). Both give the same numbers.
    """
    if batched:
        return vmap(fn)(*task_args)
    first = tree_leaves(task_args)[0]
    results = run_tasks(lambda i: fn(*tree_map(lambda t: t[i], task_args)), first.shape[0],
                        task_threads(first.device))
    return tree_map(lambda *parts: torch.stack(parts), results[0], *results[1:])


def auto_batched(device: torch.device) -> bool:
    """What `batched_tasks: auto` means: vmap on CUDA, the threaded task loop on a CPU (where
    the batched convolutions of a 20-way task run slower, benchmarks/README.md)."""
    return device.type == "cuda"


def task_threads(device: torch.device) -> int:
    """Threads that share a meta-batch's tasks: on the CPU as many as torch's intra-op threads
    (the cores, unless torch.set_num_threads or OMP_NUM_THREADS say otherwise), on a GPU one."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def run_tasks(run: Callable[[int], object], n_tasks: int, threads: int) -> list:
    """[run(0), ..., run(n_tasks - 1)], the tasks shared among `threads` threads.

    Every op then runs single-threaded: a few-shot task's convolutions are too small for
    intra-op threads to pay off, so whole tasks in parallel are faster (about 1.7x on 2 cores at
    20-way 1-shot), and each task's numbers no longer depend on how many threads there are.
    Autograd's grad mode is per thread, so the workers take the caller's.
    """
    if threads == 1:
        return [run(i) for i in range(n_tasks)]
    grad_enabled = torch.is_grad_enabled()

    def run_in_callers_mode(i: int):
        with torch.set_grad_enabled(grad_enabled):
            return run(i)

    intra_op = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(run_in_callers_mode, range(n_tasks)))
    finally:
        torch.set_num_threads(intra_op)


def per_task_meta_gradients(forward: Forward, objective: Objective, params: Params,
                            tasks: TaskBatch, inner: InnerLoop, noise: Params | None = None,
                            batched: bool = True, realise: Realise | None = None,
                            draws: Params | None = None) -> tuple[Params, dict[str, torch.Tensor]]:
    """Meta-gradient of every task: ({name: [tasks, *shape]}, {metric: [tasks]}).

    noise, when given, holds inner-loop noise shaped [tasks, steps, *shape]; draws, the
    per-task random inputs of `realise` shaped [tasks, ...].
    """
    randomness = {k: v for k, v in (("noise", noise), ("draws", draws)) if v is not None}
    inputs = (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y, randomness)
    if batched:
        task_grad = grad(_task_objective(forward, objective, inner, realise), has_aux=True)
        return vmap(lambda *task: task_grad(params, *task))(*inputs)
    task_loss = _task_objective(forward, objective, inner, realise, autograd_gradients)

    def task_grad_autograd(*task):
        leaves = {k: p.detach().requires_grad_() for k, p in params.items()}
        loss, report = task_loss(leaves, *task)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {k: torch.zeros_like(p) if g is None else g
                for (k, p), g in zip(leaves.items(), grads)}, report

    return map_over_tasks(task_grad_autograd, False, *inputs)


def support_gradient(forward: Forward, objective: Objective, params: Params,
                     support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
    """Gradient of one task's support-set loss at the meta-parameters (query never used)."""
    return grad(lambda p: objective.loss(forward(p, support_x), support_y))(params)


def per_task_support_gradients(forward: Forward, objective: Objective, params: Params,
                               tasks: TaskBatch, batched: bool = True) -> Params:
    """Every task's support-loss gradient at `params`: {name: [tasks, *shape]} (query unused)."""
    def one(support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        return {k: g.detach() for k, g in
                support_gradient(forward, objective, params, support_x, support_y).items()}
    return map_over_tasks(one, batched, tasks.support_x, tasks.support_y)


def evaluate_tasks(forward: Forward, objective: Objective, params: Params, tasks: TaskBatch,
                   inner: InnerLoop, batched: bool = True) -> dict[str, torch.Tensor]:
    """Pre/post-adaptation query metrics for every task of a batch: {metric: [tasks]}."""
    task_loss = _task_objective(forward, objective, inner,
                                gradients=functional_gradients if batched else autograd_gradients)
    return map_over_tasks(lambda *task: task_loss(params, *task)[1], batched,
                          tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
