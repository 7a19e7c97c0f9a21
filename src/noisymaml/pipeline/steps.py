"""What each DVC stage does, one function per stage; stages/*.py parse their arguments and
call one of these. The same functions serve `dvc repro`, tests and notebooks.

A training stage deletes its checkpoints only once all its outputs are written: DVC deletes a
stage's outputs before re-running it, so a write that fails (read-only folder, full disk) must
leave the trained state where the re-run resumes from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from noisymaml.core.feedback import FeedbackWeigher
from noisymaml.core.files import load_fields, tensors, write_curve, write_json
from noisymaml.core.metrics import summarise
from noisymaml.core.models import load_model, save_model
from noisymaml.core.training import MetaTrainer
from noisymaml.datasets import DATASETS
from noisymaml.datasets.base import FetchSettings, TaskData
from noisymaml.errors import OutputError
from noisymaml.pipeline.params import (
    FeedbackParams,
    parse_dataset,
    parse_dataset_name,
    parse_section,
    parse_seed,
    read_params,
)
from noisymaml.pipeline.paths import (
    checkpoint_path,
    curve_path,
    downloads_dir,
    episodes_dir,
    gradients_path,
    metrics_path,
    model_path,
)
from noisymaml.pipeline.run import (
    Run,
    meta_train,
    model_info,
    online_feedback,
    resumed_trainer,
    save_gradients,
    score,
)

FEEDBACK_VARIANTS = ("feedback", "continued")  # re-meta-training with and without the weighting
ONLINE_GROUP = "online_stream"  # metrics group of the online mode: each task scored as it arrived


def fetch(dataset: str) -> str:
    """Stage `fetch@<dataset>`: check (Omniglot: or download) data/downloads/<dataset>/."""
    settings = parse_section(read_params(), "fetch", FetchSettings)
    folder = downloads_dir(parse_dataset_name(dataset))
    return f"[fetch {dataset}] {folder}: {DATASETS[dataset].fetch(folder, settings)}"


def episodes(dataset: str) -> str:
    """Stage `episodes@<dataset>`: the task distribution's data and the fixed val/test episodes."""
    data = read_params()
    out = episodes_dir(dataset)
    config = parse_dataset(data, dataset)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {out}: {err.strerror or err}") from None
    summary = DATASETS[dataset].build_episodes(config, parse_seed(data), downloads_dir(dataset),
                                               parse_section(data, "fetch", FetchSettings), out)
    return f"[episodes {dataset}] {json.dumps(summary)}"


@contextmanager
def _checkpoints_kept_until_written(dataset: str, labels: list[str]) -> Iterator[None]:
    """Delete the runs' checkpoints once the block has written every output; when a write
    fails, say where the trained state is kept."""
    paths = [checkpoint_path(dataset, label) for label in labels]
    try:
        yield
    except OutputError as err:
        kept = [str(path) for path in paths if path.exists()]
        if not kept:
            raise
        raise OutputError(f"{err} (the training so far is kept in {', '.join(kept)}: run the "
                          "stage again once it can write, and it resumes from there)") from None
    for path in paths:
        path.unlink(missing_ok=True)


def _finish(run: Run, label: str, trainer: MetaTrainer, spec: dict, data: TaskData, rows: list[dict]) -> None:
    """Save a trained model (with its trainer's state) and its learning curve under `label`."""
    save_model(model_path(run.dataset, label), spec, trainer.meta_params(),
               model_info(run, label, trainer, data), trainer.state_dict())
    if rows:
        write_curve(curve_path(run.dataset, label), rows)


def train(dataset: str, method: str) -> None:
    """Stage `train@<dataset>-<method>`: meta-train one method; model file and learning curve."""
    run = Run.from_params(dataset, method)
    data = run.task_data()
    model, params, spec = run.initial_model(data)
    trainer = MetaTrainer(model, params, run.trainer_config(data, run.seed))
    with _checkpoints_kept_until_written(dataset, [method]):
        rows = meta_train(run, trainer, data, run.config.train.iterations, method, {})
        _finish(run, method, trainer, spec, data, rows)


def evaluate(dataset: str, method: str) -> str:
    """Stage `evaluate@<dataset>-<method>`: meta-test on the fixed episodes and capture the
    feedback tasks' support gradients."""
    run = Run.from_params(dataset, method)
    data = run.task_data()
    model, params, _ = load_model(model_path(dataset, method), run.device)
    forward = run.forward(model)
    metrics = score(run, forward, data, params, f"evaluate {dataset}/{method}")
    write_json(metrics_path(dataset, method), metrics)
    save_gradients(gradients_path(dataset, method), run, data, forward, params)
    return f"[evaluate {dataset}/{method}] test {metrics['test']}"


def _load_gradients(dataset: str, method: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The support gradients the evaluate stage captured for feedback, on `device`."""
    path = gradients_path(dataset, method)
    saved = load_fields(path, {"gradients": dict, "episodes": torch.Tensor}, "a gradients file")
    return {k: v.to(device) for k, v in tensors(path, saved["gradients"], "gradients").items()}


def feedback(dataset: str) -> None:
    """Stage `feedback@<dataset>`: go on training `feedback.method`'s run for
    `feedback.iterations` more iterations (its optimiser, schedule and random streams resumed)
    with meta-gradients weighted by similarity to the feedback tasks' support gradients, and the
    same iterations unweighted ("continued"), the control. `feedback.mode: batch` weights by the
    gradients the evaluate stage stored; `online` feeds the tasks back as a stream
    (`run.online_feedback`) and adds the per-arrival scores as the metrics group `online_stream`."""
    method = parse_section(read_params(), "feedback", FeedbackParams).method
    run = Run.from_params(dataset, method)
    data = run.task_data()
    settings = run.feedback
    labels = {variant: f"{method}_{variant}" for variant in FEEDBACK_VARIANTS}
    with _checkpoints_kept_until_written(dataset, list(labels.values())):
        for variant, label in labels.items():
            trainer, spec = resumed_trainer(run, data, model_path(dataset, method))
            extra = {"feedback": settings.model_dump(), "variant": variant}
            weigher_of = _weigher_of(settings) if variant == "feedback" else None
            if settings.mode == "online":
                rows, stream = online_feedback(run, trainer, data, label, extra, weigher_of)
                online = {ONLINE_GROUP: summarise(stream)}
            else:
                weigh = weigher_of(_load_gradients(dataset, method, run.device)) if weigher_of else None
                rows, online = meta_train(run, trainer, data, trainer.iteration + settings.iterations, label,
                                          extra, weigh), {}
            _finish(run, label, trainer, spec, data, rows)
            metrics = score(run, trainer.forward, data, trainer.meta_params(), f"feedback {dataset}/{label}")
            write_json(metrics_path(dataset, label), {**metrics, **online})


def _weigher_of(settings: FeedbackParams) -> Callable[[dict[str, torch.Tensor]], FeedbackWeigher]:
    """Stored support gradients -> the weigher of the feedback run, as `feedback` configures it."""
    return lambda reference: FeedbackWeigher(reference, settings.similarity, settings.compare,
                                             settings.temperature)
