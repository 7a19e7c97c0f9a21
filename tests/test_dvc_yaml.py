"""dvc.yaml lists, for every stage, each library module its script imports (directly or not).

A module missing from `deps` would let DVC serve a cached result computed by old code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "noisymaml"


def imported_modules(path: Path) -> set[str]:
    """noisymaml modules imported by a file: `from noisymaml.x import ...` and `from noisymaml import x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("noisymaml"):
            if node.module == "noisymaml":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("noisymaml."))
    return {name for name in found if (LIBRARY / f"{name}.py").exists()}


def closure(script: Path) -> set[str]:
    seen: set[str] = set()
    todo = imported_modules(script)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= imported_modules(LIBRARY / f"{name}.py")
    return {f"src/noisymaml/{name}.py" for name in seen}


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in raw.items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_its_imports(name):
    spec = stages()[name]
    script = spec["cmd"].split()[2]
    deps = set(spec["deps"])
    assert script in deps
    missing = closure(ROOT / script) - deps
    assert not missing, f"stage {name} imports {sorted(missing)} but does not list them in deps"


def test_the_closure_follows_indirect_imports():
    # train.py imports pipeline, which imports training, which imports noise
    assert "src/noisymaml/noise.py" in closure(ROOT / "stages" / "train.py")
    assert "src/noisymaml/report.py" not in closure(ROOT / "stages" / "train.py")
