"""Shared fixtures: tiny sinusoid problems, tiny trainers and tiny labelled image pools.

Everything here is small enough for a CPU: an MLP with one hidden layer of 8 units, meta-batches
of 4 tasks, a handful of iterations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisymaml.core.maml import REGRESSION, InnerLoop
from noisymaml.core.models import MLP, init_params
from noisymaml.core.noise import GradientNoise
from noisymaml.core.training import MetaTrainer, TrainerConfig
from noisymaml.datasets.sinusoid import SinusoidNME, SinusoidTasks
from noisymaml.methods.maml import MAML

ROOT = Path(__file__).resolve().parents[1]

# Pixel layout of the synthetic image pools (see `class_images`).
SIZE = 5
CENTRE = SIZE // 2
MARKER = 250
MARKER_AT = (0, 1)  # not on a symmetry axis: every quarter turn moves it somewhere else


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the tensors here are tiny, and on a busy 2-core machine thread
    synchronisation, not arithmetic, would dominate (several times slower with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def sinusoid_spec() -> SinusoidTasks:
    return SinusoidTasks(bins=6, train_bins=4, amp_min=0.5, amp_max=3.0, x_range=5.0,
                         support=5, query=5, label_noise=0.1, test_support=3, test_query=7,
                         test_episodes=4, val_episodes=4, feedback_episodes=2)


@pytest.fixture
def sinusoid(sinusoid_spec) -> SinusoidNME:
    return SinusoidNME(sinusoid_spec)


@pytest.fixture
def make_trainer(sinusoid):
    """Factory for a small sinusoid MetaTrainer on the CPU."""
    def make(noise: GradientNoise = GradientNoise(), seed: int = 0, *, init_seed: int = 0,
             first_order: bool = False, batched: bool = False, meta_batch: int = 4,
             hidden: tuple[int, ...] = (8,), inner_steps: int = 2, inner_lr: float = 0.05,
             meta_lr: float = 0.01) -> MetaTrainer:
        model = MLP(sinusoid.input_size, list(hidden), 1)
        params = init_params(model, init_seed)
        return MetaTrainer(model, params, TrainerConfig(
            REGRESSION, InnerLoop(inner_lr, inner_steps, first_order), MAML(), meta_lr, meta_batch, seed,
            noise=noise, batched=batched))
    return make


@pytest.fixture
def class_images():
    """Factory for a uint8 pool [classes, drawers, 1, SIZE, SIZE] whose pixels spell out their origin.

    Every pixel of image (c, d) is c, except the centre pixel (100 + d, the drawer) and one
    off-axis marker pixel (MARKER) that shows how far the image has been turned. The corners
    and the centre are unchanged by quarter turns, so class and drawer read back after rotation.
    """
    def make(n_classes: int = 12, drawers: int = 6) -> torch.Tensor:
        assert n_classes < 100 and 100 + drawers < MARKER
        images = torch.arange(n_classes, dtype=torch.uint8).view(-1, 1, 1, 1, 1).repeat(
            1, drawers, 1, SIZE, SIZE)
        images[:, :, 0, CENTRE, CENTRE] = 100 + torch.arange(drawers, dtype=torch.uint8)
        images[:, :, 0, MARKER_AT[0], MARKER_AT[1]] = MARKER
        return images
    return make


def decode_pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float task images [..., 1, H, W] -> (class, drawer) per image, read from the pixels."""
    values = (x * 255).round().long()
    return values[..., 0, 0, 0], values[..., 0, CENTRE, CENTRE] - 100


def quarter_turns(x: torch.Tensor) -> torch.Tensor:
    """How many quarter turns (0..3) each image [..., 1, H, W] carries, from its marker pixel."""
    base = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    base[MARKER_AT] = True
    marks = (x * 255).round().long()[..., 0, :, :] == MARKER
    turns = torch.full(marks.shape[:-2], -1, dtype=torch.long)
    for k in range(4):
        turns[(marks == base.rot90(k)).flatten(-2).all(-1)] = k
    assert (turns >= 0).all(), "an image carries no recognisable marker"
    return turns


@pytest.fixture(scope="session")
def pixels():
    """The decoders above, for test modules (fixtures keep them importable without sys.path tricks)."""
    return decode_pixels, quarter_turns
