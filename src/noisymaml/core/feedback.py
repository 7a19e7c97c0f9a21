"""Feedback from meta-test to meta-train (arXiv 2405.12299, second idea).

Feedback test tasks leave their support-set gradient at the meta-parameters (captured at
evaluation; no query label is used). During re-meta-training every training task of a
meta-batch gets a weight from its similarity to those stored gradients, averaged over them:

- what is compared (`compare`): by default like with like, each training task's own
  support-loss gradient at the meta-parameters (`support`); or, as a variant, its meta-gradient
  (second-order gradient of the query loss after adaptation, noise included: `meta`);
- the rule: weights = softmax(similarity / temperature) over the meta-batch. It is continuous
  in the similarities (a task moving from -0.001 to +0.001 barely changes any weight), equal
  similarities give uniform weights (plain MAML), and no task's weight is ever exactly zero.

Online (`online_stream`): the feedback tasks arrive one at a time. Each is scored first, from
the meta-parameters of the moment (so its score never profits from its own gradient), then its
support gradient joins the stored ones; every `every` arrivals (and after the last) the model
re-meta-trains briefly, weighted by all gradients stored so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from noisymaml.core import Params

SIMILARITIES = ("cosine", "dot")
COMPARED = ("support", "meta")


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


def task_weights(task_grads: Params, reference: Params, kind: str = "cosine",
                 temperature: float = 0.1) -> torch.Tensor:
    """Weights [n_tasks] summing to one: softmax of the mean similarity / temperature.

    Only the parameters both sides have are compared (MR-MAML's posterior scales have
    meta-gradients but no test-task gradient).
    """
    shared = sorted(set(task_grads) & set(reference))
    scores = similarity(flatten({n: task_grads[n] for n in shared}),
                        flatten({n: reference[n] for n in shared}), kind).mean(dim=1)
    return torch.softmax(scores / temperature, dim=0)


@dataclass(frozen=True)
class FeedbackWeigher:
    """The trainer's `weigh` for feedback: (meta-gradients, support gradients) -> task weights."""

    reference: Params  # stored test-task support gradients {name: [n_reference, *shape]}
    similarity: str = "cosine"
    compare: str = "support"
    temperature: float = 0.1

    def __call__(self, meta_grads: Params, support_grads: Callable[[], Params]) -> torch.Tensor:
        if self.compare not in COMPARED:
            raise ValueError(f"unknown comparison {self.compare!r}; allowed: {', '.join(COMPARED)}")
        compared = support_grads() if self.compare == "support" else meta_grads
        return task_weights(compared, self.reference, self.similarity, self.temperature)


@dataclass(frozen=True)
class Window:
    """Episodes [start, stop) of an evaluation set (anything with `len` and `slice`), as one."""

    episodes: object
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def slice(self, start: int, stop: int):
        return self.episodes.slice(self.start + start, self.start + min(stop, len(self)))


def rounds(arrivals: int, every: int) -> int:
    """Re-training rounds of a stream: one per `every` arrivals, and one after a last partial group."""
    return math.ceil(arrivals / every)


def online_stream(arrivals: int, every: int, current: Callable[[], Params],
                  score: Callable[[Params, int], dict[str, torch.Tensor]],
                  gradient: Callable[[Params, int], Params],
                  retrain: Callable[[Params], None]) -> dict[str, torch.Tensor]:
    """Feed `arrivals` tasks through: score task i at the `current()` meta-parameters, then
    store its support `gradient` ({name: [1, *shape]}); after every `every` tasks and after
    the last, `retrain` with all gradients stored so far ({name: [stored, *shape]}).
    Returns the per-arrival scores {metric: [arrivals]}, in arrival order."""
    scores, stored = [], []
    for index in range(arrivals):
        params = current()
        scores.append(score(params, index))
        stored.append(gradient(params, index))
        if (index + 1) % every == 0 or index + 1 == arrivals:
            retrain({name: torch.cat([g[name] for g in stored]) for name in stored[0]})
    return {key: torch.cat([s[key] for s in scores]) for key in scores[0]}
