"""dvc.yaml: every stage depends on the library folders (and top-level modules) its script
imports, directly or not, and no training stage depends on the reporting or command code.
DVC's metrics are the per-dataset summaries alone, and its plots the top-level comparisons.

A module outside `deps` would let DVC serve a cached result computed by old code.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from noisymaml.reporting.report import measure_of
from noisymaml.reporting.summary import curve_columns, curves_path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """The file of a dotted noisymaml module name (a package's __init__.py), if it exists."""
    path = SRC.joinpath(*name.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imported_modules(path: Path) -> set[str]:
    """noisymaml modules a file imports, anywhere in it (`from noisymaml.x.y import z` gives
    noisymaml.x.y and, where z is a module, noisymaml.x.y.z), plus registry modules that
    a package imports by name (`MODULES`)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("noisymaml"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("noisymaml"))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODULES" for t in node.targets):
            package = ".".join(path.relative_to(SRC).parent.parts)
            found.update(f"{package}.{c.value}" for c in ast.walk(node.value) if isinstance(c, ast.Constant))
    parents = {".".join(name.split(".")[:i]) for name in found for i in range(2, name.count(".") + 1)}
    return {name for name in found | parents if module_file(name)}


def closure(script: Path) -> set[Path]:
    """Every library file a script runs, as paths relative to the project root."""
    seen: set[str] = set()
    todo = imported_modules(script)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= imported_modules(module_file(name))
    return {module_file(name).relative_to(ROOT) for name in seen}


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def stages() -> dict[str, dict]:
    return {name: spec.get("do", spec) for name, spec in dvc_yaml()["stages"].items()}


def covered(path: Path, deps: set[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_its_imports(name):
    spec = stages()[name]
    script = next(token for token in spec["cmd"].split() if token.startswith("stages/"))
    deps = set(spec["deps"])
    assert script in deps
    missing = sorted(str(p) for p in closure(ROOT / script) if not covered(p, deps))
    assert not missing, f"stage {name} imports {missing} but its deps do not cover them"


@pytest.mark.parametrize("name", sorted(set(stages()) - {"summary", "report"}))
def test_no_training_stage_depends_on_reporting_or_commands(name):
    deps = set(stages()[name]["deps"])
    for path in ("src/noisymaml/reporting/report.py", "src/noisymaml/cli.py", "src/noisymaml/predict.py"):
        assert not covered(Path(path), deps), f"{name} would re-run when {path} changes"


def test_the_closure_follows_indirect_imports_and_registries():
    train = closure(ROOT / "stages" / "train.py")
    # train.py imports pipeline.steps, which imports core.training, which imports core.noise
    assert Path("src/noisymaml/core/noise.py") in train
    # the registries import every method and dataset module by name
    assert Path("src/noisymaml/methods/mr_maml_w.py") in train
    assert Path("src/noisymaml/datasets/dclaw.py") in train
    assert not any("reporting" in p.parts for p in train)


def test_dvc_metrics_are_the_per_dataset_summaries_alone():
    declared = {name: [next(iter(m)) if isinstance(m, dict) else m for m in spec.get("metrics", [])]
                for name, spec in stages().items()}
    assert {name: paths for name, paths in declared.items() if paths} == {"summary": ["metrics/${item}.json"]}


def test_no_stage_declares_plots_of_its_own():
    assert [name for name, spec in stages().items() if "plots" in spec] == []


def top_level_plots() -> dict[str, dict | None]:
    return {k: v for entry in dvc_yaml()["plots"] for k, v in
            (entry.items() if isinstance(entry, dict) else [(entry, None)])}


@pytest.mark.parametrize("dataset", yaml.safe_load((ROOT / "params.yaml").read_text())["datasets"])
def test_every_default_dataset_has_both_comparison_charts(dataset):
    charts = [spec for spec in top_level_plots().values() if spec and curves_path(dataset).as_posix() in spec["y"]]
    assert sorted(spec["y"][curves_path(dataset).as_posix()] for spec in charts) == sorted(
        curve_columns(measure_of(dataset)))
    for spec in charts:
        assert spec["x"] == "iteration" and spec["template"] == "methods"
        assert spec["title"].startswith(f"{dataset}: ") and spec["y_label"]


def test_the_template_colours_by_method_and_the_report_figures_are_image_plots():
    template = json.loads((ROOT / ".dvc" / "plots" / "methods.json").read_text())
    assert template["encoding"]["color"]["field"] == "method"
    assert template["encoding"]["strokeDash"]["field"] == "rev"
    assert "reports/figures" in top_level_plots()
