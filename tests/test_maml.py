"""MAML as functions: first/second order, vmap vs loop, inner noise, support-only gradients."""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.func import grad

from noisymaml.core.evaluation import capture_gradients, evaluate
from noisymaml.core.maml import (
    CLASSIFICATION,
    REGRESSION,
    InnerLoop,
    Objective,
    adapt,
    evaluate_tasks,
    make_forward,
    per_task_meta_gradients,
    run_tasks,
    support_gradient,
)
from noisymaml.core.models import MLP, Conv4, init_params
from noisymaml.core.noise import GradientNoise
from noisymaml.core.tasks import TaskBatch


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class FixedTasks:
    """An evaluation set over one TaskBatch (the EvaluationSet protocol)."""

    def __init__(self, tasks: TaskBatch):
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def slice(self, start: int, stop: int) -> TaskBatch:
        return self.tasks.slice(start, stop)


@pytest.fixture
def mlp_setup(sinusoid):
    model = MLP(sinusoid.input_size, [8], 1)
    params = init_params(model, 0)
    tasks = sinusoid.sample(5, generator(1))
    return make_forward(model), params, tasks


@pytest.fixture
def conv_setup():
    """A tiny Conv4 in float64: with 3 images per batch-norm batch the float32 second-order
    gradients carry round-off of ~1e-5 relative, which would hide nothing but blur the check."""
    ways, shots, query, size = 3, 1, 2, 8
    model = Conv4(1, size, ways, filters=4)
    params = {k: v.double() for k, v in init_params(model, 0).items()}
    gen = generator(2)
    n_tasks = 4
    support_x = torch.rand(n_tasks, ways * shots, 1, size, size, generator=gen, dtype=torch.float64)
    query_x = torch.rand(n_tasks, ways * query, 1, size, size, generator=gen, dtype=torch.float64)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(n_tasks, -1).contiguous()
    query_y = torch.arange(ways).repeat_interleave(query).expand(n_tasks, -1).contiguous()
    return make_forward(model), params, TaskBatch(support_x, support_y, query_x, query_y)


