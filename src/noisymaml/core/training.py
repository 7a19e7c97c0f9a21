"""Meta-training: noisy MAML steps, optional feedback weighting, logging and resumable checkpoints.

Task sampling, gradient noise and the method's own randomness (MR-MAML's weight samples,
meta-augmentation's relabelling) use three separate seeded generators on the training device,
so neither noise nor the method changes which tasks are drawn: every method trains on the same
sequence of tasks. A checkpoint holds all three, so a resumed run replays the exact streams.
The last checkpoint holds the finished state: a stage whose outputs could not be written
resumes from it and only writes. A checkpoint that cannot be read or loaded is set aside
(renamed *.broken) and training starts over, saying so.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.func import grad_and_value

from noisymaml.core import Params
from noisymaml.core.files import load_file, save_atomic
from noisymaml.core.maml import (
    InnerLoop,
    Objective,
    Realise,
    make_forward,
    per_task_meta_gradients,
    per_task_support_gradients,
)
from noisymaml.core.noise import GradientNoise, describe
from noisymaml.core.tasks import TaskBatch, TaskSource
from noisymaml.errors import DataError, NoisyMamlError, OutputError

NOISE_STREAM = 1_000_003  # offset between the task and the noise generators' seeds
METHOD_STREAM = 2_000_029  # ... and the method's own randomness (MR-MAML draws, meta-aug relabelling)
Weigher = Callable[[Params, Callable[[], Params]], torch.Tensor]  # (meta-gradients, support gradients)


class TrainingDiverged(NoisyMamlError):
    """A loss or gradient became non-finite; the last finite checkpoint is kept."""


class Method(Protocol):
    """The hooks through which a meta-learning method differs from MAML (`noisymaml.methods`)."""

    regularised: bool

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop: ...

    def draws(self, params: Params, n_tasks: int, generator: torch.Generator) -> Params | None: ...

    def augment(self, tasks: TaskBatch, classification: bool, ways: int,
                generator: torch.Generator) -> TaskBatch: ...

    def evaluation_params(self, params: Params) -> Params: ...

    @property
    def realise(self) -> Realise | None: ...

    def regulariser(self, params: Params) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainerConfig:
    """Everything a meta-training run needs besides the network and its starting weights."""

    objective: Objective
    inner: InnerLoop
    method: Method
    meta_lr: float
    meta_batch: int
    seed: int
    device: torch.device = torch.device("cpu")
    noise: GradientNoise = GradientNoise()
    batched: bool = True  # vmap over tasks, or a task loop
    meta_grad_clip: float | None = None  # clamp every meta-gradient entry to +-value
    autocast: torch.dtype | None = None  # e.g. torch.bfloat16 for the forward passes
    ways: int = 0  # classes per task (classification), for methods that relabel tasks


class MetaTrainer:
    """Holds the meta-parameters, Adam, and the random streams of one meta-training run."""

    def __init__(self, model: torch.nn.Module, params: Params, config: TrainerConfig):
        device = config.device
        self.config = config
        self.forward = make_forward(model.to(device), config.autocast)
        self.params = {k: v.detach().clone().to(device).requires_grad_() for k, v in params.items()}
        self.optimizer = torch.optim.Adam(self.params.values(), lr=config.meta_lr)
        self.method = config.method
        self.objective, self.noise = config.objective, config.noise
        self.inner = config.method.inner_loop(config.inner, params)
        self.meta_batch, self.batched = config.meta_batch, config.batched
        self.meta_grad_clip = config.meta_grad_clip
        self.task_generator = torch.Generator(device).manual_seed(config.seed)
        self.noise_generator = torch.Generator(device).manual_seed(config.seed + NOISE_STREAM)
        self.method_generator = torch.Generator(device).manual_seed(config.seed + METHOD_STREAM)
        self.iteration = 0

    def meta_params(self) -> Params:
        return {k: p.detach() for k, p in self.params.items()}

    def step(self, source: TaskSource, weigh: Weigher | None = None) -> dict[str, float]:
        """One meta-iteration; returns the meta-batch's mean pre/post-adaptation metrics."""
        params = self.meta_params()
        tasks = self.method.augment(source.sample(self.meta_batch, self.task_generator),
                                    self.objective.classification, self.config.ways, self.method_generator)
        adapted, _ = self.inner.splits(params)
        inner_noise = self.noise.inner(adapted, self.meta_batch, self.inner.steps, self.iteration,
                                       self.noise_generator)
        draws = self.method.draws(params, self.meta_batch, self.method_generator)
        grads, metrics = per_task_meta_gradients(self.forward, self.objective, params, tasks,
                                                 self.inner, inner_noise, self.batched,
                                                 self.method.realise, draws)
        weights = (weigh(grads, lambda: self._support_gradients(params, tasks)) if weigh else
                   torch.full((self.meta_batch,), 1.0 / self.meta_batch, device=tasks.support_x.device))
        meta_grad = {k: torch.tensordot(weights, g, dims=1) for k, g in grads.items()}
        summary = {k: v.mean().item() for k, v in metrics.items()}
        if self.method.regularised:
            penalty_grad, penalty = grad_and_value(self.method.regulariser)(params)
            meta_grad = {k: g + penalty_grad[k] for k, g in meta_grad.items()}
            summary["regulariser"] = penalty.item()
        outer_noise = self.noise.outer(params, self.iteration, self.noise_generator)
        if outer_noise is not None:
            meta_grad = {k: g + outer_noise[k] for k, g in meta_grad.items()}
        self._check_finite(summary["loss_post"], meta_grad)
        if self.meta_grad_clip is not None:  # e.g. MiniImageNet: Finn et al. clip to +-10
            meta_grad = {k: g.clamp(-self.meta_grad_clip, self.meta_grad_clip) for k, g in meta_grad.items()}
        for name, p in self.params.items():
            p.grad = meta_grad[name]
        self.optimizer.step()
        self.iteration += 1
        return summary

    def _support_gradients(self, params: Params, tasks: TaskBatch) -> Params:
        """Each task's support-loss gradient at the meta-parameters (as meta-test sees them)."""
        return per_task_support_gradients(self.forward, self.objective,
                                          self.method.evaluation_params(params), tasks, self.batched)

    def _check_finite(self, loss: float, meta_grad: Params) -> None:
        bad = [k for k, g in meta_grad.items() if not torch.isfinite(g).all()]
        if math.isfinite(loss) and not bad:
            return
        what = f"loss {loss}" + (f", non-finite meta-gradient in {', '.join(bad)}" if bad else "")
        raise TrainingDiverged(
            f"training diverged at iteration {self.iteration}: {what} ({describe(self.noise)}, "
            f"inner lr {self.inner.lr:g}); lower noise.sigma or the learning rates")

    def state_dict(self) -> dict:
        return {
            "params": self.meta_params(),
            "optimizer": self.optimizer.state_dict(),
            "task_generator": self.task_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "method_generator": self.method_generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.noise_generator.set_state(state["noise_generator"])
        self.method_generator.set_state(state["method_generator"])
        self.iteration = state["iteration"]


def fingerprint(settings: dict) -> str:
    """A stable hash of everything that shapes a run, so a checkpoint is resumed only by its own run."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Checkpoint:
    """Where and how often a run saves itself; resumed only when the fingerprint matches."""

    path: Path
    every: int
    fingerprint: str

    def load(self) -> dict | None:
        """This run's saved state; None when there is none or it is of other settings.
        A file that is not a checkpoint is a DataError naming it."""
        if not self.path.exists():
            return None
        state = load_file(self.path)
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
            raise DataError(f"{self.path}: not a checkpoint (no settings fingerprint)")
        return state if state["fingerprint"] == self.fingerprint else None

    def save(self, state: dict) -> None:
        save_atomic({**state, "fingerprint": self.fingerprint}, self.path)

    def set_aside(self) -> Path:
        """Rename a broken checkpoint to *.broken (kept for a look), out of training's way."""
        aside = self.path.with_name(self.path.name + ".broken")
        try:
            os.replace(self.path, aside)
        except OSError as err:
            raise OutputError(f"cannot set aside the broken checkpoint {self.path} "
                              f"({err.strerror or err}); delete it") from None
        return aside


@dataclass
class Curve:
    """Learning-curve rows: window means of training metrics plus validation metrics."""

    rows: list[dict] = field(default_factory=list)
    window: list[dict] = field(default_factory=list)

    def add(self, metrics: dict[str, float]) -> None:
        self.window.append(metrics)

    def close_window(self, iteration: int, validation: dict[str, float]) -> dict:
        row = {"iteration": iteration}
        for key in self.window[0]:
            row[f"train_{key}"] = sum(m[key] for m in self.window) / len(self.window)
        row |= {f"val_{k}": v for k, v in validation.items()}
        self.rows.append(row)
        self.window = []
        return row


def train(trainer: MetaTrainer, source: TaskSource, iterations: int, log_every: int,
          validate: Callable[[Params], dict[str, float]], checkpoint: Checkpoint,
          label: str, weigh: Weigher | None = None,
          log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) meta-training to `iterations`; returns the learning-curve rows."""
    curve = _resume(trainer, checkpoint, label, log)
    log(f"[{label}] {iterations} meta-iterations, {describe(trainer.noise)}, "
        f"device {trainer.task_generator.device}")
    started, start_iteration = time.perf_counter(), trainer.iteration
    while trainer.iteration < iterations:
        curve.add(trainer.step(source, weigh))
        done = trainer.iteration
        if done % log_every == 0 or done == iterations:
            row = curve.close_window(done, validate(trainer.meta_params()))
            log(_progress(label, row, done, iterations, started, start_iteration))
        if done % checkpoint.every == 0 or done == iterations:
            checkpoint.save({"trainer": trainer.state_dict(), "curve_rows": curve.rows,
                             "curve_window": curve.window})
    return curve.rows


def _resume(trainer: MetaTrainer, checkpoint: Checkpoint, label: str,
            log: Callable[[str], None]) -> Curve:
    """Load this run's checkpoint into `trainer`; returns the learning curve so far."""
    try:
        state = checkpoint.load()
    except DataError as err:
        return _start_over(checkpoint, label, log, str(err))
    if state is None:
        return Curve()
    fresh = copy.deepcopy(trainer.state_dict())
    try:
        trainer.load_state_dict(state["trainer"])
        rows, window = list(state["curve_rows"]), list(state["curve_window"])
        if not all(isinstance(row, dict) for row in rows + window):
            raise TypeError("curve rows are not mappings")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        trainer.load_state_dict(fresh)
        return _start_over(checkpoint, label, log,
                           f"{checkpoint.path}: cannot resume from it ({type(err).__name__}: {err})")
    log(f"[{label}] resuming from checkpoint {checkpoint.path} at iteration {trainer.iteration}")
    return Curve(rows, window)


def _start_over(checkpoint: Checkpoint, label: str, log: Callable[[str], None], problem: str) -> Curve:
    aside = checkpoint.set_aside()
    log(f"[{label}] broken checkpoint: {problem}; set aside as {aside}, training restarts from "
        "iteration 0")
    return Curve()


def _progress(label: str, row: dict, done: int, total: int, started: float, first: int) -> str:
    rate = (done - first) / max(time.perf_counter() - started, 1e-9)
    eta = (total - done) / rate if rate > 0 else None
    shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "iteration")
    return f"[{label}] it {done}/{total} ({100 * done / total:.0f}%)  {shown}  " \
           f"{rate:.2f} it/s  eta {clock(eta)}"


def clock(seconds: float | None) -> str:
    """A duration as h:mm:ss (`-:--:--` when unknown)."""
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
