"""Fault injection, scenario 11 of the reliability suite: the online store empty or missing, and
the champion alias dangling after a model version was deleted. Real Feast (SQLite online store)
and real MLflow (SQLite registry). Never a silent wrong answer: a clear 503/failure, or the loaded
model kept and the problem reported."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from contextlib import closing
from types import SimpleNamespace

import pytest

from ml_platform.defs.ml.models import MODEL_NAME
from ml_platform.defs.predictions.assets import daily_predictions
from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform_tests.feature_helpers import (
    SERVED_DAY,
    SERVED_MODEL,
    SERVED_WEEK,
    build_served_platform,
    embedded_platform,
    local_store,
    mlflow_client,
    run,
)
from ml_platform_tests.helpers import memory_instance

pytestmark = pytest.mark.integration

WEEK, DAY = SERVED_WEEK, SERVED_DAY
SMALL = SERVED_MODEL
SENSOR = "sensor-002"
TABLES = [f"ml_platform_{view}" for view in fs.VIEWS]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A lake, a Feast registry and online store for DAY, failure_model version 1 as champion."""
    work = tmp_path_factory.mktemp("faults_serving")
    with pytest.MonkeyPatch.context() as mp, memory_instance() as instance:
        embedded_platform(mp, work)
        build_served_platform(instance, work)
        from ml_platform.serving.app import create_app

        online = work / "feature_repo" / "data" / "online_store.db"
        assert online.exists()
        yield SimpleNamespace(work=work, instance=instance, online=online, create_app=create_app)


def client(platform, reload_s: float = 3600):
    from fastapi.testclient import TestClient

    return TestClient(platform.create_app(reload_interval_s=reload_s))


