"""Task construction: NME / intrashuffle / intershuffle classification tasks, episodes, sinusoids."""

from __future__ import annotations

import math

import pytest
import torch

from noisymaml.core.tasks import (
    ClassificationTaskSource,
    EpisodeSet,
    TaskBatch,
    class_pairs,
    nme_groups,
    random_drawers,
    standard_episodes,
)
from noisymaml.datasets.sinusoid import SinusoidNME, SinusoidTasks
from noisymaml.pipeline.params import read_params

N_CLASSES, DRAWERS, WAYS, SHOTS, QUERY = 12, 6, 3, 2, 3


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pool(class_images) -> torch.Tensor:
    return class_images(N_CLASSES, DRAWERS)


@pytest.fixture
def groups() -> torch.Tensor:
    return nme_groups(N_CLASSES, WAYS, generator(11))


def source(pool, groups, mode, augment=False) -> ClassificationTaskSource:
    return ClassificationTaskSource(pool, groups, mode, WAYS, SHOTS, QUERY, augment_rotations=augment)


def task_classes(tasks: TaskBatch, pixels) -> torch.Tensor:
    """Class of every label of every task, [tasks, ways], checked consistent inside each task."""
    decode, _ = pixels
    n_tasks = len(tasks)
    label_class = torch.full((n_tasks, WAYS), -1, dtype=torch.long)
    for x, y in ((tasks.support_x, tasks.support_y), (tasks.query_x, tasks.query_y)):
        classes, _ = decode(x)
        for label in range(WAYS):
            of_label = classes[y == label].view(n_tasks, -1)
            assert (of_label == of_label[:, :1]).all(), "one label holds several classes"
            seen = of_label[:, 0]
            assert ((label_class[:, label] == -1) | (label_class[:, label] == seen)).all(), \
                "support and query disagree on a label's class"
            label_class[:, label] = seen
    return label_class


# --- groups and episodes ------------------------------------------------------------------

def test_nme_groups_partition_the_classes():
    groups = nme_groups(14, 4, generator(1))
    assert groups.shape == (3, 4)  # 14 // 4 groups; two classes left over
    assert groups.flatten().unique().numel() == 12
    assert ((groups >= 0) & (groups < 14)).all()


def test_random_drawers_are_distinct_per_class():
    drawers = random_drawers(50, 4, 5, 6, generator(2))
    assert drawers.shape == (50, 4, 5)
    assert ((drawers >= 0) & (drawers < 6)).all()
    assert (drawers.sort(-1).values.diff(dim=-1) > 0).all()


def test_standard_episodes_have_distinct_classes_and_drawers():
    episodes = standard_episodes(200, 5, 4, 12, 6, generator(3))
    assert episodes.classes.shape == (200, 5) and episodes.drawers.shape == (200, 5, 4)
    assert (episodes.classes.sort(-1).values.diff(dim=-1) > 0).all()
    assert ((episodes.classes >= 0) & (episodes.classes < 12)).all()
    assert episodes.classes.unique().numel() == 12  # every held-out class gets used
    assert (episodes.drawers.sort(-1).values.diff(dim=-1) > 0).all()
    assert ((episodes.drawers >= 0) & (episodes.drawers < 6)).all()


def test_episode_set_materialises_its_episodes(pool, pixels):
    decode, _ = pixels
    episodes = standard_episodes(10, WAYS, SHOTS + QUERY, N_CLASSES, DRAWERS, generator(4))
    episode_set = EpisodeSet(pool, episodes, SHOTS)
    assert len(episode_set) == 10
    tasks = episode_set.slice(2, 7)
    assert len(tasks) == 5
    assert tasks.support_x.shape == (5, WAYS * SHOTS, 1, 5, 5)
    assert tasks.query_x.shape == (5, WAYS * QUERY, 1, 5, 5)
    assert tasks.support_x.dtype == torch.float32 and tasks.support_x.max() <= 1
    classes, drawers = decode(tasks.support_x)
    expected_classes = episodes.classes[2:7].repeat_interleave(SHOTS, dim=1)
    assert torch.equal(classes, expected_classes)
    assert torch.equal(drawers, episodes.drawers[2:7, :, :SHOTS].flatten(1))
    _, query_drawers = decode(tasks.query_x)
    assert torch.equal(query_drawers, episodes.drawers[2:7, :, SHOTS:].flatten(1))
    assert torch.equal(tasks.support_y, torch.arange(WAYS).repeat_interleave(SHOTS).expand(5, -1))


# --- training task modes ------------------------------------------------------------------

def test_non_exclusive_tasks_are_fixed_groups_with_fixed_labels(pool, groups, pixels):
    tasks = source(pool, groups, "non_exclusive").sample(300, generator(5))
    classes = task_classes(tasks, pixels)
    # every task is exactly one group, in the group's order: label = position in the group
    matches = (classes.unsqueeze(1) == groups.unsqueeze(0)).all(-1)  # [tasks, groups]
    assert (matches.sum(1) == 1).all()
    assert matches.any(0).all()  # every group is used
    # so each class always carries one and the same label
    for c in range(N_CLASSES):
        labels = (classes == c).nonzero()[:, 1].unique()
        assert labels.numel() <= 1


