"""Do CPU results depend on the machine? A script, not a test: compare its output across machines.

torch picks CPU kernels by the instruction set it finds (ATen's own kernels by
ATEN_CPU_CAPABILITY, convolutions through oneDNN up to ONEDNN_MAX_CPU_ISA, matrix products
through MKL, whose code path MKL_CBWR pins), and different kernels sum in different orders;
how many threads share a reduction can matter too. For each candidate setting this script
runs, in a fresh process with those environment variables (and optionally torch.set_num_threads,
standing in for a machine with that many cores), the pipeline's own stage functions on a short
but real configuration: Omniglot 20-way 1-shot from the archives in data/downloads/omniglot/
with the default Conv-4 and meta-batch, second-order MAML on the looped CPU path (tasks shared
among threads), and the sinusoid MLP batched with vmap; episodes, training, evaluation. It
prints a hash of the trained parameters and the metrics file, and the training + evaluation
time (wall and CPU seconds). Equal hashes on two machines under one setting mean that setting
gives those machines identical results.

    PYTHONPATH=src python benchmarks/determinism.py                          # every setting
    PYTHONPATH=src python benchmarks/determinism.py --setting default --setting pinned --repeat 3
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


@dataclass(frozen=True)
class Setting:
    env: dict[str, str]  # environment variables of the process
    threads: int | None = None  # torch.set_num_threads before the stages: a machine with that many cores


SETTINGS = {
    "default": Setting({}),
    "default, 1 thread": Setting({}, 1),
    "default, 4 threads": Setting({}, 4),
    "aten-avx2": Setting({"ATEN_CPU_CAPABILITY": "avx2"}),
    "aten-default": Setting({"ATEN_CPU_CAPABILITY": "default"}),
    "onednn-avx2": Setting({"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "aten+onednn-avx2": Setting({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "mkl-avx2": Setting({"MKL_CBWR": "AVX2"}),
    "mkl-compatible": Setting({"MKL_CBWR": "COMPATIBLE"}),
    "pinned": Setting(PINNED),
    "pinned, 1 thread": Setting(PINNED, 1),
    "pinned, 4 threads": Setting(PINNED, 4),
}
# The small configuration: params.yaml with these keys replaced (dotted key -> value). Omniglot
# keeps the default model and meta-batch (Conv-4 with 64 filters, 16 tasks of 20-way 1-shot).
SMALL = {
    "device": "cpu",
    "omniglot.tasks.test_episodes": 40, "omniglot.tasks.val_episodes": 10,
    "omniglot.train.iterations": 10, "omniglot.train.log_every": 5,
    "omniglot.train.val_tasks": 5, "omniglot.train.checkpoint_every": 10,
    "sinusoid.tasks.test_episodes": 50, "sinusoid.tasks.val_episodes": 20,
    "sinusoid.train.iterations": 100, "sinusoid.train.log_every": 50,
    "sinusoid.train.checkpoint_every": 100,
}
METHOD = "maml"


def small_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in SMALL.items():
        *parents, last = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    return params


def run_child(name: str, setting: Setting, datasets: tuple[str, ...]) -> dict:
    """One setting in a fresh process (the variables act when torch loads) in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="determinism-") as work:
        work = Path(work)
        (work / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
        (work / "data" / "downloads").mkdir(parents=True)
        (work / "data" / "downloads" / "omniglot").symlink_to(ROOT / "data" / "downloads" / "omniglot")
        result = work / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(result),
                   *(f"--dataset={d}" for d in datasets)]
        if setting.threads:
            command += ["--threads", str(setting.threads)]
        environment = {**os.environ, **setting.env, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True)
        if done.returncode != 0:
            raise click.ClickException(f"setting {name} failed:\n{done.stderr[-2000:]}")
        return json.loads(result.read_text())


def digest(params: dict, metrics: bytes) -> str:
    """A hash of the trained parameters' bits and the metrics file."""
    h = hashlib.sha256(metrics)
    for key in sorted(params):
        h.update(key.encode())
        h.update(params[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def child(result: Path, datasets: tuple[str, ...], threads: int | None) -> None:
    """Run the stages in the current folder and write hashes and times to `result`."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from noisymaml.core.models import load_model
    from noisymaml.pipeline import steps
    from noisymaml.pipeline.paths import metrics_path, model_path

    out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    for dataset in datasets:
        steps.episodes(dataset)
        start, cpu = time.perf_counter(), time.process_time()
        steps.train(dataset, METHOD)
        steps.evaluate(dataset, METHOD)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        _, params, _ = load_model(model_path(dataset, METHOD))
        digested = digest(params, metrics_path(dataset, METHOD).read_bytes())
        out[dataset] = {"result": digested, "seconds": seconds, "cpu_seconds": cpu_seconds}
    result.write_text(json.dumps(out))


@click.command()
@click.option("--setting", "chosen", multiple=True, type=click.Choice(list(SETTINGS)),
              help="A candidate setting (repeatable; default: all).")
@click.option("--dataset", "datasets", multiple=True, type=click.Choice(["omniglot", "sinusoid"]),
              default=("omniglot", "sinusoid"), show_default=True, help="Datasets to run (repeatable).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(min=1),
              help="Rounds in which the settings take turns; times are the medians.")
@click.option("--child", "child_result", type=click.Path(path_type=Path), hidden=True,
              help="Internal: run one setting here and write its result to this file.")
@click.option("--threads", type=int, hidden=True, help="Internal: torch threads of the child.")
def main(chosen: tuple[str, ...], datasets: tuple[str, ...], repeat: int, child_result: Path | None,
         threads: int | None) -> None:
    """Print, per candidate setting, hashes of the trained parameters and the training and
    evaluation time (wall and CPU seconds, median over rounds)."""
    if child_result:
        child(child_result, datasets, threads)
        return
    names = chosen or tuple(SETTINGS)
    runs = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            runs[name].append(run_child(name, SETTINGS[name], datasets))
    click.echo(f"params.yaml with {SMALL}; method {METHOD}; {repeat} round(s)\n")
    click.echo("| setting | variables | capability, threads | "
               + " | ".join(f"{d} result | {d} s (CPU s)" for d in datasets) + " |")
    click.echo("| :-- " * 3 + "| :-- | --: " * len(datasets) + "|")
    for name in names:
        click.echo(row(name, runs[name], datasets))


def row(name: str, results: list[dict], datasets: tuple[str, ...]) -> str:
    """One table row; a hash that changed between rounds is shown as `varies`."""
    setting, first = SETTINGS[name], results[0]
    variables = " ".join(f"{k}={v}" for k, v in setting.env.items()) or "none"
    cells = [name, variables, f"{first['capability']}, {first['threads']}"]
    for dataset in datasets:
        hashes = {r[dataset]["result"] for r in results}
        wall = statistics.median(r[dataset]["seconds"] for r in results)
        cpu = statistics.median(r[dataset]["cpu_seconds"] for r in results)
        cells += [hashes.pop() if len(hashes) == 1 else "varies", f"{wall:.1f} ({cpu:.1f})"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
