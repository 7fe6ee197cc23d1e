"""The production profile end to end, as ``make dev-prod`` starts it: PostgreSQL instance, S3 API,
MLflow server (PostgreSQL backend, S3 artifacts), gRPC code location, webserver, daemon and the
prediction API, all on loopback.

Nothing is launched by hand: readings and labels are put to S3, and the sensors, Declarative
Automation and the first-model sensor carry them to a champion model; then the next day's
readings file is put, and its prediction file appears in S3. Each upload is ingested by one
batch run of the landing sensor (its versions in the run config).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from benchmarks import prod
from benchmarks.run import PROD_RESULTS_ENV
from ml_platform.devstack import flow
from ml_platform.devstack.stack import prod_stack
from ml_platform.lib import paths

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DAYS, SENSORS = 28, 8
INTERVAL_S = 1  # seconds between sensor ticks (the stack's default is 5)


def ingest_batches(instance, dataset: str) -> list[tuple[list[str], dg.DagsterRunStatus]]:
    """The dataset's ingest runs, oldest first: the versions of each batch and its status."""
    runs = instance.get_runs(dg.RunsFilter(tags={"ml_platform/ingest": dataset}))
    return [(flow.ingest_versions(r, dataset), r.status) for r in reversed(runs)]


def version_of(s3, path, dataset: str) -> str:
    """The version id of an uploaded file: its key below the prefix and its ETag."""
    key = f"landing/{dataset}/{path.name}"
    return paths.partition_key(path.name, s3.head_object(Bucket="ml-platform", Key=key)["ETag"])


@pytest.mark.timeout(900)
def test_readings_and_labels_put_to_s3_end_as_prediction_files(tmp_path):
    files = flow.generate(tmp_path, days=DAYS, sensors=SENSORS, interval_s=900)
    ports = dict.fromkeys(("s3", "postgres", "mlflow", "grpc", "ui", "api"), 0)
    with prod_stack(ports, extra_env={"ML_PLATFORM_SENSOR_INTERVAL_S": str(INTERVAL_S)}) as stack:
        instance = stack.instance()
        assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
        s3 = stack.s3.client()

        def a_champion_from_one_training_run_of_one_batch_each() -> None:
            version = flow.champion(stack)["version"]
            runs = instance.get_runs(dg.RunsFilter(tags={"ml_platform/kind": "training"}))
            assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
            assert runs[0].tags["dagster/sensor_name"] == "first_model_sensor"
            # Model artifacts went through the MLflow server into the S3 artifact bucket.
            assert s3.list_objects_v2(Bucket="mlflow-artifacts").get("KeyCount", 0) > 0
            # Step logs went to the object store (dagster.yaml: S3ComputeLogManager).
            assert flow.exists(stack, "logs/compute/")
            # Each upload was one batch run of its landing sensor, and succeeded.
            history = version_of(s3, files.history, "readings")
            assert ingest_batches(instance, "readings") == [([history], success)]
            labels = version_of(s3, files.labels, "labels")
            assert ingest_batches(instance, "labels") == [([labels], success)]
            seen.update(champion=version, history=history)

        # 1. History and labels land; nobody launches anything; a champion follows.
        # 2. The next day's readings: its prediction file follows through sensors + automation.
        success, seen = dg.DagsterRunStatus.SUCCESS, {}
        timings = flow.first_champion_then_prediction(
            stack, files, champion_timeout=480, prediction_timeout=300,
            on_champion=a_champion_from_one_training_run_of_one_batch_each,
        )  # fmt: skip
        print(f"\n{timings}\n{flow.timeline(instance)}")
        if out := os.environ.get(PROD_RESULTS_ENV):  # the CI benchmark smoke reads it
            Path(out).write_text(json.dumps(prod.result(timings, INTERVAL_S, DAYS, SENSORS)))
        version, history = seen["champion"], seen["history"]
        key = paths.predictions_object(files.day)
        predictions = pd.read_parquet(
            io.BytesIO(s3.get_object(Bucket="ml-platform", Key=key)["Body"].read())
        )
        assert sorted(predictions["sensor_id"]) == sorted(set(predictions["sensor_id"]))
        assert len(predictions) == SENSORS
        assert predictions["failure_probability"].between(0, 1).all()
        assert set(predictions["model_version"].astype(str)) == {str(version)}
        # The file is published before the run's checks finish: wait for the day's runs.
        day_runs = dg.RunsFilter(tags={"dagster/partition": files.day})
        snapshot: list[dg.DagsterRun] = []

        def finished() -> bool:
            snapshot[:] = instance.get_runs(day_runs)
            return all(r.is_finished for r in snapshot)

        flow.wait_until("the day's runs to finish", finished, stack, 120)
        new_day = version_of(s3, files.new_day, "readings")
        assert ingest_batches(instance, "readings") == [
            ([history], success),
            ([new_day], success),
        ]
        runs = snapshot
        # Drift and predictions were requested by automation, nobody launched them.
        assert any("dagster/from_automation_condition" in r.tags for r in runs)
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}

        # 3. The prediction API (hot reload) serves the champion from the online store.
        health = f"{stack.url('api')}/health"
        flow.wait_until(
            "the API's model", lambda: flow.get_json(health)["model_version"], stack, 60
        )
        sensor = str(predictions["sensor_id"].iloc[0])
        answer = flow.get_json(f"{stack.url('api')}/predict", {"sensor_ids": [sensor]})
        assert answer["model_version"] == str(version)
        assert answer["predictions"][0]["sensor_id"] == sensor
        instance.dispose()


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGTERM")], ids=["term", "int-term"])
def test_dev_prod_stops_everything_it_started_on_sigint_and_sigterm(signals):
    """`make dev-prod` stopped while it is still starting, as a process manager stops it (SIGTERM;
    or SIGINT and SIGTERM while it tears down): it exits and no process it started outlives it
    (each service runs in a process group of its own, out of reach of a terminal's Ctrl-C)."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from ml_platform_tests.servers import ROOT

    stack = subprocess.Popen(
        [sys.executable, "-m", "ml_platform.devstack"], cwd=ROOT, env={**os.environ},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(stack.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        names = " ".join(" ".join(_cmdline(p)) for p in seen.values())
        if "mlflow" in names and "moto" in names and "postgres" in names:
            break
        time.sleep(0.2)
    else:
        stack.kill()
        pytest.fail(f"the stack started no MLflow server in 180 s: {names}")
    for name in signals:
        stack.send_signal(getattr(signal, name))
        time.sleep(0.1)
    returncode = stack.wait(timeout=120)
    time.sleep(1)
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left = [" ".join(_cmdline(p))[:120] for p in alive]
    for process in alive:  # leave nothing behind for the next test, then fail
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert (returncode, left) == (0, [])


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []
