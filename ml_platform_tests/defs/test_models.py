"""Models and predictions on real MLflow stores: training, promotion, prediction files, scoring
requests and warm-started clusters (SQLite tracking + local artifacts; PostgreSQL backend with
artifacts on the S3 API server)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ml_platform.defs.features.assets import feature_views
from ml_platform.defs.ingest.sensors import build_landing_sensor
from ml_platform.defs.ml.assets import training_set
from ml_platform.defs.ml.models import (
    BEATS_BASELINE,
    CLUSTER_MODEL,
    MODEL_NAME,
    champion_model,
    failure_model,
    sensor_clusters,
)
from ml_platform.defs.monitoring.assets import drift_retraining_sensor, feature_drift
from ml_platform.defs.partitions import scoring_files
from ml_platform.defs.predictions.assets import (
    _DaysScored,
    daily_predictions,
    scored_files,
    scoring_job,
)
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.generator import GeneratorConfig
from ml_platform.lib.store import LocalStore
from ml_platform_tests.feature_helpers import (
    build_lake,
    embedded_platform,
    land_and_ingest,
    metadata,
    mlflow_client,
    model_config,
    run,
)
from ml_platform_tests.helpers import memory_instance, rows_by, stored_key, webhook_receiver

pytestmark = pytest.mark.integration

#: Ten weeks of 20 sensors with frequent failures: enough positives for a 14-day holdout.
GENERATED = GeneratorConfig(
    days=70, sensors=20, interval_s=3600, seed=11, failures_per_sensor_month=3.0
)
WEEK, EARLIER_WEEK = "2024-03-04", "2024-02-26"  # label the days up to 03-09 / 03-02
DAY = "2024-03-09"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A lakehouse with labels, the Feast registry and two weeks of training sets, built once."""
    work = tmp_path_factory.mktemp("model-lake")
    with pytest.MonkeyPatch.context() as mp, memory_instance() as instance:
        embedded_platform(mp, work)
        build_lake(instance, work, GENERATED)
        run(instance, [feature_views])
        for week in (EARLIER_WEEK, WEEK):
            run(instance, [training_set], partition_key=week)
        yield SimpleNamespace(work=work, instance=instance)


@pytest.fixture
def env(built, tmp_path, monkeypatch):
    """Private copies of the lake and the Feast repo, and an empty MLflow store."""
    shutil.copytree(built.work / "lake", tmp_path / "lake")
    shutil.copytree(built.work / "feature_repo", tmp_path / "feature_repo")
    embedded_platform(monkeypatch, tmp_path)
    return SimpleNamespace(
        store=LocalStore(tmp_path / "lake"), instance=built.instance, tmp=tmp_path
    )


