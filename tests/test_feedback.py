"""Feedback weights from stored test gradients, and the mean / 95% CI summaries of evaluation."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from noisymaml.core.feedback import FeedbackWeigher, flatten, similarity, task_weights
from noisymaml.core.metrics import format_mean_ci, mean_ci95, student_t_quantile, summarise


def grads(rows: list[list[float]]) -> dict[str, torch.Tensor]:
    """Hand-made gradients of a two-tensor 'model': first two numbers 'a' [2], the rest 'b' [k]."""
    values = torch.tensor(rows, dtype=torch.float32)
    return {"b": values[:, 2:], "a": values[:, :2]}


# --- task_weights -------------------------------------------------------------------------

def test_weights_are_the_softmax_of_mean_similarity_over_temperature():
    tasks = grads([[1, 1, 0], [2, 0, 0], [0, 3, 0], [-1, 0, 0], [-5, 0.1, 0]])
    reference = grads([[1, 0, 0]])
    cosines = torch.tensor([1 / math.sqrt(2), 1.0, 0.0, -1.0, -5 / math.sqrt(25.01)])
    weights = task_weights(tasks, reference, "cosine", temperature=0.5)
    torch.testing.assert_close(weights, torch.softmax(cosines / 0.5, dim=0))
    assert weights.sum().item() == pytest.approx(1.0)
    assert (weights > 0).all()


def test_weights_are_continuous_in_the_similarities():
    """One task crossing zero similarity must not jump from weight 1/n to weight 1."""
    reference = grads([[1, 0, 0]])
    below = task_weights(grads([[-1e-3, 1, 0], [-1, 0, 0], [0, -1, 0]]), reference)
    above = task_weights(grads([[1e-3, 1, 0], [-1, 0, 0], [0, -1, 0]]), reference)
    torch.testing.assert_close(below, above, atol=1e-2, rtol=0)


def test_cosine_similarity_values():
    tasks = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    reference = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    expected = torch.tensor([[0.8, 7 / (5 * math.sqrt(2))],
                             [0.0, 1 / math.sqrt(2)],
                             [-1.0, -1 / math.sqrt(2)]])
    torch.testing.assert_close(similarity(tasks, reference, "cosine"), expected)
    torch.testing.assert_close(similarity(tasks, reference, "dot"),
                               torch.tensor([[4.0, 7.0], [0.0, 1.0], [-2.0, -2.0]]))


def test_cosine_ignores_scale_and_dot_does_not():
    reference = grads([[1, 2, 3]])
    tasks = grads([[1, 0, 0], [0, 1, 1]])
    scaled = grads([[10, 0, 0], [0, 1, 1]])
    torch.testing.assert_close(task_weights(tasks, reference), task_weights(scaled, reference))
    assert not torch.allclose(task_weights(tasks, reference, "dot"),
                              task_weights(scaled, reference, "dot"))


def test_equal_similarities_give_uniform_weights():
    tasks = grads([[-1, 0, 0], [0, -1, 0], [-1, -1, 0]])
    reference = grads([[0, 0, 1]])  # orthogonal to every task: all similarities 0
    torch.testing.assert_close(task_weights(tasks, reference, "cosine"), torch.full((3,), 1 / 3))
    torch.testing.assert_close(task_weights(tasks, reference, "dot"), torch.full((3,), 1 / 3))


def test_similarity_is_averaged_over_references():
    tasks = grads([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, -1, 0]])
    reference = grads([[1, 0, 0], [0.6, -0.8, 0]])
    cos = torch.tensor([[1.0, 0.6], [0.0, -0.8], [1 / math.sqrt(2), -0.2 / math.sqrt(2)],
                        [0.0, 0.8]])
    weights = task_weights(tasks, reference, "cosine", temperature=1.0)
    torch.testing.assert_close(weights, torch.softmax(cos.mean(1), dim=0))


def test_only_shared_parameters_are_compared():
    tasks = {**grads([[1, 0, 0], [0, 1, 0]]), "log_sigma/a": torch.ones(2, 2)}
    reference = grads([[1, 0, 0]])
    torch.testing.assert_close(task_weights(tasks, reference),
                               task_weights(grads([[1, 0, 0], [0, 1, 0]]), reference))


def test_weights_do_not_depend_on_parameter_order():
    tasks = grads([[1, 2, 3], [3, -1, 0], [0, 0, 1]])
    reference = grads([[1, 0, 1], [0, 1, 0]])
    reordered = {k: reference[k] for k in ("a", "b")}
    assert list(reordered) != list(reference)
    torch.testing.assert_close(task_weights(tasks, reference), task_weights(tasks, reordered))
    flat = flatten(tasks)
    assert flat.shape == (3, 3)
    assert torch.equal(flat[:, :2], tasks["a"])  # names in sorted order: a before b


def test_weights_flatten_multidimensional_gradients():
    tasks = {"w": torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])}
    reference = {"w": torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])}
    scores = torch.tensor([1 / math.sqrt(1.25), 0.5 / math.sqrt(1.25)])
    torch.testing.assert_close(task_weights(tasks, reference, temperature=1.0), torch.softmax(scores, 0))


def test_unknown_similarity_is_refused():
    with pytest.raises(ValueError, match="cosine, dot"):
        task_weights(grads([[1, 0, 0]]), grads([[1, 0, 0]]), "euclid")


# --- metrics ------------------------------------------------------------------------------

def test_mean_ci95_on_a_hand_made_vector():
    data = [1.0, 2.0, 4.0, 7.0, 11.0]
    mean, half = mean_ci95(torch.tensor(data))
    assert mean == pytest.approx(statistics.mean(data), rel=1e-12)
    # Student's t with 4 degrees of freedom (2.776), not 1.96: five values are not hundreds
    assert half == pytest.approx(2.7764451052 * statistics.stdev(data) / math.sqrt(5), rel=1e-9)


@pytest.mark.parametrize("df, quantile", [(1, 12.7062047362), (2, 4.3026527297), (3, 3.1824463053),
                                          (4, 2.7764451052), (10, 2.2281388520), (599, 1.9639322489)])
def test_student_t_quantiles_match_the_tables(df, quantile):
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, rel=1e-9)


def test_mean_ci95_of_one_value_is_zero_width():
    assert mean_ci95(torch.tensor([3.5])) == (3.5, 0.0)


def test_mean_ci95_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        mean_ci95(torch.tensor([]))


def test_mean_ci95_is_exact_in_double_precision_for_float32_input():
    data = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float32)
    values = [float(v) for v in data]
    mean, half = mean_ci95(data)
    assert mean == pytest.approx(statistics.mean(values), rel=1e-12)
    assert half == pytest.approx(3.1824463053 * statistics.stdev(values) / 2, rel=1e-9)


def test_summarise_and_format():
    per_task = {"loss_post": torch.tensor([1.0, 3.0]), "acc_post": torch.tensor([0.5, 0.75])}
    summary = summarise(per_task)
    assert summary["tasks"] == 2
    assert summary["loss_post"] == 2.0
    assert summary["loss_post_ci95"] == round(12.7062047362 * statistics.stdev([1, 3]) / math.sqrt(2), 6)
    assert summary["acc_post"] == 0.625
    assert format_mean_ci(summary, "acc_post", percent=True) == \
        f"62.50 ± {100 * summary['acc_post_ci95']:.2f}"
    assert format_mean_ci(summary, "loss_post") == f"2.0000 ± {summary['loss_post_ci95']:.4f}"


def test_the_weigher_compares_support_gradients_by_default_and_meta_gradients_on_request():
    reference = grads([[1, 0, 0]])
    meta, support = grads([[1, 0, 0], [-1, 0, 0]]), grads([[-1, 0, 0], [1, 0, 0]])
    by_support = FeedbackWeigher(reference)(meta, lambda: support)
    by_meta = FeedbackWeigher(reference, compare="meta")(meta, lambda: support)
    assert by_support[1] > by_support[0] and by_meta[0] > by_meta[1]