def unrolled_meta_gradient(forward, params, task: TaskBatch, inner: InnerLoop, loss_fn) -> dict:
    """Reference second-order MAML gradient with plain autograd (create_graph)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    current = dict(leaves)
    for _ in range(inner.steps):
        loss = loss_fn(forward(current, task.support_x[0]), task.support_y[0])
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=True)
        current = {k: p - inner.lr * g for (k, p), g in zip(current.items(), grads)}
    query_loss = loss_fn(forward(current, task.query_x[0]), task.query_y[0])
    return dict(zip(leaves, torch.autograd.grad(query_loss, list(leaves.values()))))


def assert_params_close(a: dict, b: dict, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=f"parameter {k}")


def params_differ(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=atol) for k in a)


# --- first and second order ---------------------------------------------------------------

def test_second_order_matches_unrolled_autograd(mlp_setup):
    forward, params, tasks = mlp_setup
    inner = InnerLoop(lr=0.1, steps=3, first_order=False)
    grads, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, batched=False)
    for i in range(len(tasks)):
        expected = unrolled_meta_gradient(forward, params, tasks.task(i), inner, REGRESSION.loss)
        assert_params_close({k: v[i] for k, v in grads.items()}, expected)


def test_first_order_is_the_query_gradient_at_the_adapted_params(mlp_setup):
    forward, params, tasks = mlp_setup
    inner = InnerLoop(lr=0.1, steps=3, first_order=True)
    grads, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, batched=False)
    for i in range(len(tasks)):
        t = tasks.task(i)
        adapted = adapt(forward, REGRESSION, params, t.support_x[0], t.support_y[0], inner)
        expected = grad(lambda p: REGRESSION.loss(forward(p, t.query_x[0]), t.query_y[0]))(adapted)
        assert_params_close({k: v[i] for k, v in grads.items()}, expected, atol=1e-6)


def test_first_and_second_order_differ(mlp_setup):
    forward, params, tasks = mlp_setup
    first, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks,
                                       InnerLoop(0.1, 3, first_order=True), batched=False)
    second, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks,
                                        InnerLoop(0.1, 3, first_order=False), batched=False)
    assert params_differ(first, second, atol=1e-4)


def test_adapted_params_and_reported_losses(mlp_setup):
    forward, params, tasks = mlp_setup
    inner = InnerLoop(lr=0.1, steps=2)
    _, metrics = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, batched=False)
    assert set(metrics) == {"loss_pre", "loss_post"}
    for i in range(len(tasks)):
        t = tasks.task(i)
        adapted = adapt(forward, REGRESSION, params, t.support_x[0], t.support_y[0], inner)
        pre = REGRESSION.loss(forward(params, t.query_x[0]), t.query_y[0])
        post = REGRESSION.loss(forward(adapted, t.query_x[0]), t.query_y[0])
        torch.testing.assert_close(metrics["loss_pre"][i], pre)
        torch.testing.assert_close(metrics["loss_post"][i], post)
    assert (metrics["loss_post"] < metrics["loss_pre"]).float().mean() > 0.5  # adaptation helps


def test_zero_inner_steps_leave_the_params_alone(mlp_setup):
    forward, params, tasks = mlp_setup
    result = evaluate_tasks(forward, REGRESSION, params, tasks, InnerLoop(0.1, 0), batched=False)
    assert torch.equal(result["loss_pre"], result["loss_post"])


# --- batched (vmap) and looped paths ------------------------------------------------------

@contextmanager
def intra_op_threads(n: int):
    """torch.set_num_threads(n) for a block: the looped path shares tasks among n threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("setup", ["mlp_setup", "conv_setup"])
def test_batched_and_looped_meta_gradients_agree(request, setup, noisy, first_order, threads):
    forward, params, tasks = request.getfixturevalue(setup)
    objective = REGRESSION if setup == "mlp_setup" else CLASSIFICATION
    inner = InnerLoop(lr=0.1, steps=2, first_order=first_order)
    noise = GradientNoise(sigma=0.5, where="inner").inner(params, len(tasks), 2, 0, generator(3)) \
        if noisy else None
    g_vmap, m_vmap = per_task_meta_gradients(forward, objective, params, tasks, inner, noise, True)
    with intra_op_threads(threads):
        g_loop, m_loop = per_task_meta_gradients(forward, objective, params, tasks, inner, noise, False)
    assert set(m_vmap) == set(m_loop)
    expected_keys = {"loss_pre", "loss_post"} | ({"acc_pre", "acc_post"} if objective.classification
                                                 else set())
    assert set(m_vmap) == expected_keys
    for k in m_vmap:
        assert m_vmap[k].shape == (len(tasks),)
        torch.testing.assert_close(m_vmap[k], m_loop[k], atol=1e-5, rtol=1e-5)
    for k, p in params.items():
        assert g_vmap[k].shape == (len(tasks), *p.shape)
    assert_params_close(g_vmap, g_loop)
    assert all(torch.isfinite(g).all() for g in g_vmap.values())


@pytest.mark.parametrize("setup", ["mlp_setup", "conv_setup"])
def test_batched_and_looped_evaluation_agree(request, setup):
    forward, params, tasks = request.getfixturevalue(setup)
    objective = REGRESSION if setup == "mlp_setup" else CLASSIFICATION
    inner = InnerLoop(lr=0.1, steps=2, first_order=True)
    a = evaluate(forward, objective, params, FixedTasks(tasks), inner, chunk=3, batched=True)
    b = evaluate(forward, objective, params, FixedTasks(tasks), inner, chunk=2, batched=False)
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == (len(tasks),)
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    done = []
    limited = evaluate(forward, objective, params, FixedTasks(tasks), inner, chunk=2, limit=3,
                       batched=False, progress=done.append)
    assert all(torch.equal(limited[k], b[k][:3]) for k in b)
    assert done == [2, 3]  # after each chunk