def test_failure_model_is_tracked_registered_and_beats_the_baseline(env):
    result = run(env.instance, [failure_model], partition_key=WEEK, config=model_config())
    m = metadata(result, "failure_model")
    assert m["holdout_f1"] >= 0.6, m
    assert m["holdout_f1"] >= m["baseline_f1"] + 0.3, m
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == {
        BEATS_BASELINE: True,
        "failure_model_probabilities_are_valid": True,
        "failure_model_meets_f1_floor": True,
    }

    mlflow = mlflow_client()
    run_data = mlflow.get_run(m["mlflow_run_id"])
    assert run_data.data.tags["dagster.run_id"] == result.run_id
    assert run_data.data.tags["dagster.partition"] == WEEK
    assert (
        run_data.data.tags["dagster.code_version"]
        == failure_model.code_versions_by_key[failure_model.key]
    )
    for metric in ("holdout_f1", "baseline_f1", "cv_f1", "holdout_roc_auc", "baseline_roc_auc"):
        assert metric in run_data.data.metrics
    assert {"learning_rate", "max_leaf_nodes", "search", "cv_splits"} <= set(run_data.data.params)
    plots = {a.path for a in mlflow.list_artifacts(m["mlflow_run_id"], "plots")}
    assert plots == {
        "plots/confusion_matrix.png",
        "plots/roc_curve.png",
        "plots/precision_recall_curve.png",
        "plots/feature_importance.png",
    }
    # The asset's page shows the same images: inline PNGs equal to the run's artifacts.
    for path in sorted(plots):
        name = Path(path).stem
        inline = re.fullmatch(
            r"!\[\w+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", m[f"plot_{name}"]
        )
        local = mlflow.download_artifacts(m["mlflow_run_id"], path, str(env.store.root.parent))
        assert base64.b64decode(inline.group(1)) == Path(local).read_bytes()
    version = mlflow.get_model_version(MODEL_NAME, m["model_version"])
    assert version.run_id == m["mlflow_run_id"]
    assert version.tags["quality_gate"] == "passed" and version.tags["week"] == WEEK
    info = (
        build_resources()["mlflow"]
        .mlflow()
        .models.get_model_info(f"models:/{MODEL_NAME}/{m['model_version']}")
    )
    assert info.signature is not None and info.saved_input_example_info is not None
    # The holdout is frozen in the ml zone: the last 14 days of the window.
    holdout_key = paths.model_holdout_object(MODEL_NAME, WEEK, result.run_id)
    assert version.tags["holdout_key"] == holdout_key
    assert stored_key(env.store, m) == holdout_key  # the asset's dagster/uri
    assert m["dagster/uri"] == version.tags["holdout"]
    holdout = pd.read_parquet(env.store.root / holdout_key)
    assert holdout["day"].nunique() == 14 and str(holdout["day"].max()) == "2024-03-09"
    # The day before the holdout is left out of training (a one-day horizon looks into it).
    assert run_data.data.params["gap_days"] == "1"

    # The holdout scores are on the logged model too, and the run names its training data.
    logged = mlflow.get_logged_model(info.model_id)
    assert (
        logged.metrics
        and {x.key: x.value for x in logged.metrics}["holdout_f1"]
        == (run_data.data.metrics["holdout_f1"])
    )
    [training] = [d for d in run_data.inputs.dataset_inputs
                  if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "training"]  # fmt: skip
    source = unquote(json.loads(training.dataset.source)["uri"])
    assert source == unquote(env.store.uri(paths.training_set_object(WEEK)))

    # The registered version served by MLflow's own scoring server (what `mlflow models serve`
    # runs) answers with the probabilities the platform predicts with (predict_proba[:, 1]).
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    uri = f"models:/{MODEL_NAME}/{m['model_version']}"
    ml = build_resources()["mlflow"].mlflow()
    features = info.signature.inputs.input_names()
    rows = holdout[features].head(25)
    with TestClient(scoring_server.init(ml.pyfunc.load_model(uri))) as server:
        answer = server.post("/invocations", json={"dataframe_split": json.loads(
            rows.to_json(orient="split", index=False))})  # fmt: skip
    assert answer.status_code == 200, answer.text
    served = np.asarray(answer.json()["predictions"], dtype=float)
    platform = ml.sklearn.load_model(uri).predict_proba(rows)[:, 1]
    assert served.shape == (25, 2)
    np.testing.assert_allclose(served[:, 1], platform, rtol=1e-9)
    np.testing.assert_allclose(served.sum(axis=1), 1.0)


@pytest.mark.parametrize("gap_days", [0, 1, 2])
def test_time_folds_never_validate_on_the_past(gap_days):
    from ml_platform.lib.modeling import date_folds, split_holdout

    days = pd.Series(pd.date_range("2024-01-01", periods=30, freq="D").date.repeat(3))
    for train, test in date_folds(days, 4, gap_days):
        gap = (days.iloc[test].min() - days.iloc[train].max()).days
        assert gap == gap_days + 1
    train, holdout = split_holdout(pd.DataFrame({"day": days}), 7, gap_days)
    assert (holdout["day"].min() - train["day"].max()).days == gap_days + 1


