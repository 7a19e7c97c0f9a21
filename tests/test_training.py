"""Meta-training: sigma = 0 is plain MAML, determinism, task stream vs noise, resume, divergence."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch.func import grad

from noisymaml.core.devices import resolve_device
from noisymaml.core.files import save_atomic
from noisymaml.core.maml import REGRESSION, InnerLoop, evaluate_tasks, make_forward, per_task_meta_gradients
from noisymaml.core.models import MLP
from noisymaml.core.noise import GradientNoise
from noisymaml.core.training import (
    NOISE_STREAM,
    Checkpoint,
    TrainingDiverged,
    clock,
    fingerprint,
    train,
)
from noisymaml.errors import NoisyMamlError

NOISE = GradientNoise(sigma=0.1, where="both", outer_scale=0.4, schedule="anneal", gamma=0.55)
ITERATIONS, EVERY, LOG_EVERY = 10, 2, 3


def assert_same_params(a, b) -> None:
    assert set(a.params) == set(b.params)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def params_equal(a, b) -> bool:
    return all(torch.equal(a.params[k], b.params[k]) for k in a.params)


class Recording:
    """A task source that remembers what it handed out."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def sample(self, n_tasks, generator):
        tasks = self.inner.sample(n_tasks, generator)
        self.batches.append(tasks)
        return tasks


class Failing:
    """A task source that, on its call number `at` (0-based), raises or returns NaN inputs."""

    def __init__(self, inner, at: int, how: str):
        self.inner, self.at, self.how, self.calls = inner, at, how, 0

    def sample(self, n_tasks, generator):
        tasks = self.inner.sample(n_tasks, generator)
        call, self.calls = self.calls, self.calls + 1
        if call == self.at:
            if self.how == "raise":
                raise KeyboardInterrupt("killed")
            return type(tasks)(torch.full_like(tasks.support_x, float("nan")), tasks.support_y,
                               tasks.query_x, tasks.query_y)
        return tasks


@pytest.fixture
def validate(sinusoid):
    """Deterministic validation on fixed tasks (consumes none of the trainer's random streams)."""
    forward = make_forward(MLP(sinusoid.input_size, [8], 1))
    tasks = sinusoid.test_tasks(6, torch.Generator().manual_seed(99))

    def run(params):
        metrics = evaluate_tasks(forward, REGRESSION, params, tasks, InnerLoop(0.05, 2, True),
                                 batched=False)
        return {k: v.mean().item() for k, v in metrics.items() if k.endswith("_post")}
    return run


# --- sigma = 0 is MAML; determinism; task stream ------------------------------------------

@pytest.mark.parametrize("batched", [False, True])
def test_zero_sigma_is_plain_maml_bit_for_bit(make_trainer, sinusoid, batched):
    plain = make_trainer(GradientNoise(), batched=batched)
    zero = make_trainer(GradientNoise(sigma=0.0, where="both", outer_scale=0.4, schedule="anneal"),
                        batched=batched)
    noise_state = zero.noise_generator.get_state().clone()
    for _ in range(4):
        assert plain.step(sinusoid) == zero.step(sinusoid)
    assert_same_params(plain, zero)
    assert torch.equal(zero.noise_generator.get_state(), noise_state)  # nothing drawn
    assert not params_equal(plain, make_trainer(batched=batched))  # training did move the params


@pytest.mark.parametrize("where", ["inner", "outer", "both"])
def test_positive_sigma_changes_the_run(make_trainer, sinusoid, where):
    plain = make_trainer(GradientNoise())
    noisy = make_trainer(GradientNoise(sigma=0.1, where=where))
    for _ in range(3):
        plain.step(sinusoid)
        noisy.step(sinusoid)
    assert not params_equal(plain, noisy)


def test_same_seed_same_run_and_other_seed_other_run(make_trainer, sinusoid):
    runs = [make_trainer(NOISE, seed=s) for s in (0, 0, 1)]
    for trainer in runs:
        for _ in range(4):
            trainer.step(sinusoid)
    assert_same_params(runs[0], runs[1])
    assert not params_equal(runs[0], runs[2])


def test_batched_and_looped_training_agree(make_trainer, sinusoid):
    looped, batched = make_trainer(NOISE, batched=False), make_trainer(NOISE, batched=True)
    for _ in range(3):
        a, b = looped.step(sinusoid), batched.step(sinusoid)
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    for k in looped.params:
        torch.testing.assert_close(looped.params[k], batched.params[k], atol=1e-5, rtol=1e-5)


