"""Faults injected into the file system, for tests of what a failed write leaves behind.

`full_disk`: the kernel refuses writes beyond a few bytes per file (RLIMIT_FSIZE, the error a
write gets is EFBIG; Python ignores the SIGXFSZ that comes with it), exactly where a full
disk makes a write fail. `read_only`: a folder where new files cannot be created, by its
permissions, or, for root whom permissions do not stop, by refusing os.open/os.mkdir there.
"""

from __future__ import annotations

import errno
import os
import resource
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def full_disk(limit: int = 64):
    """Within the block, no file of this process can grow beyond `limit` bytes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextmanager
def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch):
    """Within the block, nothing can be created in `folder` or below it (EACCES)."""
    folder = Path(folder).resolve()
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")] if path.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return

    def inside(path) -> bool:
        target = Path(os.path.abspath(path))
        return target == folder or folder in target.parents

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    real_open, real_mkdir = os.open, os.mkdir

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", guarded_open)
        patch.setattr(os, "mkdir", guarded_mkdir)
        yield
