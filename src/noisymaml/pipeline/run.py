"""One (dataset, method) pair of the pipeline: params.yaml turned into plain core values.

`Run` is a frozen description (validated settings, the method object, the device); the
functions below train, score and capture gradients with the core, so that `steps` (what the
stages call) stays a few lines per stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from noisymaml.core import Params
from noisymaml.core.devices import resolve_device
from noisymaml.core.evaluation import capture_gradients, evaluate, memorisation_tasks, split_summary_inputs
from noisymaml.core.files import save_atomic
from noisymaml.core.maml import Forward, InnerLoop, auto_batched, make_forward
from noisymaml.core.metrics import summarise
from noisymaml.core.noise import GradientNoise
from noisymaml.core.tasks import TaskSource
from noisymaml.core.training import Checkpoint, MetaTrainer, TrainerConfig, Weigher, fingerprint, train
from noisymaml.datasets import DATASETS
from noisymaml.datasets.base import Dataset, TaskData
from noisymaml.errors import ParamError
from noisymaml.methods import MAML, METHODS
from noisymaml.pipeline.params import (
    NOISY,
    PARAMS_FILE,
    AlgorithmsParams,
    FeedbackParams,
    NoiseParams,
    Section,
    check_method,
    parse_dataset,
    parse_device,
    parse_section,
    parse_seed,
    read_params,
)
from noisymaml.pipeline.paths import CHECKPOINTS, episodes_dir

FEEDBACK_STREAM = 7919  # seed offset so re-meta-training draws tasks other than the first run's


def gradient_noise(params: NoiseParams) -> GradientNoise:
    """The `noise` section as the core's GradientNoise."""
    return GradientNoise(**params.model_dump())


@dataclass(frozen=True)
class Run:
    """Validated settings of one (dataset, method) pair."""

    dataset: str
    method_name: str  # e.g. noisy_mr_maml_w
    algorithm: str  # e.g. mr_maml_w
    method: MAML
    algorithm_settings: Section
    seed: int
    device: torch.device
    config: Section  # the dataset's section
    noise: GradientNoise
    feedback: FeedbackParams

    @classmethod
    def from_params(cls, dataset: str, method: str, params_file: Path = PARAMS_FILE) -> Run:
        data = read_params(params_file)
        algorithm = check_method(method).removeprefix(NOISY)
        settings = getattr(parse_section(data, "algorithms", AlgorithmsParams, params_file), algorithm)
        noise = (gradient_noise(parse_section(data, "noise", NoiseParams, params_file))
                 if method != algorithm else GradientNoise())
        seed, config = parse_seed(data, params_file), parse_dataset(data, dataset, params_file)
        feedback = parse_section(data, "feedback", FeedbackParams, params_file)
        # last, once every setting is valid: `auto` may wait for a GPU of its own
        device = resolve_device(parse_device(data, params_file), exclusive=True)
        return cls(dataset, method, algorithm, METHODS[algorithm](**settings.model_dump()), settings,
                   seed, device, config, noise, feedback)

    @property
    def spec(self) -> Dataset:
        return DATASETS[self.dataset]

    def task_data(self) -> TaskData:
        return self.spec.load(self.config, episodes_dir(self.dataset), self.device)

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
        return auto_batched(self.device) if choice == "auto" else choice

    @property
    def autocast(self) -> torch.dtype | None:
        """The forward passes' autocast type (`train.precision`), None for plain float32."""
        return torch.bfloat16 if self.config.train.precision == "bfloat16" else None

    def forward(self, model: torch.nn.Module) -> Forward:
        return make_forward(model, self.autocast)

    def settings(self) -> dict:
        """Everything that shapes this run's training, for checkpoint fingerprints."""
        return {"dataset": self.dataset, "method": self.method_name, "seed": self.seed,
                "algorithm": self.algorithm_settings.model_dump(), "config": self.config.model_dump(),
                "noise": asdict(self.noise)}

    def trainer_config(self, data: TaskData, seed: int) -> TrainerConfig:
        train_cfg = self.config.train
        return TrainerConfig(data.objective, self.inner, self.method, train_cfg.meta_lr,
                             train_cfg.meta_batch, seed, self.device, self.noise, self.batched,
                             train_cfg.meta_grad_clip, self.autocast)

    def initial_params(self, model: torch.nn.Module) -> Params:
        """The method's starting meta-parameters; a setting the model cannot take is a ParamError."""
        try:
            return self.method.initial_params(model, self.seed)
        except ValueError as err:
            raise ParamError(f"params.yaml: `algorithms.{self.algorithm}`: {err}") from None

    def training_source(self, data: TaskData) -> TaskSource:
        """The training tasks as this run's method sees them (meta-augmented for meta_aug)."""
        return self.method.training_source(data.train, data.objective.classification,
                                           data.model_spec.get("n_classes", 0))


def evaluate_episodes(run: Run, forward: Forward, data: TaskData, params: Params, episodes,
                      limit: int | None = None) -> dict[str, torch.Tensor]:
    """Per-episode metrics after the method's meta-test adaptation from `params`."""
    inner = run.method.inner_loop(run.eval_inner, params)
    return evaluate(forward, data.objective, run.method.evaluation_params(params), episodes,
                    inner, run.config.eval.chunk, limit=limit, batched=run.batched)


def meta_train(run: Run, trainer: MetaTrainer, data: TaskData, iterations: int, label: str,
               extra_settings: dict, weigh: Weigher | None = None) -> list[dict]:
    """Train with validation on the first `train.val_tasks` validation episodes; returns the
    learning-curve rows. The checkpoint goes once training has finished."""
    cfg = run.config

    def validate(params: Params) -> dict[str, float]:
        per_task = evaluate_episodes(run, trainer.forward, data, params, data.val, cfg.train.val_tasks)
        return {k: v.mean().item() for k, v in per_task.items() if k.endswith("_post")}

    checkpoint = Checkpoint(CHECKPOINTS / run.dataset / f"{label}.pt", cfg.train.checkpoint_every,
                            fingerprint({**run.settings(), **extra_settings}))
    rows = train(trainer, run.training_source(data), iterations, cfg.train.log_every, validate,
                 checkpoint, f"{run.dataset}/{label}", weigh)
    checkpoint.path.unlink(missing_ok=True)
    return rows


def score(run: Run, forward: Forward, data: TaskData, params: Params) -> dict:
    """Metrics of a trained model: test (all, feedback, held-out), validation, training tasks.

    Training tasks are the dataset's own (never meta-augmented): pre-adaptation accuracy on
    them is the memorisation index.
    """
    def scored(episodes) -> dict[str, torch.Tensor]:
        return evaluate_episodes(run, forward, data, params, episodes)

    test, val = scored(data.test), scored(data.val)
    train_tasks = scored(memorisation_tasks(data.train, run.seed, run.device))
    groups = split_summary_inputs(test, min(run.feedback.tasks, len(data.test)))
    return {"test": summarise(test),
            **{f"test_{name}": summarise(g) for name, g in groups.items() if len(next(iter(g.values())))},
            "val": summarise(val), "train_tasks": summarise(train_tasks)}


def save_gradients(path: Path, run: Run, data: TaskData, forward: Forward, params: Params) -> None:
    count = min(run.feedback.tasks, len(data.test))
    grads = capture_gradients(forward, data.objective, run.method.evaluation_params(params),
                              data.test, count)
    save_atomic({"gradients": grads, "episodes": torch.arange(count)}, path)