def test_intrashuffle_keeps_groups_but_permutes_labels(pool, groups, pixels):
    tasks = source(pool, groups, "intrashuffle").sample(300, generator(6))
    classes = task_classes(tasks, pixels)
    as_sets = classes.sort(-1).values
    group_sets = groups.sort(-1).values
    assert (as_sets.unsqueeze(1) == group_sets.unsqueeze(0)).all(-1).any(1).all()
    in_groups = groups.flatten()
    for c in in_groups.tolist():
        labels = (classes == c).nonzero()[:, 1].unique()
        assert labels.numel() == WAYS  # over 300 tasks each class wears every label


def test_intershuffle_mixes_classes_across_groups(pool, groups, pixels):
    tasks = source(pool, groups, "intershuffle").sample(300, generator(7))
    classes = task_classes(tasks, pixels)
    assert (classes.sort(-1).values.diff(dim=-1) > 0).all()  # distinct classes per task
    group_of = torch.empty(N_CLASSES, dtype=torch.long)
    group_of[groups.flatten()] = torch.arange(groups.shape[0]).repeat_interleave(WAYS)
    mixed = (group_of[classes] != group_of[classes[:, :1]]).any(-1)
    assert mixed.float().mean() > 0.5
    labels_of_first = (classes == groups[0, 0]).nonzero()[:, 1].unique()
    assert labels_of_first.numel() > 1


@pytest.mark.parametrize("mode", ["non_exclusive", "intrashuffle", "intershuffle"])
def test_support_and_query_never_share_an_image(pool, groups, pixels, mode):
    decode, _ = pixels
    tasks = source(pool, groups, mode).sample(100, generator(8))
    s_class, s_drawer = decode(tasks.support_x)
    q_class, q_drawer = decode(tasks.query_x)
    support_ids = s_class * DRAWERS + s_drawer
    query_ids = q_class * DRAWERS + q_drawer
    both = torch.cat([support_ids, query_ids], dim=1)
    assert (both.sort(-1).values.diff(dim=-1) > 0).all()
    assert tasks.support_y.shape == (100, WAYS * SHOTS) and tasks.query_y.shape == (100, WAYS * QUERY)
    for label in range(WAYS):
        assert ((tasks.support_y == label).sum(1) == SHOTS).all()
        assert ((tasks.query_y == label).sum(1) == QUERY).all()


def test_unknown_mode_is_refused(pool, groups):
    with pytest.raises(ValueError, match="intershuffle"):
        source(pool, groups, "shuffled")


def test_rotation_augmentation_keeps_labels_and_turns_whole_classes(pool, groups, pixels):
    _, turns_of = pixels
    plain = source(pool, groups, "non_exclusive").sample(200, generator(9))
    turned = source(pool, groups, "non_exclusive", augment=True).sample(200, generator(9))
    # same classes and drawers were drawn; augmentation only turns images
    assert torch.equal(plain.support_y, turned.support_y)
    assert torch.equal(plain.query_y, turned.query_y)
    assert torch.equal(task_classes(plain, pixels), task_classes(turned, pixels))
    assert turns_of(plain.support_x).eq(0).all() and turns_of(plain.query_x).eq(0).all()
    s_turns, q_turns = turns_of(turned.support_x), turns_of(turned.query_x)
    for x_plain, x_turned, turns in ((plain.support_x, turned.support_x, s_turns),
                                     (plain.query_x, turned.query_x, q_turns)):
        k = turns.view(-1)
        back = torch.stack([img.rot90(-int(r), dims=(-2, -1))
                            for img, r in zip(x_turned.flatten(0, 1), k)])
        assert torch.equal(back, x_plain.flatten(0, 1))
    # one turn per class per task, shared by its support and query images
    for label in range(WAYS):
        s = s_turns[turned.support_y == label].view(200, -1)
        q = q_turns[turned.query_y == label].view(200, -1)
        assert (s == s[:, :1]).all() and (q == s[:, :1]).all()
    assert s_turns.unique().numel() == 4  # all four turns occur


# --- sinusoid -----------------------------------------------------------------------------

def spec(**changes) -> SinusoidTasks:
    values = dict(bins=6, train_bins=4, amp_min=0.5, amp_max=3.0, x_range=5.0, support=5, query=7,
                  label_noise=0.0, test_support=3, test_query=11, test_episodes=4, val_episodes=4,
                  feedback_episodes=2)
    return SinusoidTasks(**(values | changes))


