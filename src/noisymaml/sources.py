"""Each dataset's own files, as the fetch stage sees them: checked (Omniglot: or downloaded)
before the episodes stage decodes them. Only as much is read as catches a wrong layout."""

from __future__ import annotations

from pathlib import Path

from noisymaml import dclaw, miniimagenet, omniglot
from noisymaml.params import FetchParams

SINUSOID_NOTE = ("The sinusoid tasks are generated from params.yaml (sinusoid.tasks): there is "
                 "nothing to download.\n")


def fetch(dataset: str, params: FetchParams, folder: Path) -> str:
    """Check (Omniglot: or download) a dataset's files in `folder`; returns what was found."""
    if dataset == "sinusoid":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "README.txt").write_text(SINUSOID_NOTE)
        return "generated tasks, nothing to fetch"
    if dataset == "omniglot":
        archives = omniglot.fetch_archives(folder, params.download)
        return f"{len(archives)} verified archive(s): " + ", ".join(a.name for a in archives)
    if dataset == "miniimagenet":
        return f"{miniimagenet.verify(folder, params.allow_pickle)} layout"
    return f"objects {dclaw.objects_in(folder)}"
