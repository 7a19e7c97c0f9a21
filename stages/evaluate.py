"""Stage `evaluate`: meta-test on the fixed episodes and capture test-task support gradients."""

import click

from noisymaml.errors import stage
from noisymaml.paths import gradients_path, metrics_path, model_path
from noisymaml.pipeline import Run, load_model, save_gradients, write_json


@click.command()
@click.argument("dataset")
@click.argument("method")
@stage
def main(dataset: str, method: str) -> None:
    run = Run.from_params(dataset, method)
    data = run.task_data()
    model, params, _ = load_model(model_path(dataset, method), run.device)
    forward = run.forward(model)
    metrics = run.score(forward, data, params)
    write_json(metrics_path(dataset, method), metrics)
    save_gradients(gradients_path(dataset, method), run, data, forward, params)
    click.echo(f"[evaluate {dataset}/{method}] test {metrics['test']}")


if __name__ == "__main__":
    main()
