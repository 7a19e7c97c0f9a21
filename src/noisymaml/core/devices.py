"""Which device a run uses: `auto` takes the first CUDA device when there is one, else the CPU."""

from __future__ import annotations

import torch

from noisymaml.errors import NoisyMamlError


def resolve_device(name: str) -> torch.device:
    """`auto` = the first CUDA device when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NoisyMamlError(f"params.yaml: `device` = {name!r} but CUDA is not available here; "
                             "use auto or cpu")
    return torch.device(name)
