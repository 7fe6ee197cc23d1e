"""The prediction API against real stores: contract tests for every endpoint and error, a
schema-driven fuzz run (schemathesis) with no 5xx, and a hot reload under a stream of requests."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import dagster as dg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from ml_platform.defs.ml.models import MODEL_NAME, failure_model
from ml_platform_tests.feature_helpers import (
    SERVED_DAY,
    SERVED_MODEL,
    SERVED_WEEK,
    build_served_platform,
    embedded_platform,
    mlflow_client,
    model_config,
    run,
)

pytestmark = pytest.mark.integration

WEEK, DAY = SERVED_WEEK, SERVED_DAY
SMALL = SERVED_MODEL


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A lake, Feast registry and online store, and failure_model version 1 as champion."""
    work = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        embedded_platform(mp, work)
        build_served_platform(instance, work)
        from ml_platform.serving.app import create_app

        sensors = [f"sensor-{i:03d}" for i in range(1, 11)]
        yield SimpleNamespace(work=work, instance=instance, sensors=sensors, mp=mp,
                              create_app=create_app)  # fmt: skip


@pytest.fixture(scope="module")
def api(platform):
    from fastapi.testclient import TestClient

    with TestClient(platform.create_app(reload_interval_s=3600)) as test_client:
        yield test_client


def test_health_ready_and_model_describe_the_served_version(api):
    assert api.get("/health").json() == {"status": "ok", "model_version": "1", "detail": None}
    ready = api.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = api.get("/model").json()
    assert (info["name"], info["version"], info["alias"]) == (MODEL_NAME, "1", "champion")
    assert info["trained_at"].startswith("20") and info["features"] == 54
    assert api.get("/docs").status_code == 200
    assert "/predict" in api.get("/openapi.json").json()["paths"]


