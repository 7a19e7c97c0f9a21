"""One (dataset, method) pair of the pipeline: params.yaml turned into plain core values.

`Run` is a frozen description (validated settings, the method object, the device); the
functions below train, score and capture gradients with the core, so that `steps` (what the
stages call) stays a few lines per stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from noisymaml.core import Params
from noisymaml.core.devices import resolve_device
from noisymaml.core.evaluation import EvaluationDiverged, capture_gradients, evaluate, memorisation_tasks, non_finite
from noisymaml.core.feedback import Window, online_stream, rounds
from noisymaml.core.files import load_file, save_atomic
from noisymaml.core.maml import Forward, InnerLoop, auto_batched, make_forward
from noisymaml.core.metrics import summarise
from noisymaml.core.models import build_model, load_model
from noisymaml.core.noise import GradientNoise
from noisymaml.core.progress import Progress
from noisymaml.core.training import Checkpoint, MetaTrainer, TrainerConfig, Weigher, fingerprint, train
from noisymaml.datasets import DATASETS
from noisymaml.datasets.base import Dataset, TaskData
from noisymaml.errors import DataError, ParamError
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
from noisymaml.pipeline.paths import checkpoint_path, episodes_dir


def gradient_noise(params: NoiseParams) -> GradientNoise:
    """The `noise` section as the core's GradientNoise."""
    return GradientNoise(**params.model_dump())


CHECKPOINT_FORMAT = 2  # what a checkpoint holds (2: three random streams); others are not resumed


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
                             train_cfg.meta_grad_clip, self.autocast, data.model_spec.get("n_classes", 0))

    def initial_model(self, data: TaskData) -> tuple[torch.nn.Module, Params, dict]:
        """The method's network for this dataset, its starting meta-parameters and its spec; a
        method setting the network cannot take is a ParamError."""
        try:
            spec = self.method.model_spec(data.model_spec)
            model = build_model(spec)
            return model, self.method.initial_params(model, self.seed), spec
        except ValueError as err:
            raise ParamError(f"params.yaml: `algorithms.{self.algorithm}`: {err}") from None


def evaluate_episodes(run: Run, forward: Forward, data: TaskData, params: Params, episodes,
                      what: str, limit: int | None = None, progress: Progress | None = None
                      ) -> dict[str, torch.Tensor]:
    """Per-episode metrics after the method's meta-test adaptation from `params`; a non-finite
    metric (`what`: which episodes) is an EvaluationDiverged, never a number."""
    inner = run.method.inner_loop(run.eval_inner, params)
    per_task = evaluate(forward, data.objective, run.method.evaluation_params(params), episodes,
                        inner, run.config.eval.chunk, limit=limit, batched=run.batched, progress=progress)
    bad = non_finite(per_task)
    if bad:
        counts = ", ".join(f"{key} on {count}" for key, count in bad.items())
        raise EvaluationDiverged(
            f"{run.dataset}/{run.method_name}: meta-test adaptation diverged on the {what} "
            f"(NaN/inf {counts} of {len(next(iter(per_task.values())))} episodes, "
            f"{inner.steps} steps at inner lr {inner.lr:g}); lower `{run.dataset}.maml.inner_lr` "
            f"or `{run.dataset}.eval.inner_steps`")
    return per_task


def meta_train(run: Run, trainer: MetaTrainer, data: TaskData, iterations: int, label: str,
               extra_settings: dict, weigh: Weigher | None = None) -> list[dict]:
    """Train with validation on the first `train.val_tasks` validation episodes; returns the
    learning-curve rows. The checkpoint stays: the stage deletes it once its outputs are written."""
    cfg = run.config

    def validate(params: Params) -> dict[str, float]:
        per_task = evaluate_episodes(run, trainer.forward, data, params, data.val,
                                     "validation episodes", cfg.train.val_tasks)
        return {k: v.mean().item() for k, v in per_task.items() if k.endswith("_post")}

    checkpoint = Checkpoint(checkpoint_path(run.dataset, label), cfg.train.checkpoint_every,
                            fingerprint({**run.settings(), **extra_settings, "format": CHECKPOINT_FORMAT}))
    return train(trainer, data.train, iterations, cfg.train.log_every, validate,
                 checkpoint, f"{run.dataset}/{label}", weigh)


