"""Networks for meta-learning, each rebuilt from a small plain-data spec stored with its weights.

The spec (a dict of str/int) travels in the model file so that `predict` and later stages can
rebuild the network and check the input shape without trusting pickled code. A model file
holding more than MAX_MODEL_BYTES is refused before it is read.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from noisymaml.core import Params
from noisymaml.core.files import MIB, load_file, save_atomic, tensors
from noisymaml.errors import DataError

# The largest model params.yaml ships, MR-MAML(W)'s Omniglot Conv-4 (117k weights and as many
# posterior scales), takes 0.94 MB: the limit leaves room for networks 250 times larger.
MAX_MODEL_BYTES = 256 * MIB


class MLP(nn.Module):
    """Fully connected ReLU network (the sinusoid regressor: 2 x 40 hidden units)."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int):
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def feature_layers(self) -> list[list[str]]:
        """Parameter names of each hidden layer, input first (the output layer is the head)."""
        return _layers_of(self, [f"net.{i}" for i, m in enumerate(self.net[:-1])
                                 if isinstance(m, nn.Linear)])


def conv_block(n_in: int, n_out: int, downsample: str) -> nn.Sequential:
    """3x3 conv, batch norm on batch statistics (no running stats, as in MAML), ReLU, downsample."""
    stride = 2 if downsample == "stride" else 1  # maxpool / none: stride 1
    layers: list[nn.Module] = [
        nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1),
        nn.BatchNorm2d(n_out, track_running_stats=False),
        nn.ReLU(),
    ]
    if downsample == "maxpool":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The Conv-4 of Finn et al. 2017: four conv blocks and a linear head."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, filters: int = 64,
                 downsample: str = "stride"):
        super().__init__()
        self.features = nn.Sequential(
            *(conv_block(in_channels if i == 0 else filters, filters, downsample) for i in range(4)),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_features = self.features(torch.zeros(2, in_channels, image_size, image_size)).shape[1]
        self.head = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def feature_layers(self) -> list[list[str]]:
        """Parameter names of each conv block (conv and batch norm), input first."""
        return _layers_of(self, [f"features.{i}" for i in range(4)])


class EncodedNet(nn.Module):
    """An encoder in front of a network that reads its output (Yin et al. 2020's MR-MAML(W)):
    the encoder maps an input to a `dim_w`-vector w, the network maps w to the prediction.

    For images the encoder is their conv stack (32, 48 filters at stride 2, max-pool, 64 at
    stride 2, dense to dim_w) and w, reshaped to a sqrt(dim_w)^2 one-channel image, goes through
    four stride-1 conv blocks, a spatial mean and a linear head; for vectors the encoder is one
    hidden layer of 100 ReLU units and the network the dataset's MLP on w.
    """

    def __init__(self, base: dict, dim_w: int):
        super().__init__()
        self.encoder = (_image_encoder(base, dim_w) if base["kind"] == "conv4"
                        else nn.Sequential(nn.Linear(base["in_features"], 100), nn.ReLU(), nn.Linear(100, dim_w)))
        self.net = (_w_conv_net(base, dim_w) if base["kind"] == "conv4"
                    else MLP(dim_w, base["hidden"], base["out_features"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(x))

    def encoder_kernels(self) -> list[str]:
        """The encoder's weight tensors (conv and dense kernels, no biases)."""
        return [f"encoder.{name}.weight" for name, module in self.encoder.named_children()
                if isinstance(module, (nn.Conv2d, nn.Linear))]


class _Unflatten(nn.Module):
    """w [B, side^2] -> a one-channel image [B, 1, side, side]."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(w.shape[-1])
        return w.view(-1, 1, side, side)


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def _image_encoder(base: dict, dim_w: int) -> nn.Sequential:
    layers = nn.Sequential(nn.Conv2d(base["in_channels"], 32, 3, stride=2, padding=1), nn.ReLU(),
                           nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        size = layers(torch.zeros(2, base["in_channels"], base["image_size"], base["image_size"])).shape[1]
    return nn.Sequential(*layers, nn.Linear(size, dim_w))


def _w_conv_net(base: dict, dim_w: int) -> nn.Sequential:
    if math.isqrt(dim_w) ** 2 != dim_w:
        raise ValueError(f"dim_w is {dim_w}; an image encoder needs a square number (e.g. 196 = 14 x 14)")
    filters = base["filters"]
    blocks = [conv_block(1 if i == 0 else filters, filters, "none") for i in range(4)]
    return nn.Sequential(_Unflatten(), *blocks, _SpatialMean(), nn.Linear(filters, base["n_classes"]))


def _layers_of(model: nn.Module, prefixes: list[str]) -> list[list[str]]:
    names = [name for name, _ in model.named_parameters()]
    return [[n for n in names if n.startswith(prefix + ".")] for prefix in prefixes]


def build_model(spec: dict) -> nn.Module:
    """Rebuild a network from its spec, e.g. {"kind": "conv4", "in_channels": 1, ...}."""
    kind = spec["kind"]
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "mlp":
        return MLP(**args)
    if kind == "conv4":
        return Conv4(**args)
    if kind == "encoded":
        return EncodedNet(**args)
    raise ValueError(f"unknown model kind {kind!r}")


def init_params(model: nn.Module, seed: int) -> Params:
    """Deterministic initial meta-parameters for a given seed (independent of global RNG use)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def save_model(path: Path, spec: dict, params: Params, info: dict, trainer: dict | None = None) -> None:
    """A model file: the network's spec, its meta-parameters (on the CPU), plain-data info (how
    meta-test adapts, how images are prepared) and the trainer's state, so that training can
    go on exactly where it stopped."""
    payload = {"spec": spec, "params": {k: v.cpu() for k, v in params.items()}, "info": info}
    save_atomic(payload if trainer is None else {**payload, "trainer": trainer}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Params, dict]:
    """Rebuild the network and its meta-parameters from a model file (no code is unpickled)."""
    return rebuild_model(path, load_file(path, MAX_MODEL_BYTES), device)


def rebuild_model(path: Path, saved: object,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, Params, dict]:
    """The network and meta-parameters of a loaded model file; DataError naming `path` when
    its spec does not build or its parameters do not fit the network.

    Besides the network's own parameters a file may hold a method's extra meta-parameters,
    named `<kind>/<parameter>` (e.g. MR-MAML(W)'s `log_sigma/...`): network names have no "/".
    """
    if not isinstance(saved, dict) or not {"spec", "params"} <= set(saved):
        raise DataError(f"{path}: not a noisymaml model file (expected keys spec and params)")
    try:
        model = build_model(saved["spec"]).to(device)
    except Exception as err:  # a spec whose values the network rejects (TypeError, ValueError...)
        raise DataError(f"{path}: not a usable noisymaml model ({type(err).__name__}: {err})") from None
    params = tensors(path, saved["params"], "params")
    expected = dict(model.named_parameters())
    if {name for name in params if "/" not in name} != expected.keys():
        raise DataError(f"{path}: parameters do not match its model spec {saved['spec']}")
    for name, parameter in expected.items():
        if params[name].shape != parameter.shape:
            raise DataError(f"{path}: parameter {name} has shape {tuple(params[name].shape)}, but its "
                            f"model spec needs {tuple(parameter.shape)}")
        if not params[name].is_floating_point():
            raise DataError(f"{path}: parameter {name} is not a floating-point tensor")
    return model, {k: v.to(device) for k, v in params.items()}, saved["spec"]
