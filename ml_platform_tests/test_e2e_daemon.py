"""End to end: upload to the S3 API -> landing sensor in the real daemon -> run on a PostgreSQL instance.

The instance uses the repository's own ``dagster.yaml`` (the deployed profile), so this also
proves that configuration works.
"""

import os
import signal
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.lib import paths
from ml_platform_tests.feature_helpers import copy_feature_repo
from ml_platform_tests.helpers import READINGS_HEADER as HEADER
from ml_platform_tests.servers import dagster_daemon

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[1]
GOOD = (HEADER + "2024-05-01T10:00:00Z,s1,50,2,5,20\n2024-05-02T10:00:00Z,s2,51,2,5,21\n").encode()


@pytest.fixture
def deployed(tmp_path, postgres, s3_env, monkeypatch):
    """A DAGSTER_HOME with the repo's dagster.yaml on a fresh PostgreSQL database, and a daemon."""
    db = f"dagster_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    env = {
        **s3_env,
        **postgres.dagster_env(db),
        "ML_PLATFORM_SENSOR_INTERVAL_S": "1",
        # Automation reaches the feature store: keep its state out of the checkout.
        "ML_PLATFORM_FEAST_REPO": str(copy_feature_repo(tmp_path / "feature_repo")),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log = tmp_path / "daemon.log"
    with dagster_daemon(tmp_path / "dagster_home", {**os.environ}, log) as (instance, daemon):
        yield instance, daemon
    if daemon.returncode not in (0, -signal.SIGTERM):
        print(log.read_text()[-5000:])


def wait_for_run(
    instance, partition_key: str, daemon, timeout: float = 150, tag: str = "dagster/partition"
) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, "the daemon exited"
        runs = instance.get_runs(dg.RunsFilter(tags={tag: partition_key}))
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(0.25)
    raise TimeoutError(f"no finished run for {partition_key} after {timeout} s")


def test_upload_to_s3_runs_raw_readings_through_the_daemon_on_postgres(deployed, s3_server, s3_env):
    instance, daemon = deployed
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]

    uploaded = time.monotonic()
    etag = client.put_object(Bucket=bucket, Key="landing/readings/e2e/good.csv", Body=GOOD)["ETag"]
    key = paths.partition_key("e2e/good.csv", etag)
    run = wait_for_run(instance, key, daemon)
    elapsed = time.monotonic() - uploaded
    print(f"\nupload_to_raw_success_s={elapsed:.2f}")
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/sensor_name"] == "readings_landing_sensor"
    assert key in instance.get_materialized_partitions(dg.AssetKey("raw_readings"))
    bronze = client.list_objects_v2(Bucket=bucket, Prefix="lake/bronze/readings/")["Contents"]
    assert sorted(o["Key"] for o in bronze) == [
        paths.bronze_part("readings", d, paths.file_id(key)) for d in ("2024-05-01", "2024-05-02")
    ]

    # The lakehouse sensor turns the file's two days into one run of chunks and aggregates.
    lakehouse = wait_for_run(instance, key, daemon, tag="ml_platform/source_file")
    print(f"upload_to_aggregates_s={time.monotonic() - uploaded:.2f}")
    assert lakehouse.status == dg.DagsterRunStatus.SUCCESS
    assert (lakehouse.tags["dagster/asset_partition_range_start"],
            lakehouse.tags["dagster/asset_partition_range_end"]) == ("2024-05-01", "2024-05-02")  # fmt: skip
    silver = client.list_objects_v2(Bucket=bucket, Prefix="lake/silver/")["Contents"]
    assert sorted(o["Key"] for o in silver) == [
        paths.chunk_object(d, f"sensor_id={s}")
        for d, s in (("2024-05-01", "s1"), ("2024-05-02", "s2"))
    ]
    for day in ("2024-05-01", "2024-05-02"):
        client.head_object(Bucket=bucket, Key=paths.aggregates_object(day))

    # Declarative Automation (no toggle): the registry is applied and both days reach the online
    # store without anyone asking.
    online = dg.AssetKey("online_features")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and set(instance.get_materialized_partitions(online)) != {
        "2024-05-01",
        "2024-05-02",
    }:
        assert daemon.poll() is None, "the daemon exited"
        time.sleep(0.5)
    assert instance.get_materialized_partitions(online) == {"2024-05-01", "2024-05-02"}
    print(f"upload_to_online_features_s={time.monotonic() - uploaded:.2f}")
    assert instance.get_latest_materialization_event(dg.AssetKey("feature_views")) is not None

    # A rejected file: its run fails, the file is quarantined with its reason.
    bad_etag = client.put_object(
        Bucket=bucket, Key="landing/readings/e2e/bad.csv", Body=HEADER.encode()
    )["ETag"]
    bad_key = paths.partition_key("e2e/bad.csv", bad_etag)
    bad_run = wait_for_run(instance, bad_key, daemon)
    assert bad_run.status == dg.DagsterRunStatus.FAILURE
    record = paths.quarantine_record("readings", paths.file_id(bad_key), "bad.csv")
    assert b'"no_rows"' in client.get_object(Bucket=bucket, Key=record)["Body"].read()

    # The same bytes re-put: same run key, no second run.
    time.sleep(1.1)
    client.put_object(Bucket=bucket, Key="landing/readings/e2e/good.csv", Body=GOOD)
    time.sleep(6)
    assert len(instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}))) == 1
