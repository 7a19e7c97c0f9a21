"""The report stage on hand-made metrics and curves: table cells, missing methods, plots, errors."""

import copy
import csv
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from noisymaml.errors import DataError
from noisymaml.pipeline.params import read_params
from noisymaml.pipeline.paths import curve_path, metrics_path
from noisymaml.reporting.report import REPORT_FILE, align_curves, load_curves, load_metrics, write_report
from noisymaml.reporting.summary import write_summary

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = ("test", "test_feedback_tasks", "val", "train_tasks")
# Per method: test post-adaptation accuracy (omniglot) and MSE (sinusoid), distinct per row.
# fomaml is not in params' `methods`: a stale file from an earlier configuration.
OMNIGLOT_POST = {"maml": 0.5, "mr_maml_w": 0.55, "noisy_maml": 0.6, "noisy_maml_feedback": 0.7,
                 "noisy_maml_continued": 0.65, "fomaml": 0.45}
SINUSOID_POST = {"maml": 0.9, "mr_maml_w": 0.85, "noisy_maml": 0.8, "noisy_maml_continued": 0.7}  # feedback missing
METHODS = ["maml", "mr_maml_w", "noisy_maml", "noisy_maml_feedback", "noisy_maml_continued"]


def _params() -> dict:
    data = copy.deepcopy(read_params(ROOT / "params.yaml"))
    data["noise"]["sigma"] = 0.25
    data["omniglot"]["tasks"]["ways"] = 20
    data["methods"], data["noisy_methods"] = ["maml", "mr_maml_w"], ["maml"]
    data["feedback"]["method"] = "noisy_maml"
    return data


def _summary(group: str, post: float, keys: tuple[str, ...]) -> dict:
    """Offsets per group so each column's value is recognisable; pre is post - 0.3."""
    shift = GROUPS.index(group) * 0.01
    summary = {"tasks": 600 if group == "test" else 100}
    for key in keys:
        summary |= {f"{key}_pre": round(post - 0.3 + shift, 6), f"{key}_pre_ci95": 0.02,
                    f"{key}_post": round(post + shift, 6), f"{key}_post_ci95": 0.01}
    return summary