def score(run: Run, forward: Forward, data: TaskData, params: Params, label: str,
          log: Callable[[str], None] = print) -> dict:
    """Metrics of a trained model: held-out test, feedback tasks, validation, training tasks;
    progress lines start with `[label]`.

    Test episodes are held out: their classes (and so images) never fed back. The feedback
    episodes are scored separately. Training tasks are the dataset's own (never
    meta-augmented): pre-adaptation accuracy on them is the memorisation index.
    """
    def scored(what: str, episodes, limit: int | None = None) -> dict[str, torch.Tensor]:
        progress = Progress(f"[{label}] {what}", min(limit or len(episodes), len(episodes)), "episodes scored", log)
        return evaluate_episodes(run, forward, data, params, episodes, what, limit, progress)

    test, val = scored("test episodes", data.test), scored("validation episodes", data.val)
    train_tasks = scored("training tasks", memorisation_tasks(data.train, run.seed, run.device))
    feedback = scored("feedback tasks", data.feedback, feedback_count(run, data))
    return {"test": summarise(test), "test_feedback_tasks": summarise(feedback),
            "val": summarise(val), "train_tasks": summarise(train_tasks)}


def feedback_count(run: Run, data: TaskData) -> int:
    """`feedback.tasks`, checked against the feedback episodes the episodes stage built."""
    if run.feedback.tasks > len(data.feedback):
        raise ParamError(f"params.yaml: `feedback.tasks` = {run.feedback.tasks} but "
                         f"`{run.dataset}.tasks.feedback_episodes` built only {len(data.feedback)}")
    return run.feedback.tasks


def resumed_trainer(run: Run, data: TaskData, path: Path) -> tuple[MetaTrainer, dict]:
    """The trainer of a finished run, as it was at its last iteration (a model file holds the
    trainer's state), so that more iterations continue it exactly; and the model's spec."""
    model, params, spec = load_model(path, run.device)
    trainer = MetaTrainer(model, params, run.trainer_config(data, run.seed))
    state = load_file(path).get("trainer")
    if state is None:
        raise DataError(f"{path}: holds no trainer state to continue from; re-run its train stage "
                        "(dvc repro)")
    trainer.load_state_dict(state)
    return trainer, spec


def model_info(run: Run, label: str, trainer: MetaTrainer, data: TaskData) -> dict:
    """What a model file says about itself: the run, and how meta-test adapts and prepares
    inputs, so that `noisymaml predict` adapts exactly as the evaluate stage does."""
    return {"dataset": run.dataset, "method": label, "algorithm": run.algorithm,
            "algorithm_settings": run.algorithm_settings.model_dump(), "iterations": trainer.iteration,
            "meta_test": {"inner_lr": run.eval_inner.lr, "inner_steps": run.eval_inner.steps,
                          "first_order": run.eval_inner.first_order},
            "inputs": run.spec.input_info(run.config, data.model_spec)}


def save_gradients(path: Path, run: Run, data: TaskData, forward: Forward, params: Params) -> None:
    count = feedback_count(run, data)
    grads = capture_gradients(forward, data.objective, run.method.evaluation_params(params),
                              data.feedback, count)
    save_atomic({"gradients": grads, "episodes": torch.arange(count)}, path)



def online_feedback(run: Run, trainer: MetaTrainer, data: TaskData, label: str, extra_settings: dict,
                    weigher_of: Callable[[Params], Weigher] | None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The online feedback mode: the first `feedback.tasks` feedback episodes arrive as a
    stream, each scored (adapted from the trainer's meta-parameters of the moment, as
    evaluation adapts) before its support gradient is stored; every `feedback.online_every`
    arrivals the trainer goes on for ceil(`feedback.iterations` / rounds) iterations, weighted
    by `weigher_of(stored gradients)` (None: unweighted, the control). Returns the learning-curve
    rows of all rounds and the per-arrival scores."""
    count, every = feedback_count(run, data), run.feedback.online_every
    per_round = math.ceil(run.feedback.iterations / rounds(count, every))
    rows: list[dict] = []

    def score(params: Params, index: int) -> dict[str, torch.Tensor]:
        return evaluate_episodes(run, trainer.forward, data, params, Window(data.feedback, index, index + 1),
                                 f"arriving feedback task {index}")

    def gradient(params: Params, index: int) -> Params:
        return capture_gradients(trainer.forward, data.objective, run.method.evaluation_params(params),
                                 Window(data.feedback, index, index + 1), 1)

    def retrain(stored: Params) -> None:
        weigh = weigher_of({k: v.to(run.device) for k, v in stored.items()}) if weigher_of else None
        # the arrivals so far name the round in the checkpoint's fingerprint: a re-run resumes
        # a checkpoint only in the round that wrote it
        arrivals = len(next(iter(stored.values())))
        rows.extend(meta_train(run, trainer, data, trainer.iteration + per_round, label,
                               {**extra_settings, "online_arrivals": arrivals}, weigh))

    stream = online_stream(count, every, trainer.meta_params, score, gradient, retrain)
    return rows, stream