def sql(path, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def assert_clear_503(response, *words: str) -> dict:
    assert response.status_code == 503, response.text
    assert "Traceback" not in response.text and "internal error" not in response.text
    detail = response.json()["detail"]
    text = str(detail)
    assert all(word in text for word in words), (words, detail)
    return detail


def test_an_empty_online_store_is_refused_not_scored_on_imputed_values(platform, tmp_path):
    backup = shutil.copy(platform.online, tmp_path / "online.db")
    with client(platform) as api:
        good = api.post("/predict", json={"sensor_ids": [SENSOR]})
        assert good.status_code == 200, good.text
        assert api.get("/ready").json()["status"] == "ready"
        try:
            # One view emptied (a half-written online_features): the other still answers, and the
            # model's imputer would turn the gap into a plausible probability.
            sql(platform.online, f'DELETE FROM "{TABLES[1]}"')
            partial = assert_clear_503(
                api.post("/predict", json={"sensor_ids": [SENSOR]}), "incomplete"
            )
            assert partial["missing_views"] == {SENSOR: [fs.WEEKLY_TRENDS_VIEW]}
            ready = api.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["detail"] == (
                f"online store: no rows in {fs.WEEKLY_TRENDS_VIEW}: materialize online_features"
            )
            # Every row gone: a known sensor is not "unknown" (404) but the store is empty (503).
            sql(platform.online, *(f'DELETE FROM "{t}"' for t in TABLES))
            empty = assert_clear_503(
                api.post("/predict", json={"sensor_ids": [SENSOR, "sensor-004"]}), "no rows in"
            )
            assert empty["without_features"] == [SENSOR, "sensor-004"]
            assert "no rows in" in api.get("/ready").json()["detail"]
            # The point-in-time path reads the offline store: unaffected.
            as_of = {"sensor_ids": [SENSOR], "as_of": "2024-02-04T23:59:59Z"}
            assert api.post("/predict", json=as_of).status_code == 200
        finally:
            shutil.copy(backup, platform.online)  # a new file: the API must reopen it
        again = api.post("/predict", json={"sensor_ids": [SENSOR]})
        assert again.status_code == 200, again.text
        assert again.json()["predictions"] == good.json()["predictions"]
        assert api.get("/ready").json()["status"] == "ready"
        # With rows in the store, an unknown sensor is still the client's 404.
        unknown = api.post("/predict", json={"sensor_ids": ["no-such-sensor"]})
        assert unknown.status_code == 404 and unknown.json()["detail"]["unknown"]


def test_a_missing_online_store_gives_clear_503s_and_recovers(platform, tmp_path):
    full = shutil.copy(platform.online, tmp_path / "full.db")
    emptied = shutil.copy(platform.online, tmp_path / "empty.db")
    sql(emptied, *(f'DELETE FROM "{t}"' for t in TABLES))
    with client(platform) as api:
        assert api.post("/predict", json={"sensor_ids": [SENSOR]}).status_code == 200
        try:
            # The tables dropped (as a DROP TABLE on the PostgreSQL online store would).
            sql(platform.online, *(f'DROP TABLE "{t}"' for t in TABLES))
            dropped = assert_clear_503(
                api.post("/predict", json={"sensor_ids": [SENSOR]}), "no table for"
            )
            assert fs.DAILY_STATS_VIEW in dropped["message"]
            ready = api.get("/ready")
            assert ready.status_code == 503 and "no table for" in ready.json()["detail"]
            # The file deleted: Feast's open connection still reads the deleted file, which must
            # not be served as if it were the store.
            shutil.copy(full, platform.online)
            assert api.post("/predict", json={"sensor_ids": [SENSOR]}).status_code == 200
            platform.online.unlink()
            assert_clear_503(api.post("/predict", json={"sensor_ids": [SENSOR]}), "is missing")
            ready = api.get("/ready")
            assert (
                ready.status_code == 503 and "online_store.db is missing" in ready.json()["detail"]
            )
            assert not platform.online.exists()  # looking did not create an empty file
            # Another file appears (empty): read, not the deleted one.
            shutil.copy(emptied, platform.online)
            assert_clear_503(api.post("/predict", json={"sensor_ids": [SENSOR]}), "no rows in")
            # A fresh start without the file: up, not ready, and says why.
            platform.online.unlink()
            with client(platform) as fresh:
                assert fresh.get("/health").status_code == 200
                ready = fresh.get("/ready")
                assert ready.status_code == 503 and "is missing" in ready.json()["detail"]
                assert_clear_503(fresh.post("/predict", json={"sensor_ids": [SENSOR]}), "missing")
        finally:
            shutil.copy(full, platform.online)
        assert api.post("/predict", json={"sensor_ids": [SENSOR]}).status_code == 200
        assert api.get("/ready").json()["status"] == "ready"


def wait_for(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


class PredictionFile:
    """Whether daily_predictions wrote DAY's file, in the lake of the environment."""

    def exists(self) -> bool:
        return local_store(os.environ["ML_PLATFORM_STORE_URL"]).exists(
            paths.predictions_object(DAY)
        )


def failed_message(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_failure_data.error.message


def test_a_deleted_champion_version_keeps_the_api_serving_and_fails_predictions_clearly(platform):
    mlflow = mlflow_client()
    v1 = mlflow.get_model_version(MODEL_NAME, "1")
    v2 = mlflow.create_model_version(MODEL_NAME, v1.source, run_id=v1.run_id, tags=v1.tags)
    mlflow.set_registered_model_alias(MODEL_NAME, "champion", v2.version)
    target = PredictionFile()
    assert not target.exists()
    try:
        with client(platform, reload_s=0.2) as api:
            assert api.get("/model").json()["version"] == "2"
            baseline = api.post("/predict", json={"sensor_ids": [SENSOR]}).json()
            # Deleting the version: MLflow drops the alias with it.
            mlflow.delete_model_version(MODEL_NAME, v2.version)
            ready = wait_for(lambda: (r := api.get("/ready")).json()["status"] != "ready" and r)
            assert ready.status_code == 200, ready.text  # the loaded model is still served
            assert ready.json()["status"] == "degraded"
            assert "has no 'champion' alias" in ready.json()["detail"]
            info = api.get("/model").json()
            assert info["version"] == "2" and "'champion'" in info["refresh_error"]
            same = api.post("/predict", json={"sensor_ids": [SENSOR]})
            assert same.status_code == 200 and same.json()["model_version"] == "2"
            assert same.json()["predictions"] == baseline["predictions"]
            # A fresh start has nothing to load: not ready, and says why.
            with client(platform) as fresh:
                ready = fresh.get("/ready")
                assert ready.status_code == 503 and "'champion'" in ready.json()["detail"]
                assert_clear_503(fresh.post("/predict", json={"sensor_ids": [SENSOR]}), "champion")
            result = run(platform.instance, [daily_predictions], partition_key=DAY, ok=False)
            assert not result.success and not target.exists()
            message = failed_message(result)
            assert "has no 'champion' alias" in message, message
            assert "last champion_model run made version 1" in message, message

            # A dangling alias (a registry restored from a backup, or edited): it names the version.
            mlflow.set_registered_model_alias(MODEL_NAME, "champion", "1")
            db = platform.work / "mlflow.db"
            sql(db, "UPDATE registered_model_aliases SET version = 2 WHERE alias = 'champion'")
            assert mlflow.get_registered_model(MODEL_NAME).aliases["champion"] in (2, "2")
            result = run(platform.instance, [daily_predictions], partition_key=DAY, ok=False)
            assert not target.exists()
            message = failed_message(result)
            assert (
                "alias 'champion' of failure_model points at version 2, which does not exist"
                in (message)
            ), message
            with client(platform) as fresh:
                detail = fresh.get("/ready").json()["detail"]
                assert "points at version 2, which does not exist" in detail, detail
            # Repaired: the running API follows the alias again.
            mlflow.set_registered_model_alias(MODEL_NAME, "champion", "1")
            wait_for(lambda: api.get("/ready").json()["status"] == "ready")
            assert api.get("/model").json()["refresh_error"] is None
            assert (
                api.post("/predict", json={"sensor_ids": [SENSOR]}).json()["model_version"] == "1"
            )
    finally:
        mlflow.set_registered_model_alias(MODEL_NAME, "champion", "1")
    run(platform.instance, [daily_predictions], partition_key=DAY)
    assert target.exists()