def _write_results(dataset: str, posts: dict[str, float], keys: tuple[str, ...]) -> None:
    for method, post in posts.items():
        path = metrics_path(dataset, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({group: _summary(group, post, keys) for group in GROUPS}))
        columns = ["iteration", *(f"train_{k}_{s}" for k in keys for s in ("pre", "post")),
                   *(f"val_{k}_post" for k in keys)]
        path = curve_path(dataset, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([it, *(post * it / 50 for _ in columns[1:])] for it in (25, 50))


def _write_all_results() -> None:
    _write_results("omniglot", OMNIGLOT_POST, ("loss", "acc"))
    _write_results("sinusoid", SINUSOID_POST, ("loss",))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _write_all_results()
    return tmp_path


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, str]:
    """One report over the hand-made results, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("written")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        _write_all_results()
        write_report(Path("reports"), _params())
    return root / "reports", (root / "reports" / REPORT_FILE).read_text()


def _row(report: str, label: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _section(report: str, dataset: str) -> str:
    return report.split(f"## {dataset}\n")[1].split("\n## ")[0]


def test_table_cells_per_method(written):
    _, report = written
    omniglot, sinusoid = _section(report, "omniglot"), _section(report, "sinusoid")
    assert _row(omniglot, "MAML") == [
        "MAML", "50.00 ± 1.00", "20.00 ± 2.00", "51.00 ± 1.00", "23.00 ± 2.00", "53.00 ± 1.00", "600"]
    assert _row(omniglot, "noisy MAML (sigma = 0.25)")[1] == "60.00 ± 1.00"
    assert _row(omniglot, "MR-MAML(W)")[1] == "55.00 ± 1.00"
    assert _row(omniglot, "noisy MAML + feedback")[1] == "70.00 ± 1.00"
    assert _row(omniglot, "noisy MAML, continued without feedback")[4] == "38.00 ± 2.00"
    assert _row(sinusoid, "noisy MAML (sigma = 0.25)")[1:3] == ["0.8000 ± 0.0100", "0.5000 ± 0.0200"]
    assert "Chance level (1/ways): 5.00." in omniglot
    assert "Chance level" not in sinusoid


def test_only_the_methods_params_name_are_reported(written):
    _, report = written
    assert "first-order MAML" not in report  # a stale fomaml file is on disk
    results = _section(report, "omniglot").split("Reported in the literature")[0]
    assert [line.split("|")[1].strip() for line in results.splitlines()
            if line.startswith("| ") and "±" in line] == [
        "MAML", "MR-MAML(W)", "noisy MAML (sigma = 0.25)", "noisy MAML + feedback",
        "noisy MAML, continued without feedback"]


def test_literature_figures_beside_a_reduced_setting(written):
    _, report = written
    omniglot, params = _section(report, "omniglot"), _params()
    for figure in ("| 7.8% |", "| 82.36% |", "| 95.8 ± 0.3% |", "arXiv 2405.12299", "Finn et al. 2017"):
        assert figure in omniglot
    assert "quoted, not reproduced" in omniglot
    assert f"{params['omniglot']['train']['iterations']} meta-iterations" in omniglot
    assert "a reduced setting" in omniglot
    assert "Reported in the literature" not in _section(report, "sinusoid")


def test_paper_scale_setting_is_not_called_reduced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params()
    params["omniglot"]["tasks"]["split"] = {"train": 1100, "val": 100, "test": 423}
    params["omniglot"]["train"]["iterations"] = 60000
    write_report(Path("reports"), params)
    omniglot = _section((tmp_path / "reports" / REPORT_FILE).read_text(), "omniglot")
    assert "(paper scale)" in omniglot and "reduced" not in omniglot


def test_report_states_settings(written):
    _, report = written
    params = _params()
    feedback = params["feedback"]
    assert f"- seed: {params['seed']}" in report
    assert f"sinusoid {params['sinusoid']['train']['iterations']}" in report
    assert "sigma = 0.25" in report and f"noise.where = {params['noise']['where']}" in report
    assert f"{feedback['iterations']} extra iterations" in report
    assert f"{feedback['tasks']} feedback tasks" in report
    assert "Yin et al.'s encoder variant" in report  # which MR-MAML(W) ran


def test_missing_method_is_reported_not_tabled(written):
    _, report = written
    sinusoid = _section(report, "sinusoid")
    assert "| noisy MAML + feedback |" not in sinusoid
    assert "Missing results (not in the table): noisy MAML + feedback " \
           "(`metrics/sinusoid/noisy_maml_feedback.json`)." in sinusoid
    assert "Missing learning curves: noisy MAML + feedback " \
           "(`plots/sinusoid/noisy_maml_feedback.csv`)." in sinusoid
    assert "Missing" not in _section(report, "omniglot")


def test_plots_are_pngs_linked_from_report(written):
    out_dir, report = written
    for name in ("sinusoid_curves.png", "sinusoid_test.png", "omniglot_curves.png", "omniglot_test.png"):
        assert (out_dir / "figures" / name).read_bytes()[:8] == PNG_MAGIC
        assert f"](figures/{name})" in report


def test_identical_inputs_give_identical_files(workdir, written):
    first, _ = written
    write_report(Path("again"), _params())
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(names) == 5
    assert names == sorted(p.relative_to("again") for p in Path("again").rglob("*") if p.is_file())
    assert all((first / n).read_bytes() == (Path("again") / n).read_bytes() for n in names)


def test_no_results_yet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_report(Path("reports"), _params())
    report = (tmp_path / "reports" / REPORT_FILE).read_text()
    assert "Missing results (not in the table): MAML (`metrics/sinusoid/maml.json`)" in report
    assert [p.name for p in (tmp_path / "reports").rglob("*") if p.is_file()] == [REPORT_FILE]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"test": {}, "train_tasks": {}}',
                                     '{"test": {"acc_post": 0.5}}'])
def test_malformed_metrics_name_the_file(workdir, content):
    metrics_path("omniglot", "noisy_maml").write_text(content)
    with pytest.raises(DataError, match="metrics/omniglot/noisy_maml.json"):
        load_metrics("omniglot", METHODS)


def test_non_finite_scores_are_refused_not_shown(workdir):
    group = {"acc_pre": 0.5, "acc_pre_ci95": 0.1, "acc_post": float("nan"), "acc_post_ci95": 0.1, "tasks": 8}
    metrics_path("omniglot", "noisy_maml").write_text(json.dumps({"test": group, "train_tasks": group}))
    with pytest.raises(DataError, match="noisy_maml.json: group `test` needs finite numbers"):
        load_metrics("omniglot", METHODS)


def test_malformed_curve_names_the_file(workdir):
    curve_path("sinusoid", "maml").write_text("iteration,val_loss_post\n1,0.5\n")
    with pytest.raises(DataError, match="plots/sinusoid/maml.csv"):
        load_curves("sinusoid", METHODS)


def test_resumed_curves_continue_noisy_maml(workdir):
    curves = align_curves(load_curves("omniglot", METHODS), "noisy_maml")
    assert curves["noisy_maml"]["iteration"] == [25.0, 50.0]
    assert curves["maml"]["iteration"] == [25.0, 50.0]
    assert curves["noisy_maml_feedback"]["iteration"] == [75.0, 100.0]
    assert curves["noisy_maml_continued"]["iteration"] == [75.0, 100.0]


def _stage_main():
    spec = importlib.util.spec_from_file_location("report_stage", ROOT / "stages" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_stage_writes_report_and_turns_data_errors_into_one_line(workdir):
    (workdir / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    main = _stage_main()
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 0, result.output
    assert (workdir / "reports" / REPORT_FILE).exists()
    metrics_path("sinusoid", "maml").write_text("{broken")
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2
    assert result.output.startswith("error: metrics/sinusoid/maml.json: not valid JSON")


# --- the summary stage: DVC's metrics and plots ---------------------------------------------

def test_summary_per_method_test_score_interval_and_memorisation(workdir):
    write_summary("omniglot", _params())
    summary = json.loads((workdir / "metrics" / "omniglot.json").read_text())["omniglot"]
    assert sorted(summary) == sorted(METHODS)  # the stale fomaml file is left out
    assert summary["maml"] == {"test": 0.5, "test_ci95": 0.01, "memorisation": pytest.approx(0.23)}
    assert summary["noisy_maml_feedback"]["test"] == 0.7
    write_summary("sinusoid", _params())
    sinusoid = json.loads((workdir / "metrics" / "sinusoid.json").read_text())["sinusoid"]
    assert sinusoid["maml"] == {"test": 0.9, "test_ci95": 0.01, "memorisation": pytest.approx(0.63)}
    assert "noisy_maml_feedback" not in sinusoid  # its file is missing


def test_summary_curves_are_one_long_table_with_feedback_runs_continuing(workdir):
    write_summary("omniglot", _params())
    with (workdir / "plots" / "omniglot.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["iteration", "method", "val_acc_post", "train_acc_pre"]
    assert [(r["method"], r["iteration"]) for r in rows] == [
        (m, str(i)) for m in METHODS for i in ((75, 100) if m.endswith(("_feedback", "_continued")) else (25, 50))]
    assert float(rows[1]["val_acc_post"]) == pytest.approx(0.5)  # maml at 50: 0.5 * 50 / 50


def test_summary_without_results_names_the_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no results of maml, .* in metrics/omniglot/ and plots/omniglot/"):
        write_summary("omniglot", _params())


def test_the_online_stream_is_a_table_only_when_present(workdir, written):
    _, batch = written
    assert "Online feedback" not in batch
    for variant, post in (("feedback", 0.75), ("continued", 0.65)):
        path = metrics_path("omniglot", f"noisy_maml_{variant}")
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps({**metrics, "online_stream": {**_summary("test", post, ("loss", "acc")),
                                                                 "tasks": 10}}))
    write_report(Path("reports"), _params())
    omniglot = _section((workdir / "reports" / REPORT_FILE).read_text(), "omniglot")
    assert "Online feedback (`feedback.mode: online`)" in omniglot
    assert _row(omniglot.split("Online feedback")[1], "noisy MAML + feedback") == [
        "noisy MAML + feedback", "75.00 ± 1.00", "45.00 ± 2.00", "10"]
    assert _row(omniglot.split("Online feedback")[1], "noisy MAML, continued without feedback")[1] == "65.00 ± 1.00"
    assert "Online feedback" not in _section((workdir / "reports" / REPORT_FILE).read_text(), "sinusoid")
