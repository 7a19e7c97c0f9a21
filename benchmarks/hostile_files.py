"""Memory and time of refusing a hostile model file (a script, not a test).

Writes a model file whose weights are a deflated run of zeros (a few MB that torch.load would
inflate to `--gib` GiB in memory: torch.save never compresses, but torch.load reads compressed
entries), then loads it with `load_model` in a fresh process and prints the outcome, the wall
time and the process's peak resident memory, beside the peak of a process that only imports
the library (and, with --torch-load, of plain torch.load on the same file, for scale).

    PYTHONPATH=src python benchmarks/hostile_files.py --gib 2 --torch-load
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import click
import torch

SPEC = {"kind": "mlp", "in_features": 1, "hidden": [4], "out_features": 1}
MARKER = 123_457  # the weights' element count, replaced in the pickle by the inflated one
CHUNK = bytes(2**24)

MEASURE = """
import json, resource, sys, time
from pathlib import Path
import torch
from noisymaml.core.models import load_model
from noisymaml.errors import NoisyMamlError
started = time.perf_counter()
outcome = "loaded"
if sys.argv[1] == "torch.load":
    torch.load(sys.argv[2], weights_only=True)
elif sys.argv[1] == "load_model":
    try:
        load_model(Path(sys.argv[2]))
    except NoisyMamlError as err:
        outcome = f"refused: {err}"
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - started,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_inflating_model(path: Path, inflated_bytes: int) -> None:
    """A model file whose one weight tensor holds `inflated_bytes` of zeros, deflated."""
    numel = inflated_bytes // 4
    if numel >= 2**31:
        raise click.BadParameter("at most 7 GiB (the element count must fit the pickle's 4-byte integer)")
    plain = io.BytesIO()
    torch.save({"spec": SPEC, "params": {"w": torch.zeros(MARKER)}, "info": {}}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for entry in source.infolist():
            if entry.filename.endswith("/data/0"):
                with bomb.open(entry.filename, "w", force_zip64=True) as out:
                    for start in range(0, numel * 4, len(CHUNK)):
                        out.write(CHUNK[: min(len(CHUNK), numel * 4 - start)])
                continue
            data = source.read(entry)
            if entry.filename.endswith("data.pkl"):
                data = data.replace(struct.pack("<i", MARKER), struct.pack("<i", numel))
            bomb.writestr(entry.filename, data)


def measure(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout)


@click.command()
@click.option("--gib", default=2.0, show_default=True, help="Size the weights inflate to, in GiB.")
@click.option("--torch-load", is_flag=True, help="Also time plain torch.load (it inflates the file).")
def main(gib: float, torch_load: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hostile.pt"
        write_inflating_model(path, int(gib * 2**30))
        print(f"model file: {path.stat().st_size / 2**20:.1f} MiB on disk, weights of {gib:g} GiB "
              "once inflated")
        runs = ["import only", "load_model", *(["torch.load"] if torch_load else [])]
        for name in runs:
            figures = measure(name, str(path))
            print(f"{name:12s} peak {figures['peak_mib']:6.0f} MiB, {figures['seconds']:6.2f} s"
                  + (f"  ({figures['outcome']})" if name == "load_model" else ""))


if __name__ == "__main__":
    main()