def test_task_stream_does_not_depend_on_noise(make_trainer, sinusoid):
    plain_source, noisy_source = Recording(sinusoid), Recording(sinusoid)
    plain, noisy = make_trainer(GradientNoise()), make_trainer(GradientNoise(sigma=0.5, where="both"))
    for _ in range(4):
        plain.step(plain_source)
        noisy.step(noisy_source)
    assert torch.equal(plain.task_generator.get_state(), noisy.task_generator.get_state())
    for a, b in zip(plain_source.batches, noisy_source.batches, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))
    assert not torch.equal(plain_source.batches[0].support_x, plain_source.batches[1].support_x)
    assert not params_equal(plain, noisy)


# --- one step against a reference -----------------------------------------------------------

@pytest.mark.parametrize("noise", [GradientNoise(), GradientNoise(sigma=0.3, where="inner"),
                                   GradientNoise(sigma=0.3, where="outer"),
                                   GradientNoise(sigma=0.3, where="both", schedule="anneal")])
def test_step_is_adam_on_the_weighted_noisy_meta_gradient(make_trainer, sinusoid, noise):
    trainer = make_trainer(noise, seed=3)
    for _ in range(2):  # the reference replays iteration 2, where the anneal schedule is active
        trainer.step(sinusoid)
    state = copy.deepcopy(trainer.state_dict())  # the live optimizer state is shared, not copied
    params = state["params"]
    task_gen = torch.Generator().set_state(state["task_generator"])
    noise_gen = torch.Generator().set_state(state["noise_generator"])
    tasks = sinusoid.sample(4, task_gen)
    inner_noise = noise.inner(params, 4, trainer.inner.steps, 2, noise_gen)
    grads, _ = per_task_meta_gradients(trainer.forward, REGRESSION, params, tasks, trainer.inner,
                                       inner_noise, batched=False)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    meta_grad = {k: (weights.view(-1, *[1] * (g.dim() - 1)) * g).sum(0) for k, g in grads.items()}
    outer_noise = noise.outer(params, 2, noise_gen)
    if outer_noise is not None:
        meta_grad = {k: g + outer_noise[k] for k, g in meta_grad.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    optimizer = torch.optim.Adam(leaves.values(), lr=0.01)
    optimizer.load_state_dict(state["optimizer"])
    for k, p in leaves.items():
        p.grad = meta_grad[k]
    optimizer.step()

    seen = []
    trainer.step(sinusoid, weigh=lambda g, support: seen.append(g) or weights)
    assert {k: v.shape for k, v in seen[0].items()} == {k: (4, *p.shape) for k, p in params.items()}
    for k in params:
        torch.testing.assert_close(trainer.params[k].detach(), leaves[k].detach(), atol=1e-6, rtol=1e-5)
    assert torch.equal(trainer.task_generator.get_state(), task_gen.get_state())
    assert torch.equal(trainer.noise_generator.get_state(), noise_gen.get_state())


def test_uniform_weights_are_plain_maml(make_trainer, sinusoid):
    plain, weighed = make_trainer(NOISE), make_trainer(NOISE)
    for _ in range(3):
        plain.step(sinusoid)
        weighed.step(sinusoid, weigh=lambda g, support: torch.full((4,), 0.25))
    assert_same_params(plain, weighed)
    skewed = make_trainer(NOISE)
    for _ in range(3):
        skewed.step(sinusoid, weigh=lambda g, support: torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert not params_equal(plain, skewed)


# --- resume ---------------------------------------------------------------------------------

def full_run(make_trainer, sinusoid, validate, path: Path):
    trainer = make_trainer(NOISE)
    rows = train(trainer, sinusoid, ITERATIONS, LOG_EVERY, validate,
                 Checkpoint(path, EVERY, "run-a"), "full", log=lambda _: None)
    return trainer, rows


def test_curve_rows_are_window_means_of_the_steps(make_trainer, sinusoid, validate, tmp_path):
    trainer, rows = full_run(make_trainer, sinusoid, validate, tmp_path / "c.pt")
    assert [r["iteration"] for r in rows] == [3, 6, 9, 10]
    assert trainer.iteration == ITERATIONS
    manual = make_trainer(NOISE)
    steps = [manual.step(sinusoid) for _ in range(ITERATIONS)]
    assert_same_params(trainer, manual)
    for row, (lo, hi) in zip(rows, [(0, 3), (3, 6), (6, 9), (9, 10)]):
        window = steps[lo:hi]
        for key in ("loss_pre", "loss_post"):
            assert row[f"train_{key}"] == pytest.approx(sum(s[key] for s in window) / len(window))
    assert rows[-1]["val_loss_post"] == pytest.approx(validate(trainer.meta_params())["loss_post"])


def test_progress_lines_show_the_eta_as_hours_minutes_seconds(make_trainer, sinusoid, validate, tmp_path):
    lines = []
    train(make_trainer(NOISE), sinusoid, ITERATIONS, LOG_EVERY, validate,
          Checkpoint(tmp_path / "c.pt", EVERY, "run-a"), "eta", log=lines.append)
    progress = [line for line in lines if " it " in line]
    assert len(progress) == 4
    assert all(re.search(r"  eta \d+:\d\d:\d\d$", line) for line in progress), progress
    assert progress[-1].endswith("eta 0:00:00")


@pytest.mark.parametrize("seconds, shown", [(0, "0:00:00"), (59.4, "0:00:59"), (61, "0:01:01"),
                                            (3725, "1:02:05"), (90061, "25:01:01"), (None, "-:--:--")])
def test_clock(seconds, shown):
    assert clock(seconds) == shown


@pytest.mark.parametrize("interrupt", ["validate", "source"])
def test_interrupted_run_resumes_to_the_same_result(make_trainer, sinusoid, validate, tmp_path,
                                                    interrupt):
    reference, reference_rows = full_run(make_trainer, sinusoid, validate, tmp_path / "full.pt")

    path = tmp_path / "interrupted.pt"
    checkpoint = Checkpoint(path, EVERY, "run-a")
    calls = []

    def flaky_validate(params):
        calls.append(1)
        if len(calls) == 3:  # the row of iteration 9; the last checkpoint is iteration 8
            raise KeyboardInterrupt("killed")
        return validate(params)

    first = make_trainer(NOISE)
    if interrupt == "validate":
        args = (sinusoid, flaky_validate)
        saved_at = 8
    else:
        args = (Failing(sinusoid, at=6, how="raise"), validate)  # dies in step 7: last save at 6
        saved_at = 6
    with pytest.raises(KeyboardInterrupt):
        train(first, args[0], ITERATIONS, LOG_EVERY, args[1], checkpoint, "run", log=lambda _: None)
    assert checkpoint.load()["trainer"]["iteration"] == saved_at

    resumed = make_trainer(NOISE, init_seed=7)  # other init: everything must come from the file
    logs = []
    rows = train(resumed, sinusoid, ITERATIONS, LOG_EVERY, validate, checkpoint, "run",
                 log=logs.append)
    assert any("resuming" in line and f"iteration {saved_at}" in line for line in logs)
    assert resumed.iteration == ITERATIONS
    assert_same_params(resumed, reference)
    assert rows == reference_rows
    assert torch.equal(resumed.task_generator.get_state(), reference.task_generator.get_state())
    assert torch.equal(resumed.noise_generator.get_state(), reference.noise_generator.get_state())


def test_checkpoint_of_another_run_is_ignored(make_trainer, sinusoid, validate, tmp_path):
    reference, reference_rows = full_run(make_trainer, sinusoid, validate, tmp_path / "full.pt")
    path = tmp_path / "shared.pt"
    other = make_trainer(GradientNoise(sigma=0.5, where="both"), seed=5, init_seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(other, Failing(sinusoid, at=5, how="raise"), ITERATIONS, LOG_EVERY, validate,
              Checkpoint(path, EVERY, "run-b"), "other", log=lambda _: None)
    assert path.exists()
    assert Checkpoint(path, EVERY, "run-a").load() is None

    fresh = make_trainer(NOISE)
    logs = []
    rows = train(fresh, sinusoid, ITERATIONS, LOG_EVERY, validate, Checkpoint(path, EVERY, "run-a"),
                 "run", log=logs.append)
    assert not any("resuming" in line for line in logs)
    assert_same_params(fresh, reference)
    assert rows == reference_rows


def test_checkpoint_helpers(tmp_path):
    path = tmp_path / "deep" / "ck.pt"
    checkpoint = Checkpoint(path, 5, fingerprint({"a": 1}))
    assert checkpoint.load() is None
    checkpoint.save({"x": torch.arange(3)})
    assert torch.equal(checkpoint.load()["x"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]  # no temporary left behind
    save_atomic({"y": 1}, path)
    assert torch.load(path, weights_only=True) == {"y": 1}


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint({"seed": 0, "noise": {"sigma": 0.1, "where": "both"}})
    assert a == fingerprint({"noise": {"where": "both", "sigma": 0.1}, "seed": 0})
    assert a != fingerprint({"seed": 0, "noise": {"sigma": 0.2, "where": "both"}})
    assert a != fingerprint({"seed": 1, "noise": {"sigma": 0.1, "where": "both"}})


# --- divergence -----------------------------------------------------------------------------

def test_nan_inputs_raise_training_diverged_and_keep_the_last_checkpoint(make_trainer, sinusoid,
                                                                          validate, tmp_path):
    noise = GradientNoise(sigma=0.1, where="both", outer_scale=0.4)
    trainer = make_trainer(noise)
    checkpoint = Checkpoint(tmp_path / "ck.pt", EVERY, "run-a")
    with pytest.raises(TrainingDiverged) as info:
        train(trainer, Failing(sinusoid, at=5, how="nan"), ITERATIONS, LOG_EVERY, validate,
              checkpoint, "run", log=lambda _: None)
    message = str(info.value)
    assert isinstance(info.value, NoisyMamlError)
    assert "iteration 5" in message
    assert "sigma=0.1" in message and "where=both" in message and "outer_scale=0.4" in message
    assert "loss nan" in message
    assert trainer.iteration == 5 and all(torch.isfinite(p).all() for p in trainer.params.values())

    assert checkpoint.path.exists()
    state = checkpoint.load()
    assert state is not None and state["trainer"]["iteration"] == 4
    clean = make_trainer(noise)
    for _ in range(4):
        clean.step(sinusoid)
    for k, v in state["trainer"]["params"].items():
        assert torch.equal(v, clean.params[k].detach())


def test_non_finite_meta_gradient_is_named(make_trainer, sinusoid):
    trainer = make_trainer(GradientNoise(sigma=0.0, mean=float("inf"), where="outer"))
    before = {k: v.clone() for k, v in trainer.meta_params().items()}
    with pytest.raises(TrainingDiverged) as info:
        trainer.step(sinusoid)
    message = str(info.value)
    assert "iteration 0" in message and "non-finite meta-gradient in" in message
    assert "net.0.weight" in message and "mean=inf" in message
    assert all(torch.equal(before[k], trainer.params[k]) for k in before)  # no step was taken


# --- devices --------------------------------------------------------------------------------

def test_resolve_device_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(NoisyMamlError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_noise_stream_is_separate_from_the_task_stream(make_trainer):
    trainer = make_trainer(seed=4)
    assert torch.equal(trainer.task_generator.get_state(),
                       torch.Generator().manual_seed(4).get_state())
    assert torch.equal(trainer.noise_generator.get_state(),
                       torch.Generator().manual_seed(4 + NOISE_STREAM).get_state())


def test_the_weigher_gets_each_tasks_support_gradient_at_the_meta_parameters(make_trainer, sinusoid):
    trainer, reference = make_trainer(), make_trainer()
    tasks = sinusoid.sample(4, torch.Generator().manual_seed(0))  # the trainer's first meta-batch
    seen = []
    trainer.step(sinusoid, weigh=lambda g, support: seen.append(support()) or torch.full((4,), 0.25))
    params = reference.meta_params()
    for i in range(4):
        expected = grad(lambda p: REGRESSION.loss(reference.forward(p, tasks.support_x[i]),
                                                  tasks.support_y[i]))(params)
        for name, value in expected.items():
            torch.testing.assert_close(seen[0][name][i], value, atol=1e-6, rtol=1e-5)


def test_more_iterations_from_a_saved_state_equal_one_longer_run(make_trainer, sinusoid):
    """What the feedback stage's "continued" run relies on: N, save, load, M == N + M."""
    longer, first = make_trainer(NOISE), make_trainer(NOISE)
    for _ in range(5):
        longer.step(sinusoid)
    for _ in range(3):
        first.step(sinusoid)
    resumed = make_trainer(NOISE)
    resumed.load_state_dict(first.state_dict())
    for _ in range(2):
        resumed.step(sinusoid)
    assert resumed.iteration == 5
    assert_same_params(longer, resumed)