def float32_conv_tasks(n_tasks: int, seed: int, ways: int = 5, size: int = 12):
    """A float32 Conv-4 (the training precision) and random 5-way 1-shot tasks, 1 query image each."""
    model = Conv4(1, size, ways, filters=8)
    x = torch.rand(n_tasks, 2 * ways, 1, size, size, generator=generator(seed))
    y = torch.arange(ways).repeat(2).expand(n_tasks, -1).contiguous()
    return model, init_params(model, 0), TaskBatch(x[:, :ways], y[:, :ways], x[:, ways:], y[:, ways:])


def test_tasks_shared_among_threads_give_exactly_the_numbers_of_one_thread():
    """Each task runs single-threaded whatever the thread count: CPU results do not depend on it."""
    model, params, tasks = float32_conv_tasks(n_tasks=7, seed=5)
    results = []
    for threads in (1, 2, 3):
        with intra_op_threads(threads):
            results.append(per_task_meta_gradients(make_forward(model), CLASSIFICATION, params, tasks,
                                                   InnerLoop(0.4, 2), batched=False))
    for grads, metrics in results[1:]:
        assert all(torch.equal(grads[k], results[0][0][k]) for k in grads)
        assert all(torch.equal(metrics[k], results[0][1][k]) for k in metrics)


def test_bfloat16_autocast_changes_little_but_the_gradients_in_every_thread_stay_float32():
    """bf16 losses stay close to float32; second-order meta-gradients through batch norm on a few
    images do not (cosine ~0.9 at 20-way 1-shot, far less here): why `train.precision` is off."""
    model, params, tasks = float32_conv_tasks(n_tasks=4, seed=6)

    def meta_gradients(autocast, threads):
        with intra_op_threads(threads):
            return per_task_meta_gradients(make_forward(model, autocast), CLASSIFICATION, params, tasks,
                                           InnerLoop(0.4, 2), batched=False)

    (full, full_metrics), (half, half_metrics) = meta_gradients(None, 1), meta_gradients(torch.bfloat16, 1)
    assert all(g.dtype == torch.float32 for g in half.values())
    assert params_differ(full, half)  # autocast did engage
    for key in ("loss_pre", "loss_post"):
        torch.testing.assert_close(half_metrics[key], full_metrics[key], atol=0.05, rtol=0.05)
    threaded, _ = meta_gradients(torch.bfloat16, 2)  # autocast is per thread: the workers need it too
    assert all(torch.equal(threaded[k], half[k]) for k in half)


def test_run_tasks_runs_tasks_concurrently_in_order_in_the_callers_grad_mode():
    barrier = threading.Barrier(3, timeout=10)  # broken unless 3 tasks run at the same time

    def task(i: int) -> tuple[int, bool, int]:
        barrier.wait()
        return i, torch.is_grad_enabled(), torch.get_num_threads()

    with torch.no_grad(), intra_op_threads(3):
        results = run_tasks(task, 6, threads=3)
        assert torch.get_num_threads() == 3  # restored
    assert results == [(i, False, 1) for i in range(6)]


# --- inner-loop noise ---------------------------------------------------------------------

def linear_setup():
    model = nn.Linear(3, 2)
    params = init_params(model, 0)
    gen = generator(4)
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    return make_forward(model), params, x, y


def test_one_noisy_step_moves_params_by_minus_lr_times_noise():
    forward, params, x, y = linear_setup()
    inner = InnerLoop(lr=0.3, steps=1)
    noise = {k: torch.randn(1, *p.shape, generator=generator(5)) for k, p in params.items()}
    clean = adapt(forward, REGRESSION, params, x, y, inner)
    noisy = adapt(forward, REGRESSION, params, x, y, inner, noise)
    assert_params_close({k: noisy[k] - clean[k] for k in params},
                        {k: -0.3 * noise[k][0] for k in params}, atol=1e-6)


