"""Summaries over fixed evaluation episodes: mean and 95% confidence half-width."""

from __future__ import annotations

import math

import torch

MEMORISATION_TASKS = 100  # fixed training tasks scored before/after adaptation at evaluation


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (sample std; zero for a single value)."""
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no values to summarise")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def summarise(per_task: dict[str, torch.Tensor]) -> dict[str, float]:
    """{metric: [tasks]} -> {metric: mean, metric_ci95: half-width, ..., tasks: n}."""
    summary: dict[str, float] = {}
    for key in sorted(per_task):
        mean, ci = mean_ci95(per_task[key])
        summary[key] = round(mean, 6)
        summary[f"{key}_ci95"] = round(ci, 6)
    summary["tasks"] = int(next(iter(per_task.values())).numel())
    return summary


def format_mean_ci(summary: dict[str, float], key: str, percent: bool = False) -> str:
    scale = 100.0 if percent else 1.0
    digits = 2 if percent else 4
    return f"{summary[key] * scale:.{digits}f} ± {summary[f'{key}_ci95'] * scale:.{digits}f}"