def test_predict_one_and_many_sensors_from_the_online_store(api, platform):
    one = api.post("/predict", json={"sensor_ids": ["sensor-003"]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == "1" and one.headers["x-model-version"] == "1"
    assert one.headers["x-request-id"] == body["request_id"]
    [p] = body["predictions"]
    assert p["sensor_id"] == "sensor-003" and 0 <= p["failure_probability"] <= 1
    many = api.post("/predict", json={"sensor_ids": platform.sensors})
    assert [p["sensor_id"] for p in many.json()["predictions"]] == platform.sensors
    # The same sensor in the batch gets the same answer as alone.
    again = {p["sensor_id"]: p for p in many.json()["predictions"]}["sensor-003"]
    assert again["failure_probability"] == pytest.approx(p["failure_probability"])


def gold_rows(work, day: str):
    """The gold rows of ``day`` (one per sensor), read straight from the lake's Parquet files."""
    import pandas as pd

    [file] = work.rglob(f"gold/daily_aggregates/date={day}/*.parquet")
    return pd.read_parquet(file).set_index("sensor_id")


def champion_scores(day_rows, sensors: list[str]) -> list[float]:
    """Failure probabilities of the registry's version 1 (the champion) on ``day_rows``."""
    import mlflow

    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/1")
    x = day_rows.loc[sensors, list(model.feature_names_in_)].astype("float64")
    return list(model.predict_proba(x)[:, 1])


def test_predict_as_of_uses_the_features_known_then(api, platform):
    sensors = platform.sensors

    answers = {}

    def scores(**extra) -> list[float]:
        response = api.post("/predict", json={"sensor_ids": sensors, **extra})
        assert response.status_code == 200, response.text
        answers[extra.get("as_of")] = body = response.json()
        assert [p["sensor_id"] for p in body["predictions"]] == sensors
        return [p["failure_probability"] for p in body["predictions"]]

    # By hand: a day's row is stamped at its last microsecond, so at noon on 01-10 the newest
    # rows known are 01-09's (01-10's is stamped 01-10T23:59:59.999999), while the online store
    # holds 02-04's. Expected scores: the champion applied to those rows as read from the lake.
    early_rows, latest_rows = gold_rows(platform.work, "2024-01-09"), gold_rows(platform.work, DAY)
    expected_early = champion_scores(early_rows, sensors)
    expected_latest = champion_scores(latest_rows, sensors)
    # The days' features differ, and so do the scores: the check below can tell them apart.
    assert not early_rows.loc[sensors].equals(latest_rows.loc[sensors])
    assert expected_early != pytest.approx(expected_latest)

    latest = scores()
    assert latest == pytest.approx(expected_latest, rel=1e-9)
    # As of the end of the online day: the same rows from the offline store.
    assert scores(as_of="2024-02-04T23:59:59.999999Z") == pytest.approx(expected_latest, rel=1e-9)
    early = scores(as_of="2024-01-10T12:00:00")  # naive: UTC
    assert early == pytest.approx(expected_early, rel=1e-9)
    assert early != pytest.approx(latest)
    assert answers["2024-01-10T12:00:00"]["as_of"].startswith("2024-01-10T12:00:00")
    assert answers[None]["as_of"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sensor_ids": []}, 422),  # empty batch
        ({"sensor_ids": ["s"] * 501}, 422),  # oversized batch
        ({"sensor_ids": [""]}, 422),
        ({"sensors": ["sensor-001"]}, 422),  # wrong field
        ({"sensor_ids": ["sensor-001"], "extra": 1}, 422),
        ({"sensor_ids": "sensor-001"}, 422),
        ({"sensor_ids": ["sensor-001"], "as_of": "yesterday"}, 422),
        ({"sensor_ids": ["no-such-sensor", "sensor-001"]}, 404),
    ],
)
def test_bad_requests_get_clear_4xx_errors(api, body, status):
    response = api.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    if status == 404:
        assert response.json()["detail"]["unknown"] == ["no-such-sensor"]


def test_malformed_and_oversized_bodies(api):
    broken = api.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
    huge = api.post("/predict", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "Traceback" not in huge.text
    # Chunked, with no content-length: counted as it arrives.
    chunks = (b'{"sensor_ids": [' + b'"s",' * 2000 for _ in range(20))
    chunked = api.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_an_api_key_protects_predict_when_configured(platform):
    from fastapi.testclient import TestClient

    platform.mp.setenv("ML_PLATFORM_API_KEY", "s3cret-for-tests")
    try:
        with TestClient(platform.create_app(reload_interval_s=3600)) as keyed:
            body = {"sensor_ids": ["sensor-001"]}
            assert keyed.post("/predict", json=body).status_code == 401
            wrong = keyed.post("/predict", json=body, headers={"x-api-key": "nope"})
            assert wrong.status_code == 401
            odd = keyed.post(
                "/predict", json=body, headers={"x-api-key": "s3crét".encode("latin-1")}
            )
            assert odd.status_code == 401
            ok = keyed.post("/predict", json=body, headers={"x-api-key": "s3cret-for-tests"})
            assert ok.status_code == 200
            assert keyed.get("/health").status_code == 200  # probes stay open
            # /docs offers the key ("Authorize"): an apiKey scheme in the X-API-Key header,
            # required by /predict only.
            spec = keyed.get("/openapi.json").json()
            schemes = spec["components"]["securitySchemes"]
            assert [(s["type"], s["in"], s["name"]) for s in schemes.values()] == [
                ("apiKey", "header", "X-API-Key")
            ]
            [scheme] = schemes
            assert spec["paths"]["/predict"]["post"]["security"] == [{scheme: []}]
            assert all("security" not in spec["paths"][p]["get"] for p in ("/health", "/ready"))
    finally:
        platform.mp.delenv("ML_PLATFORM_API_KEY")


def test_schema_driven_fuzzing_finds_no_server_error(api):
    """Hypothesis draws requests from the OpenAPI spec of every operation: no answer is a 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in operations} >= {("POST", "/predict")}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def fuzz(case) -> None:
            response = case.call()
            assert response.status_code < 500, (case.path, case.body, response.text[:300])

        fuzz()


def test_moving_the_alias_swaps_the_model_without_a_failed_request(platform):
    """A stream of requests while the champion alias moves: every request succeeds and the
    version in the answers changes exactly once."""
    from fastapi.testclient import TestClient

    run(platform.instance, [failure_model], partition_key=WEEK,
        config=model_config(**{**SMALL, "seed": 1}))  # fmt: skip
    with TestClient(platform.create_app(reload_interval_s=0.2)) as streaming:
        versions, failures, done = [], [], threading.Event()

        def stream() -> None:
            while not done.is_set():
                response = streaming.post("/predict", json={"sensor_ids": platform.sensors[:5]})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.append(response.json()["model_version"])

        worker = threading.Thread(target=stream)
        worker.start()
        time.sleep(1.0)
        mlflow_client().set_registered_model_alias(MODEL_NAME, "champion", "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not versions or versions[-1] != "2"):
            time.sleep(0.1)
        time.sleep(0.5)
        done.set()
        worker.join(30)
    mlflow_client().set_registered_model_alias(MODEL_NAME, "champion", "1")
    assert not failures
    changes = [b for a, b in zip(versions, versions[1:], strict=False) if a != b]
    assert versions[0] == "1" and versions[-1] == "2" and changes == ["2"], versions


def test_the_served_api_caps_batches_and_logs_one_json_line_per_request(platform, tmp_path):
    """``make serve``'s command with ``ML_PLATFORM_API_MAX_BATCH=3``: three sensors are scored,
    four are refused naming the limit, and stderr holds exactly one JSON line per request."""
    import json
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    from ml_platform_tests.servers import ROOT, free_port, stop_process_group

    port = free_port()
    log = tmp_path / "api.log"
    with log.open("w") as err:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("uvicorn")), "--factory",
             "ml_platform.serving.app:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log"],
            cwd=ROOT, env={**os.environ, "ML_PLATFORM_API_MAX_BATCH": "3"},
            stdout=subprocess.DEVNULL, stderr=err, process_group=0,
        )  # fmt: skip

    def call(path: str, body: dict | None = None, request_id: str = "") -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json", "x-request-id": request_id}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if call("/health", request_id="warm-up")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        scored, body = call("/predict", {"sensor_ids": platform.sensors[:3]}, "three")
        assert scored == 200 and len(json.loads(body)["predictions"]) == 3
        refused, body = call("/predict", {"sensor_ids": platform.sensors[:4]}, "four")
        assert refused == 422 and "at most 3" in body
        assert call("/model", request_id="model")[0] == 200
    finally:
        stop_process_group(server)
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    requests = [e for e in entries if e.get("message") == "request"]
    mine = [
        (e["request_id"], e["path"], e["status"]) for e in requests if e["request_id"] != "warm-up"
    ]
    assert mine == [("three", "/predict", 200), ("four", "/predict", 422), ("model", "/model", 200)]
    assert all(isinstance(e["ms"], float) and e["at"] for e in requests)
