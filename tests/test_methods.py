"""The baselines: MR-MAML(W)'s KL and frozen stochastic layers, meta-augmentation, FOMAML."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from noisymaml.core.maml import CLASSIFICATION, REGRESSION, InnerLoop, adapt, make_forward, per_task_meta_gradients
from noisymaml.core.models import MLP, Conv4, build_model, load_model, save_model
from noisymaml.core.noise import GradientNoise
from noisymaml.core.tasks import ClassificationTaskSource, nme_groups
from noisymaml.core.training import MetaTrainer, TrainerConfig
from noisymaml.methods import MAML, METHODS
from noisymaml.methods import mr_maml_w as mr
from noisymaml.pipeline.run import Run

SETTINGS = {"mr_maml_w": {"beta": 0.01, "init_scale": 0.05, "variant": "feature_layers"},
            "meta_aug": {"range": 2.0}}


def method(name: str, **mr_settings) -> MAML:
    """The registered method of an algorithm name (`noisy_` makes no difference to the method)."""
    algorithm = name.removeprefix("noisy_")
    return METHODS[algorithm](**{**SETTINGS.get(algorithm, {}), **mr_settings})


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- MR-MAML(W) -----------------------------------------------------------------------------

def test_kl_matches_the_closed_form_of_two_gaussians():
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    sigma = torch.tensor([[0.3, 2.0], [1.0, 0.1]])
    params = {"w": mu, mr.LOG_SIGMA + "w": sigma.log(), "head": torch.ones(3)}
    by_hand = (torch.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5).sum()
    reference = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(mr.kl_to_standard_normal(params), by_hand)
    torch.testing.assert_close(mr.kl_to_standard_normal(params), reference)


def test_kl_is_zero_when_the_posterior_is_the_prior():
    params = {"w": torch.zeros(4, 3), mr.LOG_SIGMA + "w": torch.zeros(4, 3)}
    assert mr.kl_to_standard_normal(params).item() == 0.0
    params["w"] = torch.full((4, 3), 0.1)
    assert mr.kl_to_standard_normal(params).item() > 0


@pytest.mark.parametrize("layers, expected", [("all", 2), (1, 1)])
def test_stochastic_layers_are_the_first_feature_layers(sinusoid, layers, expected):
    model = MLP(sinusoid.input_size, [8, 8], 1)
    params = method("mr_maml_w", stochastic_layers=layers).initial_params(model, 0)
    assert mr.stochastic(params) == sorted(n for layer in model.feature_layers()[:expected]
                                           for n in layer)
    for name in mr.stochastic(params):
        assert torch.allclose(params[mr.LOG_SIGMA + name].exp(), torch.tensor(0.05))
    assert "net.4.weight" in mr.adapted_names(params)  # the head always adapts


def test_more_stochastic_layers_than_the_model_has_is_refused(sinusoid):
    model = MLP(sinusoid.input_size, [8, 8], 1)
    with pytest.raises(ValueError, match=r"stochastic_layers is 3 but the model has 2 feature layers"):
        method("mr_maml_w", stochastic_layers=3).initial_params(model, 0)


def test_conv4_stochastic_layers_cover_every_conv_block():
    model = Conv4(1, 8, 3, filters=4)
    params = method("mr_maml_w").initial_params(model, 0)
    assert {n.split(".")[1] for n in mr.stochastic(params)} == {"0", "1", "2", "3"}
    assert mr.adapted_names(params) == {"head.weight", "head.bias"}


@pytest.fixture
def mr_setup(sinusoid):
    model = MLP(sinusoid.input_size, [8, 8], 1)
    chosen = method("mr_maml_w")
    params = chosen.initial_params(model, 0)
    tasks = sinusoid.sample(3, generator(1))
    return make_forward(model), chosen, params, tasks


def test_inner_loop_leaves_the_stochastic_weights_alone(mr_setup):
    forward, chosen, params, tasks = mr_setup
    inner = chosen.inner_loop(InnerLoop(0.1, 3), params)
    eps = chosen.draws(params, 1, generator(2))
    weights = mr.sample_weights(params, {k: v[0] for k, v in eps.items()})
    adapted = adapt(forward, REGRESSION, weights, tasks.support_x[0], tasks.support_y[0], inner)
    for name in mr.stochastic(params):
        assert torch.equal(adapted[name], weights[name]), name
    assert not torch.equal(adapted["net.4.weight"], weights["net.4.weight"])
    assert set(adapted) == set(mr.posterior_mean(params))


def test_sampled_weights_are_mean_plus_sigma_times_eps(mr_setup):
    _, chosen, params, _ = mr_setup
    eps = {k: v[0] for k, v in chosen.draws(params, 1, generator(3)).items()}
    weights = mr.sample_weights(params, eps)
    name = mr.stochastic(params)[0]
    torch.testing.assert_close(weights[name], params[name] + 0.05 * eps[name])
    assert torch.equal(weights["net.4.bias"], params["net.4.bias"])
    assert not any(k.startswith(mr.LOG_SIGMA) for k in weights)


def test_posterior_scales_get_a_meta_gradient_and_the_trainer_adds_beta_kl(mr_setup, sinusoid):
    forward, chosen, params, tasks = mr_setup
    inner = chosen.inner_loop(InnerLoop(0.1, 2), params)
    draws = chosen.draws(params, len(tasks), generator(4))
    grads, _ = per_task_meta_gradients(forward, REGRESSION, params, tasks, inner, None, False,
                                       chosen.realise, draws)
    assert all(grads[mr.LOG_SIGMA + n].abs().sum() > 0 for n in mr.stochastic(params))

    model = MLP(sinusoid.input_size, [8, 8], 1)
    trainer = MetaTrainer(model, params, TrainerConfig(REGRESSION, InnerLoop(0.1, 2), chosen, 0.01, 3, 0,
                                                       batched=False))
    summary = trainer.step(sinusoid)
    torch.testing.assert_close(torch.tensor(summary["regulariser"]),
                               0.01 * mr.kl_to_standard_normal(params))


@pytest.mark.parametrize("name", ["mr_maml_w", "meta_aug", "fomaml"])
def test_batched_and_looped_training_agree_for_every_algorithm(sinusoid, name):
    def run(batched: bool) -> dict:
        model = MLP(sinusoid.input_size, [8], 1)
        chosen = method(name)
        trainer = MetaTrainer(model, chosen.initial_params(model, 0), TrainerConfig(
            REGRESSION, InnerLoop(0.05, 2), chosen, 0.01, 4, 0, noise=GradientNoise(sigma=0.1),
            batched=batched))
        for _ in range(3):
            trainer.step(sinusoid)
        return trainer.meta_params()

    looped, batched = run(False), run(True)
    for k in looped:
        torch.testing.assert_close(looped[k], batched[k], atol=1e-5, rtol=1e-5, msg=k)


def test_model_file_keeps_the_posterior_and_evaluation_uses_its_mean(tmp_path, sinusoid):
    spec = {"kind": "mlp", "in_features": sinusoid.input_size, "hidden": [8], "out_features": 1}
    params = method("mr_maml_w").initial_params(build_model(spec), 0)
    save_model(tmp_path / "m.pt", spec, params, {})
    _, loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.keys() == params.keys()
    assert method("mr_maml_w").evaluation_params(loaded).keys() == mr.posterior_mean(params).keys()


# --- meta-augmentation ----------------------------------------------------------------------

WAYS, SHOTS, QUERY = 4, 1, 2


def test_meta_aug_permutes_labels_per_task_and_never_mixes_support_and_query(class_images, pixels):
    decode, _ = pixels
    pool = class_images(12, 6)
    nme = ClassificationTaskSource(pool, nme_groups(12, WAYS, generator(5)), "non_exclusive",
                                   WAYS, SHOTS, QUERY)
    plain = nme.sample(40, generator(6))
    tasks = method("meta_aug").augment(plain, True, WAYS, generator(7))
    permutations = set()
    for t in range(len(tasks)):
        classes = torch.cat([decode(tasks.support_x[t])[0], decode(tasks.query_x[t])[0]])
        labels = torch.cat([tasks.support_y[t], tasks.query_y[t]])
        mapping = {int(c): int(y) for c, y in zip(classes, labels)}
        assert len(mapping) == WAYS and sorted(mapping.values()) == list(range(WAYS))
        assert all(mapping[int(c)] == int(y) for c, y in zip(classes, labels)), \
            "a class carries different labels in support and query"
        permutations.add(tuple(mapping[c] for c in sorted(mapping)))
    assert len(permutations) > 5  # NME alone would give one labelling per group
    assert torch.equal(tasks.support_x, plain.support_x)  # same images, only labels change


def test_meta_aug_shifts_regression_targets_once_per_task(sinusoid):
    plain = sinusoid.sample(30, generator(7))
    tasks = method("meta_aug").augment(plain, False, 0, generator(8))
    support_shift = (tasks.support_y - plain.support_y).squeeze(-1)
    query_shift = (tasks.query_y - plain.query_y).squeeze(-1)
    per_task = support_shift[:, :1]
    torch.testing.assert_close(support_shift, per_task.expand_as(support_shift))
    torch.testing.assert_close(query_shift, per_task.expand_as(query_shift))
    assert per_task.abs().max() <= 2.0 and per_task.std() > 0.5


def test_other_methods_leave_the_tasks_alone(sinusoid):
    tasks = sinusoid.sample(3, generator(1))
    for name in ("maml", "fomaml", "mr_maml_w", "noisy_maml"):
        assert method(name).augment(tasks, False, 0, generator(2)) is tasks


class Recording:
    """A task source that remembers the classes of every meta-batch it hands out."""

    def __init__(self, source, decode):
        self.source, self.decode, self.classes = source, decode, []

    def sample(self, n_tasks, generator):
        tasks = self.source.sample(n_tasks, generator)
        self.classes.append(self.decode(tasks.support_x)[0].tolist())
        return tasks


@pytest.mark.parametrize("name", ["meta_aug", "mr_maml_w", "noisy_maml", "noisy_meta_aug", "noisy_mr_maml_w"])
def test_every_method_trains_on_the_same_sequence_of_tasks_as_maml(class_images, pixels, name):
    """Methods draw their own randomness (relabelling, weight samples) and noise from streams
    of their own, never from the task stream: same params.yaml, same training tasks."""
    decode, _ = pixels

    def classes_seen(method_name: str) -> list:
        pool = class_images(12, 6)
        source = Recording(ClassificationTaskSource(pool, nme_groups(12, WAYS, generator(5)),
                                                    "non_exclusive", WAYS, SHOTS, QUERY), decode)
        model = Conv4(1, pool.shape[-1], WAYS, filters=4)
        chosen = method(method_name)
        noise = GradientNoise(sigma=0.1) if method_name.startswith("noisy_") else GradientNoise()
        trainer = MetaTrainer(model, chosen.initial_params(model, 0), TrainerConfig(
            CLASSIFICATION, InnerLoop(0.1, 1), chosen, 0.01, 3, 0, noise=noise, batched=False, ways=WAYS))
        for _ in range(3):
            trainer.step(source)
        return source.classes

    assert classes_seen(name) == classes_seen("maml")


# --- names and FOMAML -----------------------------------------------------------------------

def test_method_names_parse_into_algorithm_and_noise(root):
    noisy = Run.from_params("sinusoid", "noisy_mr_maml_w", root / "params.yaml")
    assert (noisy.algorithm, noisy.noise.active) == ("mr_maml_w", True)
    assert isinstance(noisy.method, METHODS["mr_maml_w"]) and noisy.method.variant == "encoder"
    plain = Run.from_params("sinusoid", "maml", root / "params.yaml")
    assert type(plain.method) is MAML and not plain.noise.active


def test_fomaml_is_first_order_maml():
    inner = InnerLoop(0.1, 3, first_order=False)
    assert method("fomaml").inner_loop(inner, {}).first_order
    assert not method("maml").inner_loop(inner, {}).first_order
    assert method("maml").inner_loop(inner, {}) == inner


def test_noise_on_top_of_mr_maml_perturbs_only_what_the_inner_loop_adapts(sinusoid):
    model = MLP(sinusoid.input_size, [8], 1)
    chosen = method("noisy_mr_maml_w")
    params = chosen.initial_params(model, 0)
    trainer = MetaTrainer(model, params, TrainerConfig(REGRESSION, InnerLoop(0.05, 2), chosen, 0.01, 2, 0,
                                                       noise=GradientNoise(sigma=0.1), batched=False))
    adapted, _ = trainer.inner.splits(params)
    noise = trainer.noise.inner(adapted, 2, 2, 0, generator())
    assert set(noise) == {"net.2.weight", "net.2.bias"}
    summary = trainer.step(sinusoid)
    assert math.isfinite(summary["loss_post"])


# --- MR-MAML(W), Yin et al.'s encoder variant -------------------------------------------------

def encoded(spec: dict) -> tuple[torch.nn.Module, dict, MAML]:
    chosen = method("mr_maml_w", variant="encoder")
    model = build_model(chosen.model_spec(spec))
    return model, chosen.initial_params(model, 0), chosen


def test_encoder_variant_puts_a_stochastic_encoder_before_a_fully_adapted_maml_network():
    spec = {"kind": "conv4", "in_channels": 1, "image_size": 28, "n_classes": 5, "filters": 8,
            "downsample": "stride"}
    model, params, chosen = encoded(spec)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 5)
    kernels = set(mr.stochastic(params))
    assert kernels == {n for n in params if n.startswith("encoder.") and n.endswith(".weight")}
    assert len(kernels) == 4  # three convolutions and the dense layer to w (196 = 14 x 14)
    adapted = chosen.inner_loop(InnerLoop(0.1, 1), params).adapted
    network = {n for n in mr.posterior_mean(params) if n.startswith("net.")}
    assert adapted == frozenset(network) and network  # the whole MAML network, no encoder weight


def test_encoder_variant_kl_covers_the_encoder_kernels_only():
    spec = {"kind": "mlp", "in_features": 7, "hidden": [8], "out_features": 1}
    model, params, chosen = encoded(spec)
    assert model.encoder[-1].out_features == 5  # Yin et al.'s sinusoid dim_w
    kl = chosen.regulariser(params) / chosen.beta
    expected = sum(kl_divergence(Normal(params[n], params[mr.LOG_SIGMA + n].exp()), Normal(0.0, 1.0)).sum()
                   for n in ("encoder.0.weight", "encoder.2.weight"))
    torch.testing.assert_close(kl, expected)


def test_encoder_variant_trains_and_only_the_network_adapts(sinusoid):
    spec = {"kind": "mlp", "in_features": sinusoid.input_size, "hidden": [8], "out_features": 1}
    model, params, chosen = encoded(spec)
    trainer = MetaTrainer(model, params, TrainerConfig(REGRESSION, InnerLoop(0.05, 2), chosen, 0.01, 3, 0,
                                                       batched=False))
    summary = trainer.step(sinusoid)
    assert math.isfinite(summary["loss_post"]) and summary["regulariser"] > 0