def test_noise_of_every_inner_step_is_applied():
    """With a loss whose gradient is zero, adaptation moves the params by -lr * sum of the noise."""
    forward, params, x, y = linear_setup()
    flat = Objective(lambda output, target: (output * 0).sum(), classification=False)
    inner = InnerLoop(lr=0.2, steps=3)
    noise = GradientNoise(sigma=1.0, where="inner").inner(params, 1, 3, 0, generator(6))
    noise = {k: v[0] for k, v in noise.items()}  # one task: [steps, *shape]
    adapted = adapt(forward, flat, params, x, y, inner, noise)
    assert_params_close({k: adapted[k] - params[k] for k in params},
                        {k: -0.2 * noise[k].sum(0) for k in params}, atol=1e-6)
    assert torch.equal(adapt(forward, flat, params, x, y, inner)["weight"], params["weight"])


def test_inner_noise_changes_the_meta_gradient(mlp_setup):
    forward, params, tasks = mlp_setup
    inner = InnerLoop(lr=0.1, steps=2)
    noise = GradientNoise(sigma=1.0, where="inner").inner(params, len(tasks), 2, 0, generator(7))
    clean, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, None, False)
    noisy, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, noise, False)
    assert params_differ(clean, noisy)
    zero = {k: torch.zeros_like(v) for k, v in noise.items()}
    zeroed, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, zero, False)
    assert_params_close(clean, zeroed, atol=1e-7, rtol=0)


# --- support gradients (feedback capture) -------------------------------------------------

def test_support_gradient_is_the_support_loss_gradient(mlp_setup):
    forward, params, tasks = mlp_setup
    t = tasks.task(0)
    result = support_gradient(forward, REGRESSION, params, t.support_x[0], t.support_y[0])
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = REGRESSION.loss(forward(leaves, t.support_x[0]), t.support_y[0])
    expected = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    assert_params_close(result, expected, atol=1e-6)


def test_captured_gradients_never_use_the_query(mlp_setup):
    forward, params, tasks = mlp_setup
    grads = capture_gradients(forward, REGRESSION, params, FixedTasks(tasks), count=3)
    for k, p in params.items():
        assert grads[k].shape == (3, *p.shape)
    for i in range(3):
        t = tasks.task(i)
        direct = support_gradient(forward, REGRESSION, params, t.support_x[0], t.support_y[0])
        assert_params_close({k: v[i] for k, v in grads.items()}, direct, atol=1e-6)
    nan = float("nan")
    poisoned = TaskBatch(tasks.support_x, tasks.support_y, torch.full_like(tasks.query_x, nan),
                         torch.full_like(tasks.query_y, nan))
    again = capture_gradients(forward, REGRESSION, params, FixedTasks(poisoned), count=3)
    assert all(torch.equal(grads[k], again[k]) for k in grads)
    # while the support labels do matter
    shifted = TaskBatch(tasks.support_x, tasks.support_y + 1.0, tasks.query_x, tasks.query_y)
    other = capture_gradients(forward, REGRESSION, params, FixedTasks(shifted), count=3)
    assert params_differ(grads, other)


def test_captured_gradients_of_classification_tasks_ignore_the_query(conv_setup):
    forward, params, tasks = conv_setup
    grads = capture_gradients(forward, CLASSIFICATION, params, FixedTasks(tasks), count=2)
    garbage = TaskBatch(tasks.support_x, tasks.support_y, torch.full_like(tasks.query_x, math.nan),
                        torch.full_like(tasks.query_y, -7))
    again = capture_gradients(forward, CLASSIFICATION, params, FixedTasks(garbage), count=2)
    assert all(torch.equal(grads[k], again[k]) for k in grads)