def test_the_champion_moves_only_for_a_measurably_better_challenger(env):
    # Same search, decision thresholds that throw recall away: measurably weaker versions.
    weak = model_config(threshold=0.995, baseline_margin=-1.0, f1_floor=0.0)
    worse = model_config(threshold=0.99999, baseline_margin=-1.0, f1_floor=0.0)
    weak_run = run(env.instance, [failure_model], partition_key=WEEK, config=weak)
    trained = metadata(weak_run, "failure_model")
    # The confusion matrix is that of the version's own threshold (0.995), not of predict()'s
    # 0.5: its cells, counted here from the registered model's probabilities on the holdout.
    ml = build_resources()["mlflow"].mlflow()
    model = ml.sklearn.load_model(f"models:/{MODEL_NAME}/{trained['model_version']}")
    holdout_key = paths.model_holdout_object(MODEL_NAME, WEEK, weak_run.run_id)
    holdout = pd.read_parquet(env.store.root / holdout_key)
    alarm = model.predict_proba(holdout[model.feature_names_in_])[:, 1] >= 0.995
    failed = holdout["failure_within_horizon"].to_numpy() == 1
    logged = mlflow_client().get_run(trained["mlflow_run_id"]).data.metrics
    assert {c: logged[f"holdout_{c}"] for c in ("tn", "fp", "fn", "tp")} == {
        "tn": (~alarm & ~failed).sum(), "fp": (alarm & ~failed).sum(),
        "fn": (~alarm & failed).sum(), "tp": (alarm & failed).sum(),
    }  # fmt: skip
    assert (~alarm).sum() > (model.predict(holdout[model.feature_names_in_]) == 0).sum()
    first = metadata(run(env.instance, [champion_model]), "champion_model")
    assert (first["decision"], first["champion_version"]) == ("promoted", 1)

    run(env.instance, [failure_model], partition_key=WEEK, config=worse)
    kept = metadata(run(env.instance, [champion_model]), "champion_model")
    assert (kept["decision"], kept["champion_version"]) == ("kept", 1)
    assert kept["challenger_f1"] < kept["champion_f1"] + 0.01

    run(env.instance, [failure_model], partition_key=WEEK, config=model_config())
    better = metadata(run(env.instance, [champion_model]), "champion_model")
    assert (better["decision"], better["champion_version"]) == ("promoted", 3)
    mlflow = mlflow_client()
    assert str(mlflow.get_model_version_by_alias(MODEL_NAME, "champion").version) == "3"
    assert str(mlflow.get_model_version_by_alias(MODEL_NAME, "previous_champion").version) == "1"

    # A rollback by run config: pinned version 1 becomes champion again.
    pinned = {"ops": {"champion_model": {"config": {"pin_version": 1}}}}
    rolled = metadata(run(env.instance, [champion_model], config=pinned), "champion_model")
    assert (rolled["decision"], rolled["champion_version"]) == ("promoted", 1)

    ledger = json.loads(env.store.read_bytes(paths.promotion_ledger_object(MODEL_NAME)))
    assert [(e["decision"], e["challenger"], e["champion_before"]) for e in ledger] == [
        ("promoted", 1, None),
        ("kept", 2, 1),
        ("promoted", 3, 1),
        ("promoted", 1, 3),
    ]
    assert all(e["who"] and e["at"] and e["reason"] for e in ledger)
    assert ledger[1]["challenger_value"] < ledger[1]["champion_value"]
    # The ledger table on the asset's page: the newest decision first, typed columns; the
    # ledger object is the asset's dagster/uri.
    assert stored_key(env.store, better) == paths.promotion_ledger_object(MODEL_NAME)
    shown = better["ledger"]
    assert [(r.data["decision"], r.data["challenger"]) for r in shown.records] == [
        ("promoted", 3), ("kept", 2), ("promoted", 1),
    ]  # fmt: skip
    assert {c.name: c.type for c in shown.schema.columns}["challenger"] == "int"


