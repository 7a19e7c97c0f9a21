"""The `summary@<dataset>` stage: every method of a dataset in one small metrics file and one
learning-curve table, for DVC's own views.

The per-method metrics files hold 35 numbers each; declared as metrics they made `dvc exp show`
hundreds of columns wide. DVC reads only `metrics/<dataset>.json` as metrics: per method, the
test score after adaptation with its 95% half-width and the memorisation index, so `dvc metrics
diff` and `dvc exp show` stay readable. The numbers sit under the dataset's name
(`omniglot.maml.test`): column names are unique across datasets, and DVC need not prefix them
with the file path. `plots/<dataset>.csv` is every method's learning curve in one long table
(a `method` column; the feedback runs shifted to follow the run they resume), which dvc.yaml's
top-level plots draw with every method on one chart (template `.dvc/plots/methods.json`: a
colour per method, a dash pattern per revision in `dvc plots diff`).
"""

from __future__ import annotations

from pathlib import Path

from noisymaml.core.files import write_curve, write_json
from noisymaml.datasets.base import Measure
from noisymaml.errors import DataError
from noisymaml.pipeline.paths import METRICS, PLOTS
from noisymaml.reporting.report import align_curves, load_curves, load_metrics, measure_of, reported_methods

SUMMARY_KEYS = ("test", "test_ci95", "memorisation")


def summary_path(dataset: str) -> Path:
    return METRICS / f"{dataset}.json"


def curves_path(dataset: str) -> Path:
    return PLOTS / f"{dataset}.csv"


def summarise_methods(metrics: dict[str, dict], measure: Measure) -> dict[str, dict[str, float]]:
    """Per method: test score after adaptation, its 95% half-width, and the memorisation index
    (the pre-adaptation score on the fixed training tasks)."""
    post, pre = measure.column("post"), measure.column("pre")
    return {method: dict(zip(SUMMARY_KEYS, (data["test"][post], data["test"][f"{post}_ci95"],
                                            data["train_tasks"][pre])))
            for method, data in metrics.items()}


def curve_columns(measure: Measure) -> tuple[str, str]:
    """The two curves compared across methods: validation after adaptation, and the training
    meta-batches before adaptation (memorisation as training goes on)."""
    return f"val_{measure.column('post')}", f"train_{measure.column('pre')}"


def long_rows(curves: dict[str, dict[str, list[float]]], measure: Measure) -> list[dict]:
    """One row per (method, logged iteration), methods in the order given."""
    columns = curve_columns(measure)
    return [{"iteration": int(iteration), "method": method,
             **{column: curve[column][i] for column in columns}}
            for method, curve in curves.items() for i, iteration in enumerate(curve["iteration"])]


def write_summary(dataset: str, params: dict) -> tuple[Path, Path]:
    """metrics/<dataset>.json and plots/<dataset>.csv from the methods params.yaml names."""
    methods, resumed = reported_methods(params)
    measure = measure_of(dataset)
    metrics, curves = load_metrics(dataset, methods), load_curves(dataset, methods)
    if not metrics or not curves:
        raise DataError(f"no results of {', '.join(methods)} in {METRICS / dataset}/ and "
                        f"{PLOTS / dataset}/: run their stages first (dvc repro)")
    write_json(summary_path(dataset), {dataset: summarise_methods(metrics, measure)})
    write_curve(curves_path(dataset), long_rows(align_curves(curves, resumed), measure))
    return summary_path(dataset), curves_path(dataset)
