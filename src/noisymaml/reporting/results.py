"""A sweep's results as data: the finished experiments, kept in a committed file.

`dvc exp show` and the experiments' commits exist only where the experiments ran (or were
pulled to). `noisymaml sweep save` copies what the sweep report reads from them (each finished
experiment's name, commit, params.yaml values and metrics files, and the same of its baseline
commit) into reports/results/<dataset>.json. Committed, that file lets any fresh clone rebuild
the report: `as_document` turns it back into the `dvc exp show --json` document the collector
reads, so a report built from the file equals the one built from the experiments.

Records are keyed by commit: saving again replaces a record by its new copy instead of adding
it twice, so slices of a long study run on different days (or machines) accumulate in one
file. Failed experiments are kept too (name, params, error; keyed by name), so the report
still lists them; queued and running ones are not kept.

No torch or matplotlib here: the command line imports it to save.
"""

from __future__ import annotations

import json
from pathlib import Path

from noisymaml.core.files import write_json
from noisymaml.errors import DataError

FORMAT = "noisymaml-results/1"
RESULTS_DIR = Path("reports") / "results"
NOT_SHOWN = "not the JSON of `dvc exp show --json`"


def results_path(dataset: str) -> Path:
    return RESULTS_DIR / f"{dataset}.json"


def empty_results(dataset: str) -> dict:
    return {"format": FORMAT, "dataset": dataset, "baselines": {}, "experiments": [], "failed": []}


def _record(rev: dict) -> dict:
    """What the report reads of one commit: its name, params.yaml values and metrics files."""
    data = rev.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = {path: m["data"] for path, m in (data.get("metrics") or {}).items() if "data" in m}
    return {"name": rev.get("name") or rev["rev"], "params": params, "metrics": metrics}


def _state(experiment: dict) -> str:
    """success (finished with results), failed, or another state (queued, running)."""
    rev = experiment["revs"][0]
    state = (experiment.get("executor") or {"state": "success"}).get("state")
    if state == "failed" or rev.get("error"):
        return "failed"
    return state if rev.get("data") else "empty"


def records_of(doc: list, dataset: str) -> dict:
    """The finished experiments of a `dvc exp show --json` document (with the per-method files
    already added from their commits) and their baselines, as a results object."""
    if not isinstance(doc, list) or not all(isinstance(baseline, dict) for baseline in doc):
        raise DataError(f"{NOT_SHOWN} (expected a list of baseline objects)")
    results = empty_results(dataset)
    try:
        for baseline in doc:
            experiments = baseline.get("experiments") or []
            finished = [exp["revs"][0] for exp in experiments if _state(exp) == "success"]
            failed = [exp["revs"][0] for exp in experiments if _state(exp) == "failed"]
            if not finished + failed or baseline.get("rev") in (None, "workspace"):
                continue
            results["baselines"][baseline["rev"]] = _record(baseline)
            results["experiments"] += [{"commit": rev["rev"], "baseline": baseline["rev"], **_record(rev)}
                                       for rev in finished]
            results["failed"] += [{"baseline": baseline["rev"], **_record(rev), "error": str(rev.get("error")
                                                                                           or "failed")}
                                  for rev in failed]
    except (AttributeError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"{NOT_SHOWN} ({type(err).__name__}: {err} in an experiment)") from None
    return results


def merge(held: dict, new: dict) -> tuple[dict, int]:
    """`held` with `new`'s baselines, experiments and failures: a record already held (same
    experiment commit; a failure: same name) is replaced where it stands, others are appended.
    Returns it and the number of experiments added."""
    experiments, added = _merged(held["experiments"], new["experiments"], "commit")
    failed, _ = _merged(held["failed"], new["failed"], "name")
    return ({**held, "baselines": {**held["baselines"], **new["baselines"]},
             "experiments": experiments, "failed": failed}, added)


def _merged(held: list[dict], new: list[dict], key: str) -> tuple[list[dict], int]:
    merged = list(held)
    index = {record[key]: i for i, record in enumerate(merged)}
    for record in new:
        if record[key] in index:
            merged[index[record[key]]] = record
        else:
            index[record[key]] = len(merged)
            merged.append(record)
    return merged, len(merged) - len(held)


def load_results(path: Path, dataset: str) -> dict:
    """A results file of `dataset`; a missing, broken or other file is a DataError naming it."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such results file (write it with `noisymaml sweep save "
                        f"--dataset {dataset}`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a valid results file ({err})") from None
    problem = _shape_problem(results, dataset)
    if problem:
        raise DataError(f"{path}: not a valid results file ({problem})")
    return results


def _shape_problem(results: object, dataset: str) -> str | None:
    """What is wrong with a results object (None: nothing)."""
    if not isinstance(results, dict) or results.get("format") != FORMAT:
        return f"expected an object with \"format\": \"{FORMAT}\""
    if results.get("dataset") != dataset:
        return f"it holds dataset {results.get('dataset')!r}, not {dataset!r}"
    baselines, experiments, failed = (results.get(key) for key in ("baselines", "experiments", "failed"))
    if not isinstance(baselines, dict) or not isinstance(experiments, list) or not isinstance(failed, list):
        return "expected \"baselines\" as an object, \"experiments\" and \"failed\" as lists"
    records = [*baselines.items(), *((e.get("commit") if isinstance(e, dict) else None, e) for e in experiments)]
    for key, record in records:
        if not (isinstance(record, dict) and isinstance(key, str) and isinstance(record.get("name"), str)
                and isinstance(record.get("params"), dict) and isinstance(record.get("metrics"), dict)):
            return f"record {key!r} needs a commit, a name, params and metrics"
    if not all(isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("params"), dict)
               for f in failed):
        return "every failed experiment needs a name and params"
    unknown = [r.get("name") for r in [*experiments, *failed] if r.get("baseline") not in baselines]
    return f"experiment {unknown[0]} names no saved baseline" if unknown else None


def save_results(path: Path, doc: list, dataset: str) -> tuple[int, int]:
    """Merge the document's finished experiments into the results file at `path` (created when
    absent). Returns (experiments added, experiments the file now holds)."""
    held = load_results(path, dataset) if Path(path).exists() else empty_results(dataset)
    merged, added = merge(held, records_of(doc, dataset))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(path), merged)
    return added, len(merged["experiments"])


def as_document(results: dict) -> list:
    """The results as the `dvc exp show --json` document they were saved from (finished
    experiments only, in the order saved, grouped under their baselines in the order the
    experiments first name them)."""
    def rev(commit: str, record: dict, error: str | None = None) -> dict:
        return {"rev": commit, "name": record["name"], "error": error, "data": {
            "params": {"params.yaml": {"data": record["params"]}},
            "metrics": {path: {"data": content} for path, content in record.get("metrics", {}).items()}}}

    def experiments(commit: str) -> list[dict]:
        return ([{"name": exp["name"], "executor": {"state": "success"}, "revs": [rev(exp["commit"], exp)]}
                 for exp in results["experiments"] if exp["baseline"] == commit]
                + [{"name": f["name"], "executor": {"state": "failed"},
                    "revs": [rev(f["name"], f, f.get("error") or "failed")]}
                   for f in results["failed"] if f["baseline"] == commit])

    order = dict.fromkeys(r["baseline"] for r in [*results["experiments"], *results["failed"]])
    return [{**rev(commit, results["baselines"][commit]), "experiments": experiments(commit)}
            for commit in order]