def test_a_challenger_that_fails_its_checks_is_promoted_only_when_forced(env):
    failing = model_config(f1_floor=1.01)  # unreachable: the blocking check fails
    result = run(env.instance, [failure_model], partition_key=WEEK, config=failing, ok=False)
    assert not result.success
    decision = metadata(run(env.instance, [champion_model]), "champion_model")
    assert decision["decision"] == "kept" and "quality checks" in decision["reason"]
    assert decision["champion_version"] == -1
    # A person who knows better can force it, and the ledger says so.
    forced = {"ops": {"champion_model": {"config": {"force": True}}}}
    decision = metadata(run(env.instance, [champion_model], config=forced), "champion_model")
    assert (decision["decision"], decision["champion_version"]) == ("promoted", 1)
    assert decision["reason"] == "forced by run config"
    assert str(mlflow_client().get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    ledger = json.loads(env.store.read_bytes(paths.promotion_ledger_object(MODEL_NAME)))
    assert [e["decision"] for e in ledger] == ["kept", "promoted"]


def test_clusters_warm_start_from_the_previous_version(env):
    first = metadata(
        run(env.instance, [sensor_clusters], partition_key=EARLIER_WEEK), "sensor_clusters"
    )
    second = metadata(run(env.instance, [sensor_clusters], partition_key=WEEK), "sensor_clusters")
    assert first["warm_start_from"] == "cold start" and second["warm_start_from"] == "1"
    assert min(second["cluster_sizes"]) > 0 and second["silhouette"] > 0.05
    # The second model started from exactly the first one's centres (mapped into its scale).
    mlflow, ml = mlflow_client(), build_resources()["mlflow"].mlflow()
    v1 = ml.sklearn.load_model(f"models:/{CLUSTER_MODEL}/1")
    v2 = ml.sklearn.load_model(f"models:/{CLUSTER_MODEL}/2")
    logged = ml.artifacts.load_dict(
        f"runs:/{mlflow.get_model_version(CLUSTER_MODEL, '2').run_id}/centres.json"
    )
    expected = v2.named_steps["scale"].transform(
        v1.named_steps["scale"].inverse_transform(v1.named_steps["kmeans"].cluster_centers_)
    )
    np.testing.assert_allclose(np.array(logged["initial_centres"]), expected, rtol=1e-9)
    assert str(mlflow.get_model_version_by_alias(CLUSTER_MODEL, "current").version) == "2"


def test_daily_predictions_for_every_sensor_with_the_champions_version(env):
    run(env.instance, [failure_model], partition_key=WEEK, config=model_config())
    run(env.instance, [sensor_clusters], partition_key=WEEK)
    run(env.instance, [champion_model])
    result = run(env.instance, [daily_predictions], partition_key=DAY)
    frame = pd.read_parquet(env.store.root / paths.predictions_object(DAY))
    gold = pd.read_parquet(env.store.root / paths.aggregates_object(DAY))
    assert sorted(frame["sensor_id"]) == sorted(gold["sensor_id"])
    # A one-day run's dagster/uri is the day's file (its CSV beside it), its days a table.
    shown = metadata(result, "daily_predictions")
    assert stored_key(env.store, shown) == paths.predictions_object(DAY)
    assert shown["csv"] == env.store.uri(paths.predictions_object(DAY, "csv"))
    assert rows_by(shown["days"], "day")[DAY]["sensors"] == len(frame)
    assert (frame["model_version"] == "1").all() and (frame["model_name"] == MODEL_NAME).all()
    assert frame["failure_probability"].between(0, 1).all() and frame["features_found"].all()
    assert frame["cluster"].notna().all() and (frame["date"] == DAY).all()
    assert (
        frame["model_run_id"].iloc[0] == mlflow_client().get_model_version(MODEL_NAME, "1").run_id
    )
    csv = pd.read_csv(env.store.root / paths.predictions_object(DAY, "csv"))
    assert len(csv) == len(frame)
    assert all(c.passed for c in result.get_asset_check_evaluations())

    # Re-running an old day with the model it used: pinned, whatever the champion is now.
    run(env.instance, [failure_model], partition_key=WEEK, config=model_config(seed=1))
    pin = {"ops": {"daily_predictions": {"config": {"model_version": 2}}}}
    run(env.instance, [daily_predictions], partition_key=DAY, config=pin)
    frame = pd.read_parquet(env.store.root / paths.predictions_object(DAY))
    assert (frame["model_version"] == "2").all()


def test_a_prediction_ranges_uri_is_its_zone_and_a_days_its_file(tmp_path):
    store, zone = LocalStore(tmp_path), f"{paths.RESULTS}predictions/"
    day = _DaysScored(per_day={DAY: {"sensors": 3}})
    assert day.written(store)["dagster/uri"].value == store.uri(paths.predictions_object(DAY))
    for scored in (
        _DaysScored(per_day={DAY: {"sensors": 3}, "2024-03-10": {"sensors": 3}}),
        _DaysScored(per_day={DAY: {"sensors": 0}}),  # a day without aggregates wrote nothing
    ):
        assert {k: v.value for k, v in scored.written(store).items()} == {
            "dagster/uri": store.uri(zone)
        }


def test_a_scoring_request_becomes_one_scored_file_and_a_bad_one_is_quarantined(env):
    run(env.instance, [failure_model], partition_key=WEEK, config=model_config())
    run(env.instance, [champion_model])
    store = env.store
    store.put_bytes(
        b"sensor_id,date\nsensor-001,2024-03-05\nsensor-002,2024-03-06\n",
        "landing/scoring/requests/today.csv",
    )
    store.put_bytes(b"device,when\nsensor-001,yesterday\n", "landing/scoring/broken.csv")
    sensor = build_landing_sensor(
        "scoring", scoring_job, scoring_files, interval_s=1, max_requests_per_tick=10
    )
    resources = build_resources()
    context = dg.build_sensor_context(instance=env.instance, resources=resources)
    tick = sensor(context)
    env.instance.add_dynamic_partitions(
        "scoring_files", tick.dynamic_partitions_requests[0].partition_keys
    )
    by_name = {r.partition_key.split("@")[0]: r.partition_key for r in tick.run_requests}
    assert set(by_name) == {"requests/today.csv", "broken.csv"}
    again = sensor(dg.build_sensor_context(instance=env.instance, resources=resources,
                                           cursor=tick.cursor))  # fmt: skip
    assert isinstance(again, dg.SkipReason)  # exactly once per uploaded version

    ok = run(env.instance, [scored_files], partition_key=by_name["requests/today.csv"])
    scored = pd.read_csv(store.root / paths.scored_object("requests/today.csv"))
    assert list(scored["sensor_id"]) == ["sensor-001", "sensor-002"]
    assert scored["failure_probability"].between(0, 1).all()
    answered = metadata(ok, "scored_files")
    assert answered["rows"] == 2
    assert stored_key(store, answered) == paths.scored_object("requests/today.csv")
    assert answered["request"] == store.uri("landing/scoring/requests/today.csv")
    assert [o.key for o in store.list("results/scored/")] == [
        paths.scored_object("requests/today.csv")
    ]

    bad = run(env.instance, [scored_files], partition_key=by_name["broken.csv"], ok=False)
    assert not bad.success
    file_id = paths.file_id(by_name["broken.csv"])
    record = json.loads(store.read_bytes(paths.quarantine_record("scoring", file_id, "broken.csv")))
    assert record["reason"] == "missing_column"
    assert store.exists(paths.quarantine_object("scoring", file_id, "broken.csv"))
    assert store.exists("landing/scoring/broken.csv")  # the upload itself is never touched


def test_mlflow_on_postgresql_with_artifacts_on_the_s3_api(
    built, tmp_path, monkeypatch, postgres, s3_server
):
    """The deployed MLflow profile: a PostgreSQL backend store, artifacts in an S3 bucket."""
    shutil.copytree(built.work / "lake", tmp_path / "lake")
    monkeypatch.setenv("ML_PLATFORM_STORE_URL", (tmp_path / "lake").as_uri())
    monkeypatch.setenv("ML_PLATFORM_FEAST_REPO", str(built.work / "feature_repo"))
    db = f"mlflow_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres.url(db))
    monkeypatch.setenv("ML_PLATFORM_MLFLOW_ARTIFACTS", f"s3://{bucket}/artifacts")
    for key, value in s3_server.env(bucket).items():
        if key != "ML_PLATFORM_STORE_URL":
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with memory_instance() as instance:
        result = run(instance, [failure_model], partition_key=WEEK, config=model_config())
        run(instance, [champion_model])
    keys = [
        o["Key"]
        for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    ]  # fmt: skip
    assert any(k.endswith("/MLmodel") for k in keys)
    assert any(k.endswith("plots/roc_curve.png") for k in keys)
    assert str(mlflow_client().get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    assert metadata(result, "failure_model")["model_version"] == "1"


def test_the_compose_mlflow_server_command_tracks_on_postgresql_with_s3_artifacts(
    built, tmp_path, monkeypatch, postgres, s3_server
):
    """docker/compose.yaml's `mlflow server` command, run here as the container runs it (no
    Docker engine): PostgreSQL backend, artifacts proxied to S3; the platform only knows its URL."""
    import subprocess
    import sys
    import urllib.request

    import yaml

    from ml_platform_tests.servers import ROOT, _wait, free_port, stop_process_group

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    command = list(compose["services"]["mlflow"]["command"])
    db, bucket, port = f"mlflow_{uuid.uuid4().hex[:8]}", f"art-{uuid.uuid4().hex[:8]}", free_port()
    postgres.create_database(db)
    s3_server.client().create_bucket(Bucket=bucket)
    replace = {
        "--artifacts-destination": f"s3://{bucket}",
        "--host": "127.0.0.1",
        "--port": str(port),
        "--allowed-hosts": f"127.0.0.1:{port}",
    }
    for i, arg in enumerate(command[:-1]):
        if arg in replace:
            command[i + 1] = replace[arg]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    # The backend store comes from the environment (no password in the process list), as the
    # MLflow database's own role.
    compose_env = compose["services"]["mlflow"]["environment"]
    assert "--backend-store-uri" not in command
    assert compose_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    server_env = {
        **{k: v for k, v in s3_server.env(bucket).items() if k.startswith("AWS_")},
        **{k: v for k, v in compose_env.items()
           if k.startswith("MLFLOW_") and k != "MLFLOW_TRACKING_URI"},
        "MLFLOW_BACKEND_STORE_URI": postgres.url(db),
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
    }  # fmt: skip
    exe = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [exe, *command[1:]],
        env={**os.environ, **server_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
    )

    def healthy() -> bool:
        assert server.poll() is None, "mlflow server exited"
        try:
            return (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            )
        except OSError:
            return False

    try:
        _wait(healthy, 120, "mlflow server")
        shutil.copytree(built.work / "lake", tmp_path / "lake")
        monkeypatch.setenv("ML_PLATFORM_STORE_URL", (tmp_path / "lake").as_uri())
        monkeypatch.setenv("ML_PLATFORM_FEAST_REPO", str(built.work / "feature_repo"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("ML_PLATFORM_MLFLOW_ARTIFACTS", raising=False)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)  # the client needs no S3 keys: proxied
        with memory_instance() as instance:
            result = run(instance, [failure_model], partition_key=WEEK, config=model_config())
            run(instance, [champion_model])
        m = metadata(result, "failure_model")
        assert m["mlflow_run"].startswith(f"http://127.0.0.1:{port}/#/experiments/")
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert any(k.endswith("/MLmodel") for k in keys)
        assert (
            str(mlflow_client().get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
        )
    finally:
        stop_process_group(server)


def test_a_drifting_measurement_closes_the_drift_gate_and_requests_one_retraining(env):
    run(env.instance, [failure_model], partition_key=WEEK, config=model_config())
    run(env.instance, [champion_model])
    stable = metadata(run(env.instance, [feature_drift], partition_key=DAY), "feature_drift")
    assert (stable["level"], stable["gate"]) == ("ok", "open"), stable

    # Vibration read three times too high for the whole week up to DAY.
    for day in pd.date_range("2024-03-03", DAY).strftime("%Y-%m-%d"):
        path = env.store.root / paths.aggregates_object(day)
        gold = pd.read_parquet(path)
        for column in [c for c in gold.columns if c.startswith("vibration_")]:
            if column.endswith(("_mean", "_min", "_max", "_p05", "_p50", "_p95", "_last")):
                gold[column] = gold[column] * 3
        gold.to_parquet(path, index=False)
    result = run(env.instance, [feature_drift], partition_key=DAY, ok=False)
    drifted = metadata(result, "feature_drift")
    assert not result.success  # the blocking check failed
    assert (drifted["level"], drifted["gate"]) == ("fail", "closed")
    assert drifted["top_feature"].startswith("vibration_"), drifted["ranked"]
    report = json.loads(env.store.read_bytes(paths.drift_report_object(DAY)))
    assert all(r["feature"].startswith("vibration_") for r in report["ranked"] if r["drifting"])

    # The gate holds the day's predictions back, unless it is explicitly overridden.
    gated = run(env.instance, [daily_predictions], partition_key=DAY, ok=False)
    assert not gated.success
    [failure] = gated.get_step_failure_events()
    assert "drift gate closed for 2024-03-09" in failure.step_failure_data.error.message
    override = {"ops": {"daily_predictions": {"config": {"ignore_drift_gate": True}}}}
    run(env.instance, [daily_predictions], partition_key=DAY, config=override)

    # The champion already learnt from the drifting week: retraining it would change nothing.
    waiting = drift_retraining_sensor(dg.build_sensor_context(instance=env.instance))
    assert not waiting.run_requests and "nothing newer" in waiting.skip_reason.skip_message
    # With a champion from the week before, the drifting week is new data: one retraining,
    # whatever the number of closed gates seen today (the run key is the date).
    run(env.instance, [failure_model], partition_key=EARLIER_WEEK, config=model_config())
    pin = {"ops": {"champion_model": {"config": {"pin_version": 2}}}}
    run(env.instance, [champion_model], config=pin)
    tick = drift_retraining_sensor(dg.build_sensor_context(instance=env.instance))
    [request] = tick.run_requests
    assert request.run_key.startswith("drift-retraining:") and request.partition_key == WEEK
    again = drift_retraining_sensor(dg.build_sensor_context(instance=env.instance)).run_requests
    assert [r.run_key for r in again] == [request.run_key]  # same key: Dagster runs it once


def test_label_queue_live_performance_and_one_alert_per_failure(env):
    """The feedback loop on generated data: a queue of uncertain sensor-days, live metrics once
    labels are in, and a deduplicated webhook alert for a failed blocking check."""
    from ml_platform.defs.monitoring.alerts import alert_on_failure_sensor
    from ml_platform.defs.monitoring.feedback import label_queue, live_performance
    from ml_platform.defs.resources import AlertResource

    run(env.instance, [failure_model], partition_key=WEEK, config=model_config())
    run(env.instance, [champion_model])
    run(env.instance, [daily_predictions], partition_key=DAY)

    def materialize(asset):
        return metadata(run(env.instance, [asset], partition_key=DAY), asset.key.path[-1])

    queue_meta = materialize(label_queue)
    queue = pd.read_csv(env.store.root / paths.label_queue_object(DAY))
    predictions = pd.read_parquet(env.store.root / paths.predictions_object(DAY))
    assert len(queue) == queue_meta["rows"] == 10
    nearest = (predictions["failure_probability"] - 0.5).abs().nsmallest(10)
    assert sorted(queue["failure_probability"].round(6)) == sorted(
        predictions.loc[nearest.index, "failure_probability"].round(6)
    )
    assert list(queue.columns[:3]) == ["sensor_id", "timestamp", "failure"]
    # People fill it in and drop it into landing/labels/: it flows back through the labels path.
    filled = queue.assign(failure=[1] + [0] * (len(queue) - 1))
    answered = env.tmp / "answered_labels.csv"
    filled.to_csv(answered, index=False)
    land_and_ingest(env.instance, "labels", answered)
    # Stamped inside the day's label window (the next day): they label exactly this day.
    part = [o.key for o in env.store.list(paths.bronze_day_prefix("labels", "2024-03-10"))]
    back = pd.concat(pd.read_parquet(env.store.root / k) for k in part)
    assert set(filled["sensor_id"]) <= set(back["sensor_id"])
    assert int(back.loc[back["sensor_id"] == filled["sensor_id"].iloc[0], "failure"].max()) == 1

    live = materialize(live_performance)
    report = json.loads(env.store.read_bytes(paths.live_performance_object(DAY)))
    [version] = report["versions"]
    assert version["model_version"] == "1" and version["sensors"] == 20
    labels = pd.concat(
        pd.read_parquet(env.store.root / o.key) for o in env.store.list(f"{paths.BRONZE}labels/")
    )
    times = pd.to_datetime(labels["timestamp"], utc=True)
    end = pd.Timestamp(f"{DAY}T23:59:59.999999Z")
    window = (times > end) & (times <= end + pd.Timedelta(days=1)) & (labels["failure"] == 1)
    expected = labels.loc[window, "sensor_id"]
    assert version["actual_failures"] == expected.nunique() == live["actual_failures"]
    # Live F1 worked by hand from the day's alarms and the failures that followed.
    alarm = predictions["predicted_failure"] == 1
    failed = predictions["sensor_id"].isin(set(expected))
    tp, fp, fn = (alarm & failed).sum(), (alarm & ~failed).sum(), (~alarm & failed).sum()
    assert version["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # The check holds the live F1 against the holdout F1 the registry recorded, within the
    # tolerance: just inside it passes, just outside it warns and names the version.
    holdout_f1 = float(mlflow_client().get_model_version(MODEL_NAME, "1").tags["holdout_f1"])
    gap = holdout_f1 - version["f1"]
    for tolerance, passed in ((gap + 0.01, True), (gap - 0.01, False)):
        judged = run(env.instance, [live_performance], partition_key=DAY,
                     config={"ops": {"live_performance": {"config": {"tolerance": tolerance}}}})  # fmt: skip
        [check] = judged.get_asset_check_evaluations()
        assert (check.check_name, check.passed) == ("live_performance_matches_holdout", passed)
        assert check.severity == dg.AssetCheckSeverity.WARN
        behind = check.metadata["behind"].value
        assert [b["model_version"] for b in behind] == ([] if passed else ["1"])

    # Alerts: a local webhook receives one Slack-compatible message per asset, partition and day.
    with webhook_receiver() as (url, received):
        resources = {"alerts": AlertResource(webhook_url=url), "lake": build_resources()["lake"]}
        for _ in range(2):  # the same failure twice (a retry, say): one alert
            failed = run(env.instance, [failure_model], partition_key=WEEK,
                         config=model_config(f1_floor=1.01), ok=False)  # fmt: skip
            context = dg.build_run_status_sensor_context(
                sensor_name="alert_on_failure_sensor",
                dagster_instance=env.instance,
                dagster_run=failed.dagster_run,
                dagster_event=failed.get_run_failure_event(),
                resources=resources,
            ).for_run_failure()
            alert_on_failure_sensor(context)
    assert len(received) == 1
    assert "failure_model failed" in received[0]["text"] and received[0]["blocks"]
    assert WEEK in received[0]["blocks"][1]["text"]["text"]
