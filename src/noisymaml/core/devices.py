"""Which device a run uses: `auto` takes a CUDA device when there is one, else the CPU.

On a machine with several GPUs, `dvc queue start -j N` runs N experiments at once, each stage a
process of its own. A stage asks with `exclusive=True`: it then takes the first GPU that no
other such process holds, by an exclusive `flock` on a lock file per GPU index. The lock lives
as long as the process's open file, so the operating system releases it when the process ends,
however it ends (a crash or SIGKILL too); nothing is left to clean up. When every GPU is held,
the stage waits for one. Indices are torch's (within CUDA_VISIBLE_DEVICES): runs that share a
lock folder must see the same GPUs.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from noisymaml.errors import NoisyMamlError

LOCKS_ENV = "NOISYMAML_GPU_LOCKS"  # the lock folder, if not <temp dir>/noisymaml-gpu-locks
_held: dict[Path, int] = {}  # lock file -> open descriptor, kept for the life of the process


def resolve_device(name: str, exclusive: bool = False) -> torch.device:
    """`auto` = a CUDA device when present, else the CPU. With `exclusive`, `auto` takes the
    first GPU no other exclusive process holds (see the module docstring); named devices
    (`cuda:N`, `cpu`) are taken as they are."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if not exclusive:
            return torch.device("cuda")
        index = claim_gpu(range(torch.cuda.device_count()), lock_folder())
        torch.cuda.set_device(index)  # stray allocations and the CUDA context land there too
        return torch.device("cuda", index)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NoisyMamlError(f"params.yaml: `device` = {name!r} but CUDA is not available here; "
                             "use auto or cpu")
    return torch.device(name)


def lock_folder() -> Path:
    return Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / "noisymaml-gpu-locks")


def claim_gpu(indices: Sequence[int], folder: Path, poll_seconds: float = 5.0,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> int:
    """The first of `indices` whose lock in `folder` this process holds or can take, waiting
    (polling) while other processes hold them all. The lock stays until the process ends."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"cuda{index}.lock" for index in indices]
    for index, path in zip(indices, paths):
        if path in _held:
            return index
    waiting = False
    while True:
        for index, path in zip(indices, paths):
            if _try_lock(path):
                return index
        if not waiting:
            log(f"all {len(paths)} GPU(s) are held by other noisymaml runs (locks in {folder}); "
                "waiting for one to finish")
            waiting = True
        time.sleep(poll_seconds)


def _try_lock(path: Path) -> bool:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return False
    _held[path] = descriptor
    return True
