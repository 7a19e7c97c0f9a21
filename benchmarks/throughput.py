"""Meta-training throughput: the project's step against a plain per-task loop (a script, not a test).

For each configuration it times, in one process on one device:
  (a) a per-task loop the way learn2learn's `MAML.clone()` / `adapt()` computes it: for every
      task, inner steps with `torch.autograd.grad(..., create_graph=True)` on a copy of the
      parameters, then the query loss backpropagated into the meta-parameters;
  (b) the project's `MetaTrainer.step` (noise off), with tasks looped (on a CPU shared among
      torch's threads, a task per thread, as `train.batched_tasks: auto` does there) and with
      tasks batched by `torch.func.vmap`,
and prints meta-iterations per second (median of rounds in which the variants take turns),
peak memory (per variant on CUDA; on the CPU the process's peak so far, so the largest of the
variants run), the ratios b/a and the projected wall time of a 60,000-iteration run. Tasks are
random tensors of the right shapes: throughput does not depend on the pixels.

    python benchmarks/throughput.py                      # both configurations, device auto
    python benchmarks/throughput.py --config omniglot-20w1s --rounds 7 --device cpu
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import click
import torch
from torch.func import functional_call

from noisymaml.core.devices import resolve_device
from noisymaml.core.maml import CLASSIFICATION, InnerLoop, task_threads
from noisymaml.core.models import Conv4, build_model, init_params
from noisymaml.core.tasks import TaskBatch
from noisymaml.core.training import MetaTrainer, TrainerConfig
from noisymaml.methods.maml import MAML

PAPER_ITERATIONS = 60_000


@dataclass(frozen=True)
class Config:
    ways: int
    shots: int
    query_shots: int
    filters: int
    meta_batch: int
    inner: InnerLoop
    channels: int = 1
    image_size: int = 28
    downsample: str = "stride"

    def model(self) -> Conv4:
        return build_model(self.spec())

    def spec(self) -> dict:
        """The Conv-4's spec (a method may wrap it, e.g. MR-MAML(W)'s encoder: `model_spec`)."""
        return {"kind": "conv4", "in_channels": self.channels, "image_size": self.image_size,
                "n_classes": self.ways, "filters": self.filters, "downsample": self.downsample}

    def describe(self) -> str:
        return (f"{self.ways}-way {self.shots}-shot, {self.inner.steps} inner steps "
                f"({'first' if self.inner.first_order else 'second'} order), meta-batch {self.meta_batch}, "
                f"Conv-4 {self.filters} filters on {self.channels}x{self.image_size}x{self.image_size}")


CONFIGS = {  # params.yaml's settings of each dataset
    "omniglot-20w1s": Config(20, 1, 1, 64, 16, InnerLoop(0.1, 5)),
    "omniglot-5w1s": Config(5, 1, 1, 32, 16, InnerLoop(0.4, 1)),
    "miniimagenet-5w1s": Config(5, 1, 15, 32, 4, InnerLoop(0.01, 5), channels=3, image_size=84,
                                downsample="maxpool"),
}


class RandomTasks:
    """Random N-way K-shot tasks of the configuration's image shape, generated on `device` (no
    data loading in the loop)."""

    def __init__(self, config: Config, device: torch.device):
        self.config, self.device = config, device

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        c = self.config

        def part(shots: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.rand(n_tasks, c.ways * shots, c.channels, c.image_size, c.image_size,
                           generator=generator, device=self.device)
            y = torch.arange(c.ways, device=self.device).repeat_interleave(shots).expand(n_tasks, -1)
            return x, y.contiguous()

        return TaskBatch(*part(c.shots), *part(c.query_shots))


def loop_step(model: torch.nn.Module, params: dict, optimizer: torch.optim.Optimizer,
              tasks: TaskBatch, inner: InnerLoop) -> None:
    """One meta-iteration, task by task, as learn2learn's clone()/adapt() computes it."""
    optimizer.zero_grad()
    for i in range(len(tasks)):
        fast = dict(params)
        for _ in range(inner.steps):
            loss = CLASSIFICATION.loss(functional_call(model, fast, tasks.support_x[i]), tasks.support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not inner.first_order)
            fast = {k: w - inner.lr * g for (k, w), g in zip(fast.items(), grads)}
        query_loss = CLASSIFICATION.loss(functional_call(model, fast, tasks.query_x[i]), tasks.query_y[i])
        (query_loss / len(tasks)).backward()
    optimizer.step()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide, never resets


def timed(steps: dict[str, Callable[[], None]], iterations: int, warmup: int, rounds: int,
          device: torch.device) -> dict[str, tuple[float, float]]:
    """{label: (meta-iterations per second, peak memory in MiB)}: the median over `rounds`.

    The variants take turns, `iterations` steps each per round, so that a slow spell of a
    shared machine falls on all of them rather than on whichever ran then.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {label: [] for label in steps}
    peaks = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for label, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronise(device)
            start = time.perf_counter()
            for _ in range(iterations):
                step()
            synchronise(device)
            rates[label].append(iterations / (time.perf_counter() - start))
            peaks[label] = max(peaks[label], peak_memory_mib(device))
    return {label: (statistics.median(rates[label]), peaks[label]) for label in steps}


def benchmark(name: str, config: Config, device: torch.device, iterations: int, warmup: int,
              rounds: int) -> None:
    model = config.model().to(device)
    initial = init_params(model, 0)
    tasks = RandomTasks(config, device)
    generator = torch.Generator(device).manual_seed(0)

    params = {k: v.detach().clone().to(device).requires_grad_() for k, v in initial.items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    loop_label = "(a) per-task loop, learn2learn style"
    steps = {loop_label: lambda: loop_step(model, params, optimizer,
                                           tasks.sample(config.meta_batch, generator), config.inner)}
    threads = task_threads(device)
    looped = "looped" + (f", {threads} threads" if threads > 1 else "")
    # bf16 autocast (`train.precision`) is a GPU option: on CPUs without bf16 units it only slows.
    precisions = (None, torch.bfloat16) if device.type == "cuda" else (None,)
    for autocast in precisions:
        for batched in (False, True):
            trainer = MetaTrainer(model, initial, TrainerConfig(
                CLASSIFICATION, config.inner, MAML(), 1e-3, config.meta_batch, 0, device,
                batched=batched, autocast=autocast))
            label = f"(b) noisymaml step, tasks {'batched (vmap)' if batched else looped}"
            steps[label + (", bf16" if autocast else "")] = partial(trainer.step, tasks)
    results = timed(steps, iterations, warmup, rounds, device)
    loop = results[loop_label]

    print(f"\n{name}: {config.describe()}, device {describe(device)}")
    for label, (rate, memory) in results.items():
        projected = PAPER_ITERATIONS / rate / 3600
        print(f"  {label:<44} {rate:8.3f} it/s  {1 / rate:7.3f} s/it  peak {memory:8.0f} MiB  "
              f"ratio b/a {rate / loop[0]:5.2f}  60k iterations: {projected:6.1f} h")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@click.command()
@click.option("--config", "names", multiple=True, type=click.Choice(sorted(CONFIGS)),
              help="Configuration(s) to time; all when not given.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--iterations", default=3, show_default=True, type=click.IntRange(min=1),
              help="Meta-iterations per variant per round.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1),
              help="Rounds in which the variants take turns; the median round is reported.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0))
def main(names: tuple[str, ...], device: str, iterations: int, rounds: int, warmup: int) -> None:
    resolved = resolve_device(device)
    for name in names or tuple(CONFIGS):
        benchmark(name, CONFIGS[name], resolved, iterations, warmup, rounds)


if __name__ == "__main__":
    main()
