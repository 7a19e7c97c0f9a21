"""Gradient noise: off means nothing drawn, right statistics, fresh draws, placement, schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from noisymaml.core.noise import GradientNoise, describe
from noisymaml.pipeline.params import NoiseParams
from noisymaml.pipeline.run import gradient_noise


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_params() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(3, 4), "b": torch.zeros(5)}


def check_gaussian(sample: torch.Tensor, mean: float, std: float) -> None:
    """Sample mean and std within 6 standard errors of the targets (false alarm ~ 1e-9)."""
    n = sample.numel()
    sample = sample.double()
    assert abs(sample.mean().item() - mean) < 6 * std / math.sqrt(n)
    assert abs(sample.std().item() - std) < 6 * std / math.sqrt(2 * (n - 1))


# --- off ----------------------------------------------------------------------------------

@pytest.mark.parametrize("noise", [
    GradientNoise(),
    GradientNoise(sigma=0.0, mean=0.0, where="both"),
    GradientNoise(sigma=0.0, where="inner", schedule="anneal"),
    GradientNoise(sigma=0.0, where="outer", schedule="step", outer_scale=2.0),
])
def test_zero_sigma_and_mean_draw_nothing(noise):
    gen = generator()
    state = gen.get_state().clone()
    assert not noise.active
    assert noise.inner(small_params(), 3, 2, 0, gen) is None
    assert noise.outer(small_params(), 7, gen) is None
    assert torch.equal(gen.get_state(), state)
    assert describe(noise) == "noise off"


def test_zero_sigma_with_a_mean_is_a_constant_shift():
    noise = GradientNoise(sigma=0.0, mean=0.25, where="both", outer_scale=0.4)
    assert noise.active
    inner = noise.inner(small_params(), 2, 3, 0, generator())
    outer = noise.outer(small_params(), 0, generator())
    for values in (*inner.values(), *outer.values()):
        assert torch.all(values == 0.25)


# --- shapes and statistics ----------------------------------------------------------------

def test_inner_shapes_follow_tasks_steps_and_params():
    params = {"w": torch.zeros(3, 4, dtype=torch.float64), "b": torch.zeros(5)}
    inner = GradientNoise(sigma=1.0).inner(params, 6, 2, 0, generator())
    assert set(inner) == {"w", "b"}
    assert inner["w"].shape == (6, 2, 3, 4) and inner["w"].dtype == torch.float64
    assert inner["b"].shape == (6, 2, 5) and inner["b"].dtype == torch.float32
    outer = GradientNoise(sigma=1.0).outer(params, 0, generator())
    assert outer["w"].shape == (3, 4) and outer["b"].shape == (5,)


@pytest.mark.parametrize("sigma, mean, outer_scale", [(0.5, 0.0, 0.4), (2.0, -0.3, 1.5)])
def test_noise_has_the_configured_mean_and_std(sigma, mean, outer_scale):
    noise = GradientNoise(sigma=sigma, mean=mean, where="both", outer_scale=outer_scale)
    params = {"w": torch.zeros(40, 50), "b": torch.zeros(100)}
    gen = generator(1)
    inner = noise.inner(params, 4, 5, 0, gen)
    check_gaussian(torch.cat([v.flatten() for v in inner.values()]), mean, sigma)
    outer = noise.outer(params, 0, gen)
    check_gaussian(torch.cat([v.flatten() for v in outer.values()]), mean, outer_scale * sigma)


@pytest.mark.parametrize("schedule, iteration", [("anneal", 30), ("step", 2500)])
def test_inner_and_outer_draws_follow_the_schedule(schedule, iteration):
    noise = GradientNoise(sigma=2.0, where="both", outer_scale=0.5, schedule=schedule,
                          gamma=0.55, decay=1.5, decay_every=1000)
    expected = noise.sigma_at(iteration)
    assert expected < 1.0  # really scheduled down from sigma=2
    params = {"w": torch.zeros(100, 100)}
    gen = generator(2)
    check_gaussian(noise.inner(params, 2, 1, iteration, gen)["w"], 0.0, expected)
    check_gaussian(noise.outer(params, iteration, gen)["w"], 0.0, 0.5 * expected)


# --- freshness ----------------------------------------------------------------------------

def test_inner_noise_differs_across_tasks_steps_and_calls():
    noise = GradientNoise(sigma=1.0, where="inner")
    gen = generator(3)
    first = noise.inner(small_params(), 3, 4, 0, gen)["w"]
    second = noise.inner(small_params(), 3, 4, 1, gen)["w"]
    slices = [first[i, t] for i in range(3) for t in range(4)]
    slices += [second[i, t] for i in range(3) for t in range(4)]
    for a, b in itertools.combinations(slices, 2):
        assert not torch.allclose(a, b)


def test_outer_noise_is_fresh_every_iteration_and_independent_of_inner():
    noise = GradientNoise(sigma=1.0, where="both")
    gen = generator(4)
    inner = noise.inner(small_params(), 2, 2, 0, gen)
    draws = [noise.outer(small_params(), it, gen)["w"] for it in range(3)]
    for a, b in itertools.combinations(draws, 2):
        assert not torch.allclose(a, b)
    for d in draws:
        assert all(not torch.allclose(d, inner["w"][i, t]) for i in range(2) for t in range(2))


def test_same_generator_state_gives_the_same_noise():
    noise = GradientNoise(sigma=0.3, where="both")
    a = noise.inner(small_params(), 2, 3, 0, generator(5))
    b = noise.inner(small_params(), 2, 3, 0, generator(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- where ----------------------------------------------------------------------------------

@pytest.mark.parametrize("where, has_inner, has_outer", [
    ("inner", True, False), ("outer", False, True), ("both", True, True)])
def test_where_switches_the_right_parts(where, has_inner, has_outer):
    noise = GradientNoise(sigma=0.1, where=where)
    gen = generator()
    inner = noise.inner(small_params(), 2, 2, 0, gen)
    assert (inner is not None) == has_inner
    state = gen.get_state().clone()
    outer = noise.outer(small_params(), 0, gen)
    assert (outer is not None) == has_outer
    if not has_outer:  # a switched-off part draws nothing either
        assert torch.equal(gen.get_state(), state)
    for part in (inner, outer):
        if part is not None:
            assert all(v.abs().sum() > 0 for v in part.values())


def test_inner_off_draws_nothing():
    gen = generator()
    state = gen.get_state().clone()
    assert GradientNoise(sigma=0.1, where="outer").inner(small_params(), 2, 2, 0, gen) is None
    assert torch.equal(gen.get_state(), state)


# --- schedules ----------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 1, 17, 999, 10_000])
def test_constant_schedule(t):
    assert GradientNoise(sigma=0.7, schedule="constant").sigma_at(t) == 0.7


@pytest.mark.parametrize("t", [0, 1, 9, 99, 12345])
@pytest.mark.parametrize("gamma", [0.55, 1.0])
def test_anneal_schedule_decays_the_variance(t, gamma):
    """Neelakantan et al. 2015: sigma_t^2 = sigma^2 / (1 + t)^gamma (the variance, not the std)."""
    noise = GradientNoise(sigma=0.8, schedule="anneal", gamma=gamma)
    assert noise.sigma_at(t) ** 2 == pytest.approx(0.8 ** 2 / (1 + t) ** gamma, rel=1e-12)


def test_anneal_starts_at_sigma_and_decreases():
    noise = GradientNoise(sigma=0.8, schedule="anneal", gamma=0.55)
    values = [noise.sigma_at(t) for t in range(50)]
    assert values[0] == pytest.approx(0.8)
    assert all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("t, expected", [
    (0, 1.0), (999, 1.0), (1000, 1 / 1.5), (1999, 1 / 1.5), (2000, 1 / 1.5 ** 2),
    (2500, 1 / 1.5 ** 2), (3000, 1 / 1.5 ** 3)])
def test_step_schedule(t, expected):
    noise = GradientNoise(sigma=1.0, schedule="step", decay=1.5, decay_every=1000)
    assert noise.sigma_at(t) == pytest.approx(expected, rel=1e-12)


# --- construction and description ---------------------------------------------------------

def test_from_params_copies_every_field():
    params = NoiseParams(sigma=0.2, mean=0.1, where="inner", outer_scale=0.5, schedule="step",
                         gamma=0.3, decay=2.0, decay_every=10)
    noise = gradient_noise(params)
    assert noise == GradientNoise(0.2, 0.1, "inner", 0.5, "step", 0.3, 2.0, 10)


def test_describe_names_the_settings():
    text = describe(GradientNoise(sigma=0.1, where="inner", outer_scale=0.4, schedule="step",
                                  decay=1.5, decay_every=1000))
    for part in ("sigma=0.1", "where=inner", "outer_scale=0.4", "step", "1.5", "1000"):
        assert part in text
    assert "gamma=0.55" in describe(GradientNoise(sigma=0.1, schedule="anneal"))
