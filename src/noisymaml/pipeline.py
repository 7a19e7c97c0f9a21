"""What the DVC stages share: file locations, model files, and turning params into runs.

Stages in `stages/` only parse their arguments and call these functions, so the same code
serves `dvc repro`, tests and notebooks.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from noisymaml.datasets import TaskData, load_file, load_task_data, seeded
from noisymaml.errors import DataError, NoisyMamlError
from noisymaml.evaluation import capture_gradients, evaluate, split_summary_inputs
from noisymaml.maml import Forward, InnerLoop, make_forward
from noisymaml.meta_regularisation import posterior_mean
from noisymaml.methods import Method
from noisymaml.metrics import MEMORISATION_TASKS, summarise
from noisymaml.models import build_model
from noisymaml.noise import GradientNoise
from noisymaml.paths import CHECKPOINTS, episodes_dir
from noisymaml.params import (AlgorithmsParams, FeedbackParams, NoiseParams, Section, parse_dataset,
                              parse_device, parse_section, parse_seed, read_params)
from noisymaml.training import Checkpoint, MetaTrainer, fingerprint, resolve_device, save_atomic, train

Params = dict[str, torch.Tensor]
FEEDBACK_STREAM = 7919  # seed offset so re-meta-training draws tasks other than the first run's
@dataclass
class Run:
    """Validated settings of one (dataset, method) pair."""

    dataset: str
    method: Method
    seed: int
    device: torch.device
    config: Section
    noise: GradientNoise
    feedback: FeedbackParams

    @classmethod
    def from_params(cls, dataset: str, method: str, params_file: Path = Path("params.yaml")) -> "Run":
        data = read_params(params_file)
        chosen = Method.parse(method, parse_section(data, "algorithms", AlgorithmsParams, params_file))
        noise = (GradientNoise.from_params(parse_section(data, "noise", NoiseParams, params_file))
                 if chosen.noisy else GradientNoise())
        return cls(dataset, chosen, parse_seed(data, params_file),
                   resolve_device(parse_device(data, params_file)),
                   parse_dataset(data, dataset, params_file), noise,
                   parse_section(data, "feedback", FeedbackParams, params_file))

    def task_data(self) -> TaskData:
        return load_task_data(self.dataset, self.config, episodes_dir(self.dataset), self.device)

    def training_source(self, data: TaskData):
        """The training tasks as this run's method sees them (meta-augmented for meta_aug)."""
        return self.method.training_source(data.train, data.objective.classification,
                                           data.model_spec.get("n_classes", 0))

    @property
    def inner(self) -> InnerLoop:
        maml = self.config.maml
        return InnerLoop(maml.inner_lr, maml.inner_steps, maml.first_order)

    @property
    def eval_inner(self) -> InnerLoop:
        return InnerLoop(self.config.maml.inner_lr, self.config.eval.inner_steps, True)

    @property
    def batched(self) -> bool:
        """Tasks through vmap together, or one by one (`train.batched_tasks`; auto = vmap on CUDA)."""
        choice = self.config.train.batched_tasks
        return self.device.type == "cuda" if choice == "auto" else choice

    @property
    def autocast(self) -> torch.dtype | None:
        """The forward passes' autocast type (`train.precision`), None for plain float32."""
        return torch.bfloat16 if self.config.train.precision == "bfloat16" else None

    def forward(self, model: torch.nn.Module) -> Forward:
        return make_forward(model, self.autocast)

    def settings(self) -> dict:
        """Everything that shapes this run's training, for checkpoint fingerprints."""
        return {"dataset": self.dataset, "method": self.method.name, "seed": self.seed,
                "algorithm": self.method.settings.model_dump(), "config": self.config.model_dump(),
                "noise": vars(self.noise)}

    def trainer(self, data: TaskData, model: torch.nn.Module, params: Params, seed: int) -> MetaTrainer:
        train_cfg = self.config.train
        return MetaTrainer(model, params, data.objective, self.inner, self.noise, train_cfg.meta_lr,
                           train_cfg.meta_batch, seed, self.device, self.batched, self.method,
                           train_cfg.meta_grad_clip, self.autocast)

    def meta_train(self, trainer: MetaTrainer, data: TaskData, iterations: int, label: str,
                   extra_settings: dict, weigh=None) -> list[dict]:
        """Train with validation on the first `train.val_tasks` validation episodes."""
        cfg = self.config

        def validate(params: Params) -> dict[str, float]:
            per_task = self.evaluate(trainer.forward, data, params, data.val, cfg.train.val_tasks)
            return {k: v.mean().item() for k, v in per_task.items() if k.endswith("_post")}

        checkpoint = Checkpoint(CHECKPOINTS / self.dataset / f"{label}.pt", cfg.train.checkpoint_every,
                                fingerprint({**self.settings(), **extra_settings}))
        rows = train(trainer, self.training_source(data), iterations, cfg.train.log_every, validate, checkpoint,
                     f"{self.dataset}/{label}", weigh)
        checkpoint.path.unlink(missing_ok=True)
        return rows

    def evaluate(self, forward, data: TaskData, params: Params, episodes,
                 limit: int | None = None) -> dict[str, torch.Tensor]:
        """Per-episode metrics after the method's meta-test adaptation from `params`."""
        inner = self.method.inner_loop(self.eval_inner, params)
        return evaluate(forward, data.objective, self.method.evaluation_params(params), episodes,
                        inner, self.config.eval.chunk, limit=limit, batched=self.batched)

    def score(self, forward, data: TaskData, params: Params) -> dict:
        """Metrics of a trained model: test (all, feedback, held-out), validation, training tasks.

        Training tasks are the dataset's own (never meta-augmented): pre-adaptation accuracy on
        them is the memorisation index.
        """
        def scored(episodes) -> dict[str, torch.Tensor]:
            return self.evaluate(forward, data, params, episodes)

        test, val = scored(data.test), scored(data.val)
        train = scored(data.train.sample(MEMORISATION_TASKS,
                                         seeded(self.seed, "memorisation", self.device)))
        groups = split_summary_inputs(test, min(self.feedback.tasks, len(data.test)))
        return {"test": summarise(test),
                **{f"test_{name}": summarise(g) for name, g in groups.items() if len(next(iter(g.values())))},
                "val": summarise(val), "train_tasks": summarise(train)}


def save_model(path: Path, spec: dict, params: Params, info: dict) -> None:
    save_atomic({"spec": spec, "params": {k: v.cpu() for k, v in params.items()}, "info": info}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Params, dict]:
    """Rebuild the network and its meta-parameters from a model file (no code is unpickled)."""
    saved = load_file(path)
    if not {"spec", "params"} <= set(saved):
        raise DataError(f"{path}: not a noisymaml model file (expected keys spec and params)")
    model = build_model(saved["spec"]).to(device)
    params = {k: v.to(device) for k, v in saved["params"].items()}
    expected = {name for name, _ in model.named_parameters()}
    if set(posterior_mean(params)) != expected:
        raise DataError(f"{path}: parameters do not match its model spec {saved['spec']}")
    return model, params, saved["spec"]


def save_gradients(path: Path, run: Run, data: TaskData, forward, params: Params) -> None:
    count = min(run.feedback.tasks, len(data.test))
    grads = capture_gradients(forward, data.objective, run.method.evaluation_params(params),
                              data.test, count)
    save_atomic({"gradients": grads, "episodes": torch.arange(count)}, path)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_curve(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                         for row in rows)
