"""What each DVC stage does, one function per stage; stages/*.py parse their arguments and
call one of these. The same functions serve `dvc repro`, tests and notebooks."""

from __future__ import annotations

import json

from noisymaml.core.feedback import task_weights
from noisymaml.core.files import load_file, write_curve, write_json
from noisymaml.core.models import build_model, load_model, save_model
from noisymaml.core.training import MetaTrainer
from noisymaml.datasets import DATASETS
from noisymaml.datasets.base import FetchSettings
from noisymaml.pipeline.params import (
    FeedbackParams,
    parse_dataset,
    parse_dataset_name,
    parse_section,
    parse_seed,
    read_params,
)
from noisymaml.pipeline.paths import (
    curve_path,
    downloads_dir,
    episodes_dir,
    gradients_path,
    metrics_path,
    model_path,
)
from noisymaml.pipeline.run import FEEDBACK_STREAM, Run, meta_train, save_gradients, score

FEEDBACK_VARIANTS = ("feedback", "continued")  # re-meta-training with and without the weighting


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
    out.mkdir(parents=True, exist_ok=True)
    summary = DATASETS[dataset].build_episodes(config, parse_seed(data), downloads_dir(dataset),
                                               parse_section(data, "fetch", FetchSettings), out)
    return f"[episodes {dataset}] {json.dumps(summary)}"


def _finish(run: Run, label: str, trainer: MetaTrainer, spec: dict, rows: list[dict]) -> None:
    """Save a trained model and its learning curve under `label`."""
    save_model(model_path(run.dataset, label), spec, trainer.meta_params(),
               {"dataset": run.dataset, "method": label, "iterations": trainer.iteration})
    if rows:
        write_curve(curve_path(run.dataset, label), rows)


def train(dataset: str, method: str) -> None:
    """Stage `train@<dataset>-<method>`: meta-train one method; model file and learning curve."""
    run = Run.from_params(dataset, method)
    data = run.task_data()
    model = build_model(data.model_spec)
    trainer = MetaTrainer(model, run.initial_params(model), run.trainer_config(data, run.seed))
    rows = meta_train(run, trainer, data, run.config.train.iterations, method, {})
    _finish(run, method, trainer, data.model_spec, rows)


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


def feedback(dataset: str) -> None:
    """Stage `feedback@<dataset>`: re-meta-train `feedback.method`'s model weighted by similarity
    to the stored test gradients, and the same iterations without weighting ("continued")."""
    method = parse_section(read_params(), "feedback", FeedbackParams).method
    run = Run.from_params(dataset, method)
    data = run.task_data()
    stored = load_file(gradients_path(dataset, method))["gradients"]
    reference = {k: v.to(run.device) for k, v in stored.items()}
    weighing = {"feedback": lambda g: task_weights(g, reference, run.feedback.similarity),
                "continued": None}
    for variant in FEEDBACK_VARIANTS:
        label = f"{method}_{variant}"
        model, params, spec = load_model(model_path(dataset, method), run.device)
        trainer = MetaTrainer(model, params, run.trainer_config(data, run.seed + FEEDBACK_STREAM))
        rows = meta_train(run, trainer, data, run.feedback.iterations, label,
                          {"feedback": run.feedback.model_dump(), "variant": variant}, weighing[variant])
        _finish(run, label, trainer, spec, rows)
        write_json(metrics_path(dataset, label), score(run, trainer.forward, data, trainer.meta_params(),
                                                       f"feedback {dataset}/{label}"))