def split_inputs(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[tasks, points, 1 + bins] -> (x [tasks, points], bin index [tasks, points])."""
    one_hot = x[..., 1:]
    assert one_hot.shape[-1] == bins
    assert ((one_hot == 0) | (one_hot == 1)).all() and (one_hot.sum(-1) == 1).all()
    return x[..., 0], one_hot.argmax(-1)


def test_sinusoid_training_tasks():
    problem = SinusoidNME(spec())
    assert problem.input_size == 7
    tasks = problem.sample(400, generator(10))
    assert tasks.support_x.shape == (400, 5, 7) and tasks.query_x.shape == (400, 7, 7)
    assert tasks.support_y.shape == (400, 5, 1) and tasks.query_y.shape == (400, 7, 1)
    amplitudes = problem.amplitudes()
    assert torch.allclose(amplitudes, torch.linspace(0.5, 3.0, 6))
    bins_seen = []
    for x_all, y_all in ((tasks.support_x, tasks.support_y), (tasks.query_x, tasks.query_y)):
        x, bins = split_inputs(x_all, 6)
        assert (x.abs() <= 5.0).all() and x.abs().max() > 4.0
        assert (bins == bins[:, :1]).all()  # one bin per task
        bins_seen.append(bins[:, 0])
        torch.testing.assert_close(y_all[..., 0], amplitudes[bins] * torch.sin(x), rtol=0, atol=1e-6)
    assert torch.equal(bins_seen[0], bins_seen[1])  # support and query: the same task
    assert set(bins_seen[0].tolist()) == {0, 1, 2, 3}  # only (and all) training bins


def test_sinusoid_label_noise_has_the_configured_std():
    problem = SinusoidNME(spec(label_noise=0.3, support=50, query=50))
    tasks = problem.sample(200, generator(11))
    x, bins = split_inputs(tasks.support_x, 6)
    residual = tasks.support_y[..., 0] - problem.amplitudes()[bins] * torch.sin(x)
    n = residual.numel()
    assert abs(residual.mean().item()) < 6 * 0.3 / math.sqrt(n)
    assert abs(residual.std().item() - 0.3) < 6 * 0.3 / math.sqrt(2 * n)


def test_sinusoid_test_tasks_have_continuous_amplitudes_and_misleading_bins():
    problem = SinusoidNME(spec())
    tasks = problem.test_tasks(300, generator(12))
    assert tasks.support_x.shape == (300, 3, 7) and tasks.query_x.shape == (300, 11, 7)
    assert tasks.support_y.shape == (300, 3, 1) and tasks.query_y.shape == (300, 11, 1)
    x = torch.cat([tasks.support_x, tasks.query_x], 1)
    y = torch.cat([tasks.support_y, tasks.query_y], 1)[..., 0]
    x, bins = split_inputs(x, 6)
    assert (bins == bins[:, :1]).all() and (bins < 4).all()
    sin = torch.sin(x)
    amplitude = (y * sin).sum(1) / (sin * sin).sum(1)  # exact fit: label_noise is 0
    torch.testing.assert_close(y, amplitude[:, None] * sin, rtol=0, atol=1e-5)
    assert (amplitude >= 0.5 - 1e-5).all() and (amplitude <= 3.0 + 1e-5).all()
    grid_distance = (amplitude[:, None] - problem.amplitudes()[None]).abs().min(1).values
    assert (grid_distance > 1e-3).float().mean() > 0.9  # not on the bin grid
    assert amplitude.std() > 0.5  # spread over the range


def test_yin_grid_protocol_puts_evenly_spaced_query_inputs_in_every_test_task():
    grid = SinusoidNME(spec(test_inputs="grid", test_query=200)).test_tasks(3, torch.Generator().manual_seed(0))
    expected = torch.linspace(-4.5, 4.5, 200)
    for task in range(3):
        torch.testing.assert_close(grid.query_x[task, :, 0], expected)
    uniform = SinusoidNME(spec(test_query=200)).test_tasks(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(grid.support_x, uniform.support_x)  # the support points are unchanged


def test_sixteen_of_twenty_amplitude_bins_train_as_in_yin_et_al(root):
    """Yin et al.'s notebook draws the training bin with randint(0, K_amp - 5), inclusive."""
    tasks = read_params(root / "params.yaml")["sinusoid"]["tasks"]
    bins = SinusoidNME(spec(bins=tasks["bins"], train_bins=tasks["train_bins"]))._training_bins(
        5000, torch.Generator().manual_seed(0))
    assert bins.unique().tolist() == list(range(16))


def test_dclaw_intershuffle_pairs_any_two_object_classes_as_rajendran_et_al(class_images):
    """Rajendran et al.'s data_generator.py trains intershuffle with random.sample over every
    object folder: a task may pair one object's neg with another's pos, or two negatives."""
    pool = class_images(6, 4)  # three objects: classes (0, 1), (2, 3), (4, 5)
    source = ClassificationTaskSource(pool, class_pairs(6), "intershuffle", 2, 1, 1)
    pairs = {tuple(sorted(c)) for c in source.classes(300, torch.Generator().manual_seed(0)).tolist()}
    assert pairs - {(0, 1), (2, 3), (4, 5)}
    fixed = ClassificationTaskSource(pool, class_pairs(6), "intrashuffle", 2, 1, 1)
    assert {tuple(sorted(c)) for c in fixed.classes(300, torch.Generator().manual_seed(0)).tolist()} == {
        (0, 1), (2, 3), (4, 5)}
