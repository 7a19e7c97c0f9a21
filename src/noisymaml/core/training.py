"""Meta-training: noisy MAML steps, optional feedback weighting, logging and resumable checkpoints.

Task sampling and gradient noise use two separate seeded generators on the training device,
so noise never changes which tasks are drawn, and a resumed run replays the exact streams.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.func import grad_and_value

from noisymaml.core import Params
from noisymaml.core.files import save_atomic
from noisymaml.core.maml import InnerLoop, Objective, Realise, make_forward, per_task_meta_gradients
from noisymaml.core.noise import GradientNoise, describe
from noisymaml.core.tasks import TaskSource
from noisymaml.errors import NoisyMamlError

Weigher = Callable[[Params], torch.Tensor]
NOISE_STREAM = 1_000_003  # offset between the task and the noise generators' seeds


class TrainingDiverged(NoisyMamlError):
    """A loss or gradient became non-finite; the last finite checkpoint is kept."""


class Method(Protocol):
    """The hooks through which a meta-learning method differs from MAML (`noisymaml.methods`)."""

    regularised: bool

    def inner_loop(self, inner: InnerLoop, params: Params) -> InnerLoop: ...

    def draws(self, params: Params, n_tasks: int, generator: torch.Generator) -> Params | None: ...

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
        self.iteration = 0

    def meta_params(self) -> Params:
        return {k: p.detach() for k, p in self.params.items()}

    def step(self, source: TaskSource, weigh: Weigher | None = None) -> dict[str, float]:
        """One meta-iteration; returns the meta-batch's mean pre/post-adaptation metrics."""
        params = self.meta_params()
        tasks = source.sample(self.meta_batch, self.task_generator)
        adapted, _ = self.inner.splits(params)
        inner_noise = self.noise.inner(adapted, self.meta_batch, self.inner.steps, self.iteration,
                                       self.noise_generator)
        draws = self.method.draws(params, self.meta_batch, self.noise_generator)
        grads, metrics = per_task_meta_gradients(self.forward, self.objective, params, tasks,
                                                 self.inner, inner_noise, self.batched,
                                                 self.method.realise, draws)
        weights = weigh(grads) if weigh else torch.full(
            (self.meta_batch,), 1.0 / self.meta_batch, device=tasks.support_x.device)
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
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.noise_generator.set_state(state["noise_generator"])
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
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        return state if state.get("fingerprint") == self.fingerprint else None

    def save(self, state: dict) -> None:
        save_atomic({**state, "fingerprint": self.fingerprint}, self.path)


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
    curve = Curve()
    state = checkpoint.load()
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        curve = Curve(state["curve_rows"], state["curve_window"])
        log(f"[{label}] resuming from checkpoint {checkpoint.path} at iteration {trainer.iteration}")
    log(f"[{label}] {iterations} meta-iterations, {describe(trainer.noise)}, "
        f"device {trainer.task_generator.device}")
    started, start_iteration = time.perf_counter(), trainer.iteration
    while trainer.iteration < iterations:
        curve.add(trainer.step(source, weigh))
        done = trainer.iteration
        if done % log_every == 0 or done == iterations:
            row = curve.close_window(done, validate(trainer.meta_params()))
            log(_progress(label, row, done, iterations, started, start_iteration))
        if done % checkpoint.every == 0 and done < iterations:
            checkpoint.save({"trainer": trainer.state_dict(), "curve_rows": curve.rows,
                             "curve_window": curve.window})
    return curve.rows


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
