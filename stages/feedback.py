"""Stage `feedback`: re-meta-train weighted by similarity to stored test gradients, then re-evaluate.

Runs on the model of `feedback.method` (noisy_maml by default, any trained method works) and
also trains the same number of extra iterations without weighting ("continued"), so the
report can tell the effect of feedback from the effect of simply training longer.
"""

import click

from noisymaml.datasets import load_file
from noisymaml.errors import stage
from noisymaml.feedback import task_weights
from noisymaml.params import FeedbackParams, parse_section, read_params
from noisymaml.paths import curve_path, gradients_path, metrics_path, model_path
from noisymaml.pipeline import (FEEDBACK_STREAM, Run, load_model, save_model, write_curve,
                                write_json)


@click.command()
@click.argument("dataset")
@stage
def main(dataset: str) -> None:
    method = parse_section(read_params(), "feedback", FeedbackParams).method
    run = Run.from_params(dataset, method)
    data = run.task_data()
    stored = load_file(gradients_path(dataset, method))["gradients"]
    reference = {k: v.to(run.device) for k, v in stored.items()}
    for variant, weigh in (("feedback", lambda g: task_weights(g, reference, run.feedback.similarity)),
                           ("continued", None)):
        label = f"{method}_{variant}"
        model, params, spec = load_model(model_path(dataset, method), run.device)
        trainer = run.trainer(data, model, params, run.seed + FEEDBACK_STREAM)
        rows = run.meta_train(trainer, data, run.feedback.iterations, label,
                              {"feedback": run.feedback.model_dump(), "variant": variant}, weigh)
        save_model(model_path(dataset, label), spec, trainer.meta_params(),
                   {"dataset": dataset, "method": label, "iterations": trainer.iteration})
        write_json(metrics_path(dataset, label), run.score(trainer.forward, data, trainer.meta_params()))
        if rows:
            write_curve(curve_path(dataset, label), rows)


if __name__ == "__main__":
    main()
