"""The default Omniglot data reproduces the committed episodes on a fresh clone: whether the
archives come from a download (a local HTTP server standing in for the official place) or from
the Makefile's local copy, `fetch@omniglot` and `episodes@omniglot` hash exactly as dvc.lock
records them, so every later stage starts from the files the committed numbers come from."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest
import yaml

from noisymaml.datasets import omniglot
from noisymaml.pipeline import steps
from project_copy import ROOT, copy_project, run

SHARED = ROOT.parent / "shared" / "data" / "omniglot"
SMALL = sorted(omniglot.ARCHIVE_SETS["small"])
STAGES = ("fetch@omniglot", "episodes@omniglot")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all((SHARED / name).is_file() for name in SMALL),
                                 reason=f"the small Omniglot archives are not in {SHARED}")]


def locked_outs(root: Path) -> dict[str, str]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: stages[name]["outs"][0]["md5"] for name in STAGES}


def download_from_local_server(root: Path, monkeypatch) -> None:
    """`fetch@omniglot` as a fresh clone with network runs it, the official place served locally."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler,
                                                                      directory=SHARED))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(omniglot, "DOWNLOAD_URL", f"http://127.0.0.1:{httpd.server_port}")
    monkeypatch.chdir(root)
    try:
        assert "small set, 2 verified archive(s)" in steps.fetch("omniglot")
    finally:
        httpd.shutdown()
        thread.join()


def copy_with_make(root: Path, monkeypatch) -> None:
    result = run(["make", "archives", f"OMNIGLOT_ARCHIVES={SHARED}"], root)
    assert result.stdout.count("copied") == len(SMALL)


@pytest.mark.parametrize("bring", [download_from_local_server, copy_with_make], ids=["download", "local-copy"])
def test_fresh_clone_rebuilds_the_committed_omniglot_episodes(tmp_path, monkeypatch, bring):
    root = tmp_path / "project"
    copy_project(root, yaml.safe_load((ROOT / "params.yaml").read_text()))
    run(["git", "init", "-q"], root)
    committed = locked_outs(root)
    assert not (root / "data" / "downloads" / "omniglot").exists()
    bring(root, monkeypatch)
    assert sorted(os.listdir(root / "data" / "downloads" / "omniglot")) == SMALL
    run(["dvc", "repro", "--single-item", *STAGES], root)
    assert locked_outs(root) == committed
    shutil.rmtree(root)
