"""Stage `train`: meta-train one method on one dataset; saves meta-parameters and learning curve."""

import click

from noisymaml.errors import stage
from noisymaml.models import build_model
from noisymaml.paths import curve_path, model_path
from noisymaml.pipeline import Run, save_model, write_curve


@click.command()
@click.argument("dataset")
@click.argument("method")
@stage
def main(dataset: str, method: str) -> None:
    run = Run.from_params(dataset, method)
    data = run.task_data()
    model = build_model(data.model_spec)
    trainer = run.trainer(data, model, run.method.initial_params(model, run.seed), run.seed)
    rows = run.meta_train(trainer, data, run.config.train.iterations, method, {})
    save_model(model_path(dataset, method), data.model_spec, trainer.meta_params(),
               {"dataset": dataset, "method": method, "iterations": trainer.iteration})
    write_curve(curve_path(dataset, method), rows)


if __name__ == "__main__":
    main()
