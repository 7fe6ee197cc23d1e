"""``ml-platform reproduce``: a model version rebuilt from its manifest and retrained, on the
embedded profile; what it reports when an input or a record changed; and the comparisons in lib."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest

from ml_platform import cli
from ml_platform.defs.ml.models import MODEL_NAME
from ml_platform.lib import paths
from ml_platform.lib.reproduce import compare_frames, compare_metrics, compare_versions
from ml_platform.lib.store import LocalStore
from ml_platform_tests.feature_helpers import (
    SERVED_WEEK,
    build_served_platform,
    embedded_platform,
    land_and_ingest,
    metadata,
    mlflow_client,
)

WEEK = SERVED_WEEK  # labels the days up to 2024-02-03
TAMPERED_DAY = "2024-01-10"
#: Two short candidates: every reproduction retrains, so the search is kept small. Not the default
#: space, so the run's recorded space (not the default) must be what the reproduction searches.
SMALL_SPACE = {
    "model__learning_rate": [0.1, 0.2],
    "model__max_leaf_nodes": [15],
    "model__l2_regularization": [0.0],
    "model__max_iter": [40],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Version 1 of failure_model, champion, trained on the week's set (built once)."""
    work = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        embedded_platform(mp, work)
        # A tiny lake: the quality gate is not what is tested here.
        result = build_served_platform(instance, work, param_space=SMALL_SPACE, n_iter=2)
        yield SimpleNamespace(
            work=work,
            instance=instance,
            store=LocalStore(work / "lake"),
            run_id=metadata(result, "failure_model")["mlflow_run_id"],
        )


def reproduce(out: Path, *args: str) -> tuple[int, dict | None]:
    """``ml-platform reproduce`` as a user runs it; its exit code and JSON report."""
    code = cli.main(["reproduce", "--out", str(out), *args])
    reports = sorted(out.glob("*/report.json"))
    return code, json.loads(reports[-1].read_text()) if reports else None


def live_state(trained) -> dict:
    """Every object of the lake and file of the Feast repo's state with its content hash; the
    MLflow runs, model versions and aliases."""
    client = mlflow_client()
    feast_data = trained.work / "feature_repo" / "data"
    return {
        "lake": {
            o.key: hashlib.sha256(trained.store.read_bytes(o.key)).hexdigest()
            for o in trained.store.list("")
        },
        "feast": {
            str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(feast_data.rglob("*"))
            if f.is_file()
        },
        "runs": sorted(
            r.info.run_id
            for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        ),
        "versions": sorted(v.version for v in client.search_model_versions(f"name='{MODEL_NAME}'")),
        "aliases": client.get_registered_model(MODEL_NAME).aliases,
    }


@pytest.mark.integration
def test_a_version_is_rebuilt_and_retrained_identically_without_changing_anything(
    trained, tmp_path, capsys
):
    before = live_state(trained)
    code, report = reproduce(tmp_path, "--version", "1")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "REPRODUCED" in out and f"report: {report['report']}" in out
    assert report["reproduced"] and report["mismatches"] == [] and report["week"] == WEEK
    assert report["run_id"] == trained.run_id
    # Every metric the run logged (but its timing) came out the same.
    logged = set(mlflow_client().get_run(trained.run_id).data.metrics) - {"train_seconds"}
    assert {m["metric"] for m in report["metrics"]} == logged
    assert all(m["status"] == "identical" for m in report["metrics"]), report["metrics"]
    assert {m["metric"]: m["abs_diff"] for m in report["metrics"]}["holdout_f1"] <= 1e-6
    assert report["training_set"]["identical"] and report["holdout"]["identical"]
    assert report["params"]["same"] and report["predictions"]["identical"]
    checks = report["checks"]
    assert all(c["same"] for c in checks["code_versions"].values())
    assert checks["registry_hash"]["same"] and checks["features"]["same"]
    days = checks["data_versions"]["assets"]["daily_aggregates"]
    assert days["checked"] == 34 and days["changed"] == days["missing"] == []
    # Written beside the report only: no object, run, version or alias changed.
    assert (tmp_path / Path(report["report"]).parent.name / "training_set.parquet").is_file()
    after = live_state(trained)
    assert after == before and before["feast"]
    assert {k: str(v) for k, v in before["aliases"].items()} == {"champion": "1"}


@pytest.mark.integration
def test_nothing_to_reproduce_is_a_usage_error(trained, tmp_path, capsys):
    assert reproduce(tmp_path, "--version", "99") == (2, None)
    assert f"{MODEL_NAME} has no version 99" in capsys.readouterr().err
    manifest = trained.store.root / paths.training_manifest_object(WEEK)
    hidden = manifest.with_suffix(".hidden")
    manifest.rename(hidden)
    try:
        assert reproduce(tmp_path, "--version", "1") == (2, None)
    finally:
        hidden.rename(manifest)
    err = capsys.readouterr().err.strip()
    assert "no training-set manifest for week 2024-01-29" in err and "\n" not in err


@pytest.mark.integration
def test_a_rewritten_day_of_gold_aggregates_is_named(trained, tmp_path, capsys):
    gold = trained.store.root / paths.aggregates_object(TAMPERED_DAY)
    original = gold.read_bytes()
    day = pd.read_parquet(gold)
    for column in [c for c in day.columns if c.startswith("vibration_")]:
        day[column] = day[column] * 3
    day.to_parquet(gold, index=False)
    try:
        code, report = reproduce(tmp_path, "--version", "1")
    finally:
        gold.write_bytes(original)
    out = capsys.readouterr().out
    assert code == 1 and "NOT REPRODUCED" in out
    frames = report["training_set"]
    assert not frames["identical"] and frames["rows"]["stored"] == frames["rows"]["rebuilt"]
    assert list(frames["days_differ"]) == [TAMPERED_DAY]  # all ten sensors of that day
    assert frames["days_differ"][TAMPERED_DAY] == 10
    assert set(frames["cells_differ"]) <= {c for c in day.columns if c.startswith("vibration_")}
    assert f"values changed on 1 day(s): {TAMPERED_DAY} (10 rows)" in out
    # Dagster never saw the rewrite: its data versions cannot tell, the rebuild does.
    assert report["checks"]["data_versions"]["assets"]["daily_aggregates"]["changed"] == []


@pytest.mark.integration
def test_a_changed_record_on_the_run_is_named(trained, tmp_path, capsys):
    client = mlflow_client()
    recorded = client.get_run(trained.run_id).data.metrics["holdout_f1"]
    client.log_metric(trained.run_id, "holdout_f1", recorded - 0.05, step=1)
    try:
        code, report = reproduce(tmp_path, "--version", "1")
    finally:
        client.log_metric(trained.run_id, "holdout_f1", recorded, step=2)
    out = capsys.readouterr().out
    assert code == 1
    [differs] = [m for m in report["metrics"] if m["status"] != "identical"]
    assert differs["metric"] == "holdout_f1"
    assert differs["abs_diff"] == pytest.approx(0.05)
    assert f"1 of {len(report['metrics'])} metrics not within 1e-06: holdout_f1" in out
    assert report["training_set"]["identical"]  # the data did not change, the record did
    assert "holdout_f1" in out and "differs" in out


@pytest.mark.integration
def test_changed_data_versions_fail_only_a_strict_reproduction(trained, tmp_path, capsys):
    """Labels landed after the week: a new input partition, but not one the week's set uses."""
    late = tmp_path / "late_labels.csv"
    late.write_text("sensor_id,timestamp,failure\nsensor-001,2024-03-01T12:00:00Z,1\n")
    land_and_ingest(trained.instance, "labels", late)
    code, report = reproduce(tmp_path, "--version", "1", "--strict")
    assert code == 1 and "NOT REPRODUCED" in capsys.readouterr().out
    # The only differences are the recorded inputs: without --strict they are warnings (exit 0).
    # The late file landed today, so today's landing-day partition of raw_labels has a new
    # data version (a new materialization).
    today = datetime.now(UTC).date().isoformat()
    [mismatch] = report["mismatches"]
    assert mismatch.startswith(f"data version of raw_labels[{today}]: "), mismatch
    assert report["training_set"]["identical"]
    assert all(m["status"] == "identical" for m in report["metrics"])


# ------------------------------------------------------------------------------ lib/reproduce


def test_data_versions_are_compared_partition_by_partition():
    recorded = {"2024-01-01": "a", "2024-01-02": "b", "2024-01-03": "c"}
    now = {"2024-01-01": "a", "2024-01-02": "B", "2024-01-04": "d"}
    assert compare_versions(recorded, now) == {
        "changed": [{"partition": "2024-01-02", "recorded": "b", "now": "B"}],
        "missing": ["2024-01-03"],
        "added": ["2024-01-04"],
    }


@pytest.mark.parametrize(
    ("recorded", "reproduced", "status"),
    [
        (0.5, 0.5, "identical"),
        (0.5, 0.5 + 1e-9, "identical"),
        (0.5, 0.51, "differs"),
        (math.nan, math.nan, "identical"),  # an undefined AUC stays undefined
        (math.nan, 0.5, "differs"),
        (None, 0.5, "not recorded"),
    ],
)
def test_metrics_are_identical_within_the_tolerance(recorded, reproduced, status):
    logged = {} if recorded is None else {"m": recorded}
    [row] = compare_metrics(logged, {"m": reproduced}, tolerance=1e-6)
    assert row["status"] == status


def test_frames_name_the_days_rows_and_columns_that_differ():
    stored = pd.DataFrame(
        {
            "label_id": [0, 1, 2, 3],
            "sensor_id": ["a", "b", "a", "b"],
            "day": ["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-02"],
            "x": [1.0, math.nan, 3.0, 4.0],
        }
    )
    assert compare_frames(stored, stored.copy())["identical"]
    rebuilt = stored.assign(x=[1.0, math.nan, 30.0, 4.0])
    rebuilt = pd.concat([rebuilt, stored.iloc[[0]].assign(sensor_id="c")], ignore_index=True)
    diff = compare_frames(stored, rebuilt)
    assert not diff["identical"] and diff["rows"] == {"stored": 4, "rebuilt": 5}
    assert diff["days_differ"] == {"2024-01-02": 1} and diff["cells_differ"] == {"x": 1}
    assert diff["rows_only_rebuilt"] == [["c", "2024-01-01"]] and diff["rows_only_stored"] == []
