"""End to end: upload to the S3 API -> landing sensor in the real daemon -> run on a PostgreSQL instance.

The instance uses the deployed profile's ``docker/dagster.yaml``, so this also
proves that configuration works (among it: one ingest run per dataset at a time).
"""

import io
import json
import math
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType, TickStatus

from ml_platform.devstack import flow
from ml_platform.lib import paths
from ml_platform.lib.landing import LandingCursor
from ml_platform_tests.feature_helpers import copy_feature_repo
from ml_platform_tests.helpers import READINGS_HEADER as HEADER
from ml_platform_tests.helpers import table_rows
from ml_platform_tests.servers import dagster_daemon

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
GOOD = (HEADER + "2024-05-01T10:00:00Z,s1,50,2,5,20\n2024-05-02T10:00:00Z,s2,51,2,5,21\n").encode()
INGEST_JOB = "ingest_readings_job"
LANDING_SENSOR = "readings_landing_sensor"
LAKEHOUSE_SENSOR = "lakehouse_on_new_readings_sensor"
CHECK = "landed_files_pass_their_contract"


@pytest.fixture
def daemon_env() -> dict[str, str]:
    """Extra environment of the daemon (and so of its code server); a test overrides it with
    ``@pytest.mark.parametrize("daemon_env", [...])``."""
    return {}


@pytest.fixture
def deployed(tmp_path, postgres, s3_env, monkeypatch, daemon_env):
    """A DAGSTER_HOME with docker/dagster.yaml on a fresh PostgreSQL database, and a daemon."""
    db = f"dagster_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    env = {
        **s3_env,
        **postgres.dagster_env(db),
        "ML_PLATFORM_SENSOR_INTERVAL_S": "1",
        # Automation reaches the feature store: keep its state out of the checkout.
        "ML_PLATFORM_FEAST_REPO": str(copy_feature_repo(tmp_path / "feature_repo")),
        **daemon_env,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log = tmp_path / "daemon.log"
    with dagster_daemon(tmp_path / "dagster_home", {**os.environ}, log) as (instance, daemon):
        yield instance, daemon
    if daemon.returncode not in (0, -signal.SIGTERM):
        print(log.read_text()[-5000:])


# --- reading the instance -----------------------------------------------------------------------


run_versions = flow.ingest_versions


def ingest_runs(instance, version: str | None = None) -> list[dg.DagsterRun]:
    """The readings ingest runs (newest first), or those whose batch holds ``version``."""
    runs = instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB))
    return [r for r in runs if version is None or version in run_versions(r)]


def wait_until(what: str, predicate, daemon, timeout: float = 150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, "the daemon exited"
        if value := predicate():
            return value
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not after {timeout} s")


def root_runs(runs: list[dg.DagsterRun]) -> list[dg.DagsterRun]:
    """The runs the sensor requested (not retries of them, dagster.yaml's run_retries)."""
    return [r for r in runs if "dagster/parent_run_id" not in r.tags]


def wait_for_ingest(instance, version: str, daemon, timeout: float = 150) -> dg.DagsterRun:
    """The newest run of the batch holding ``version`` once it is done: it succeeded, or it
    failed and no retry of it is coming."""

    def finished():
        runs = ingest_runs(instance, version)
        if not runs or not runs[0].is_finished:
            return None
        if runs[0].status == dg.DagsterRunStatus.SUCCESS:
            return runs[0]
        return runs[0] if runs[0].tags.get("dagster/will_retry") == "false" else None

    return wait_until(f"a finished ingest run of {version}", finished, daemon, timeout)


def materialization_metadata(instance, run_id: str) -> dict:
    [record] = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return record.event_log_entry.asset_materialization.metadata


def file_outcomes(instance, run_id: str) -> list[dict]:
    """The rows of the run's ``file_outcomes`` table (one per file of its batch)."""
    table = materialization_metadata(instance, run_id)["file_outcomes"].value
    return [dict(r.data) for r in table.records]


def contract_check(instance, run_id: str):
    """The run's evaluation of the WARN check on the batch's files."""
    evaluations = [
        r.event_log_entry.dagster_event.event_specific_data
        for r in instance.get_records_for_run(
            run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
    ]
    [evaluation] = [e for e in evaluations if e.check_name == CHECK]
    return evaluation


def sensor_state(instance, name: str):
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.origin.instigator_name == name:
            return state
    return None


def ticks(instance, name: str, after: float | None = None) -> list:
    """The sensor's ticks (newest first), started after ``after`` (epoch seconds)."""
    state = sensor_state(instance, name)
    if state is None:
        return []
    return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after))


def set_sensor(instance, name: str, status: InstigatorStatus) -> None:
    """Turn a sensor off or on as the UI does (its stored state; the cursor stays)."""
    state = sensor_state(instance, name)
    assert state is not None, f"the daemon has not ticked {name} yet"
    instance.update_instigator_state(state.with_status(status))


def ledger(client, bucket: str, version: str) -> dict:
    key = paths.ledger_object("readings", paths.file_id(version))
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def landing_day(client, bucket: str, key: str) -> str:
    return paths.landing_day(client.head_object(Bucket=bucket, Key=key)["LastModified"])


def keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


# --- one file through the whole flow -------------------------------------------------------------


def test_upload_to_s3_runs_raw_readings_through_the_daemon_on_postgres(deployed, s3_server, s3_env):
    instance, daemon = deployed
    assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]

    uploaded = time.monotonic()
    etag = client.put_object(Bucket=bucket, Key="landing/readings/e2e/good.csv", Body=GOOD)["ETag"]
    version = paths.partition_key("e2e/good.csv", etag)
    run = wait_for_ingest(instance, version, daemon)
    elapsed = time.monotonic() - uploaded
    print(f"\nupload_to_raw_success_s={elapsed:.2f}")
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["dagster/sensor_name"] == LANDING_SENSOR
    assert run_versions(run) == [version]  # a batch of the one new file
    [root] = root_runs(ingest_runs(instance, version))
    day = landing_day(client, bucket, "landing/readings/e2e/good.csv")
    assert run.tags["dagster/partition"] == day
    assert instance.get_materialized_partitions(dg.AssetKey("raw_readings")) == {day}
    [row] = file_outcomes(instance, run.run_id)
    assert (row["version"], row["outcome"], row["rows"]) == (version, "ingested", 2)
    assert contract_check(instance, run.run_id).passed
    entry = ledger(client, bucket, version)
    assert (entry["outcome"], entry["run_id"], entry["rows"]) == ("ingested", run.run_id, 2)
    bronze = client.list_objects_v2(Bucket=bucket, Prefix="lake/bronze/readings/")["Contents"]
    assert sorted(o["Key"] for o in bronze) == [
        paths.bronze_part("readings", d, paths.file_id(version))
        for d in ("2024-05-01", "2024-05-02")
    ]

    # The lakehouse sensor turns the file's two days into one run of chunks and aggregates.
    lakehouse_runs = dg.RunsFilter(tags={"dagster/sensor_name": LAKEHOUSE_SENSOR})

    def lakehouse_finished():
        runs = instance.get_runs(lakehouse_runs)
        return runs if runs and all(r.is_finished for r in runs) else None

    [lakehouse] = wait_until("the lakehouse run", lakehouse_finished, daemon)
    print(f"upload_to_aggregates_s={time.monotonic() - uploaded:.2f}")
    assert lakehouse.status == dg.DagsterRunStatus.SUCCESS
    assert (lakehouse.tags["dagster/asset_partition_range_start"],
            lakehouse.tags["dagster/asset_partition_range_end"]) == ("2024-05-01", "2024-05-02")  # fmt: skip
    silver = client.list_objects_v2(Bucket=bucket, Prefix="lake/silver/")["Contents"]
    assert sorted(o["Key"] for o in silver) == [
        paths.chunk_object(d, f"sensor_id={s}")
        for d, s in (("2024-05-01", "s1"), ("2024-05-02", "s2"))
    ]
    for d in ("2024-05-01", "2024-05-02"):
        client.head_object(Bucket=bucket, Key=paths.aggregates_object(d))

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

    # A rejected file: its run succeeds, the file is quarantined with its reason, and the run's
    # WARN check says so.
    bad_etag = client.put_object(
        Bucket=bucket, Key="landing/readings/e2e/bad.csv", Body=HEADER.encode()
    )["ETag"]
    bad = paths.partition_key("e2e/bad.csv", bad_etag)
    bad_run = wait_for_ingest(instance, bad, daemon)
    assert bad_run.status == dg.DagsterRunStatus.SUCCESS
    assert run_versions(bad_run) == [bad]
    [row] = file_outcomes(instance, bad_run.run_id)
    assert (row["version"], row["outcome"], row["reason"]) == (bad, "quarantined", "no_rows")
    evaluation = contract_check(instance, bad_run.run_id)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["quarantined_count"].value == 1
    [listed] = table_rows(evaluation.metadata["quarantined"].value)
    assert listed["reason"] == "no_rows" and listed["object"].endswith("/e2e/bad.csv")
    record = paths.quarantine_record("readings", paths.file_id(bad), "e2e/bad.csv")
    assert json.loads(client.get_object(Bucket=bucket, Key=record)["Body"].read())["reason"] == (
        "no_rows"
    )
    assert (ledger(client, bucket, bad)["outcome"], ledger(client, bucket, bad)["reason"]) == (
        "quarantined",
        "no_rows",
    )
    assert not [k for k in keys(client, bucket, paths.BRONZE) if paths.file_id(bad) in k]

    # The same bytes re-put: the same version, already in the ledger, so the tick that sees it
    # requests nothing. Waited for on the sensor's own cursor (past the re-put), not a sleep.
    time.sleep(1.1)  # a later LastModified second: the listing cursor takes it as new
    reput = time.time()
    client.put_object(Bucket=bucket, Key="landing/readings/e2e/good.csv", Body=GOOD)
    modified = client.head_object(Bucket=bucket, Key="landing/readings/e2e/good.csv")[
        "LastModified"
    ]

    def past_it():
        state = sensor_state(instance, LANDING_SENSOR)
        cursor = LandingCursor.from_json(state.instigator_data.cursor)
        return cursor.hwm is not None and cursor.hwm >= modified

    wait_until("a landing sensor tick that saw the re-put", past_it, daemon, 90)
    # Every tick that ended after the re-put (one begun before it may have listed after it).
    after = [
        t for t in ticks(instance, LANDING_SENSOR, after=reput - 120)
        if t.is_completed and (t.end_timestamp or 0) >= reput
    ]  # fmt: skip
    assert after and not [t.run_keys for t in after if t.run_keys], [t.run_keys for t in after]
    assert [r.run_id for r in root_runs(ingest_runs(instance, version))] == [root.run_id]
    assert ledger(client, bucket, version)["run_id"] == run.run_id


# --- micro-batches -------------------------------------------------------------------------------

#: Files of the burst, the one bad file among them, and the batch cap set for the test.
BURST, BAD_AT, MAX_FILES = 300, 137, 120
BURST_DAY = "2024-05-03"


def burst_file(i: int) -> bytes:
    """A small valid readings file: three rows of one sensor of its own, on one day."""
    if i == BAD_AT:
        return HEADER.encode()  # header only: rejected with reason no_rows
    return (
        HEADER + f"{BURST_DAY}T00:00:00Z,mb-{i:03d},{40 + i % 50},2,5,20\n"
        f"{BURST_DAY}T01:00:00Z,mb-{i:03d},{41 + i % 50}.5,2,5,21\n"
        f"{BURST_DAY}T02:00:00Z,mb-{i:03d},{42 + i % 50},3,6,22\n"
    ).encode()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("daemon_env", [{"ML_PLATFORM_BATCH_MAX_FILES": str(MAX_FILES)}])
def test_a_burst_of_300_files_is_ingested_in_a_few_batch_runs(deployed, s3_server, s3_env):
    """300 small files put at once (one of them rejected) become ceil(300 / 120) = 3 runs of
    120, 120 and 60 files (4 if a tick saw a first part of the burst), one at a time
    (dagster.yaml), each version ingested or quarantined exactly once and listed in its run's
    metadata."""
    instance, daemon = deployed
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    prefix = paths.LANDING_PREFIXES["readings"]

    # The landing sensor is off while the burst lands, so that one tick sees (nearly) all of it;
    # a tick the daemon had begun before the stop may still see a first part. The lakehouse
    # sensor stays off (this test is about landing and ingest, its runs would only load the
    # machine).
    wait_until(
        "a first completed landing tick",
        lambda: (
            [t for t in ticks(instance, LANDING_SENSOR) if t.is_completed]
            and sensor_state(instance, LAKEHOUSE_SENSOR)
        ),
        daemon,
        120,
    )
    stopped = time.time()
    for name in (LANDING_SENSOR, LAKEHOUSE_SENSOR):
        set_sensor(instance, name, InstigatorStatus.STOPPED)
    time.sleep(3)  # a daemon loop that read the running state before the stop has its tick now
    wait_until(
        "no landing tick in progress",
        lambda: all(t.status != TickStatus.STARTED for t in ticks(instance, LANDING_SENSOR)),
        daemon,
        60,
    )
    assert ingest_runs(instance) == []

    bodies = {f"burst/r{i:03d}.csv": burst_file(i) for i in range(BURST)}

    def put(name: str) -> str:
        etag = client.put_object(Bucket=bucket, Key=prefix + name, Body=bodies[name])["ETag"]
        return paths.partition_key(name, etag)

    with ThreadPoolExecutor(8) as pool:
        versions = dict(zip(bodies, pool.map(put, bodies), strict=True))  # name -> version
    bad = versions[f"burst/r{BAD_AT:03d}.csv"]
    days = {versions[n]: landing_day(client, bucket, prefix + n) for n in bodies}

    started = time.monotonic()
    set_sensor(instance, LANDING_SENSOR, InstigatorStatus.RUNNING)

    def lineage(root: dg.DagsterRun, runs: list[dg.DagsterRun]) -> list[dg.DagsterRun]:
        """A batch's root run and its retries (dagster.yaml retries a run whose worker died)."""
        return [r for r in runs if root.run_id in (r.run_id, r.tags.get("dagster/root_run_id"))]

    def settled():
        runs = ingest_runs(instance)
        roots = root_runs(runs)
        covered = {v for r in roots for v in run_versions(r)}
        if covered != set(versions.values()) or not all(r.is_finished for r in runs):
            return None
        for root in roots:
            tries = lineage(root, runs)  # newest first
            failed = tries[0].status != dg.DagsterRunStatus.SUCCESS
            if failed and tries[0].tags.get("dagster/will_retry") != "false":
                return None  # a retry is coming
        return runs

    wait_until("the burst's runs", settled, daemon, 480)
    took = time.monotonic() - started
    # Nothing more comes: a tick after the last run finished requests nothing.
    done = time.time()
    wait_until(
        "a landing tick after the runs",
        lambda: [t for t in ticks(instance, LANDING_SENSOR, after=done) if t.is_completed],
        daemon,
        60,
    )
    everything = ingest_runs(instance)
    roots = list(reversed(root_runs(everything)))  # oldest first
    by_id = {r.run_id: r for r in roots}
    requesting = sorted(
        (t for t in ticks(instance, LANDING_SENSOR, after=stopped) if t.run_ids),
        key=lambda t: t.timestamp,
    )
    split = [[len(run_versions(by_id[i])) for i in t.run_ids] for t in requesting]
    print(f"\nburst_files={BURST} batch_runs={len(roots)} batch_files_per_tick={split} "
          f"retries={len(everything) - len(roots)} upload_to_ingested_s={took:.1f}")  # fmt: skip
    assert all(r.tags["dagster/sensor_name"] == LANDING_SENSOR for r in roots)
    # The runs are those of the ticks, and each tick's are hand-computed from the caps: it takes
    # up to 4 x 120 = 480 new versions (so all it sees) and splits them, per landing day, into
    # runs of at most 120 files in landing order (the bytes are far below 1 GiB).
    assert sorted(i for t in requesting for i in t.run_ids) == sorted(by_id)
    for t, sizes in zip(requesting, split, strict=True):
        seen: dict[str, int] = {}
        for i in t.run_ids:
            for v in run_versions(by_id[i]):
                seen[days[v]] = seen.get(days[v], 0) + 1
        expected = [
            n for day in sorted(seen) for n in [MAX_FILES] * (seen[day] // MAX_FILES)
            + ([seen[day] % MAX_FILES] if seen[day] % MAX_FILES else [])
        ]  # fmt: skip
        assert sizes == expected, (split, seen)
    # A handful: ceil(300 / 120) = 3 when one tick saw the whole burst, one more when a tick
    # begun before the stop saw a first part of it.
    # (and one more per UTC midnight the upload crossed).
    extra = len(set(days.values())) - 1
    assert len(requesting) <= 2, split
    assert len(roots) <= math.ceil(BURST / MAX_FILES) + 1 + extra, split
    if len(requesting) == 1 and not extra:
        assert split == [[120, 120, 60]]
    # Each batch ends in a successful run (the root, or a retry of it with the same batch).
    runs = []
    for root in roots:
        tries = lineage(root, everything)
        assert all(run_versions(r) == run_versions(root) for r in tries)
        assert tries[0].status == dg.DagsterRunStatus.SUCCESS, [r.status for r in tries]
        runs += [r for r in tries if r.status == dg.DagsterRunStatus.SUCCESS]

    # Each version in exactly one batch; the successful runs never overlapped (one ingest run
    # per dataset at a time).
    configured = [v for r in roots for v in run_versions(r)]
    assert sorted(configured) == sorted(versions.values())
    records = [instance.get_run_record_by_id(r.run_id) for r in runs]
    spans = sorted((rec.start_time, rec.end_time) for rec in records)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans

    # Every successful run's metadata lists its files, each with its outcome; across them each
    # version is ingested or quarantined exactly once, the bad one quarantined with its reason
    # (a run after the one that decided it could only say already_...).
    reported: dict[str, list[tuple[str, str]]] = {}
    for r in runs:
        meta = materialization_metadata(instance, r.run_id)
        rows = file_outcomes(instance, r.run_id)
        assert [row["version"] for row in rows] == run_versions(r)
        assert meta["files"].value == len(run_versions(r))
        fresh = [row for row in rows if not row["outcome"].startswith("already_")]
        for row in fresh:
            reported.setdefault(row["version"], []).append((r.run_id, row["outcome"]))
            if row["outcome"] == "ingested":
                assert (row["rows"], row["days"]) == (3, BURST_DAY), row
        has_bad = any(row["version"] == bad for row in fresh)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
        assert meta["outcomes"].value == counts
        assert counts.get("quarantined", 0) == has_bad
        evaluation = contract_check(instance, r.run_id)
        assert evaluation.passed != has_bad
        assert evaluation.severity == dg.AssetCheckSeverity.WARN
        if has_bad:
            [row] = [row for row in rows if row["version"] == bad]
            assert (row["outcome"], row["reason"]) == ("quarantined", "no_rows")
            [listed] = table_rows(evaluation.metadata["quarantined"].value)
            assert listed["reason"] == "no_rows"
            assert listed["object"].endswith(f"/r{BAD_AT:03d}.csv")
    assert set(reported) == set(versions.values())
    assert all(len(v) == 1 for v in reported.values())
    assert sorted(o for [(_, o)] in reported.values()) == ["ingested"] * 299 + ["quarantined"]

    # The lake: a ledger entry per version naming its run and outcome, bronze for the 299 and a
    # quarantine record for the bad one, no other.
    with ThreadPoolExecutor(8) as pool:
        entries = dict(zip(versions.values(), pool.map(
            lambda v: ledger(client, bucket, v), versions.values()), strict=True))  # fmt: skip
    for v, entry in entries.items():
        [(run_id, outcome)] = reported[v]
        assert (entry["version"], entry["outcome"], entry["run_id"]) == (v, outcome, run_id)
    assert entries[bad]["reason"] == "no_rows" and entries[bad]["parts"] == []
    good = [v for v in versions.values() if v != bad]
    assert sorted(keys(client, bucket, paths.BRONZE + "readings/")) == sorted(
        paths.bronze_part("readings", BURST_DAY, paths.file_id(v)) for v in good
    )
    name = f"r{BAD_AT:03d}.csv"
    copy = paths.quarantine_object("readings", paths.file_id(bad), name)
    record = paths.quarantine_record("readings", paths.file_id(bad), name)
    assert sorted(keys(client, bucket, "landing/quarantine/")) == sorted([copy, record])
    assert client.get_object(Bucket=bucket, Key=copy)["Body"].read() == HEADER.encode()
    assert json.loads(client.get_object(Bucket=bucket, Key=record)["Body"].read())["reason"] == (
        "no_rows"
    )

    # Bronze holds exactly the rows of the 299 files, as pandas reads them from the uploads.
    expected = pd.concat(
        [pd.read_csv(io.BytesIO(body)) for name, body in bodies.items() if versions[name] != bad]
    )
    expected["timestamp"] = pd.to_datetime(expected["timestamp"], utc=True)

    def part(v: str) -> pd.DataFrame:
        key = paths.bronze_part("readings", BURST_DAY, paths.file_id(v))
        return pd.read_parquet(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))

    with ThreadPoolExecutor(8) as pool:
        bronze = pd.concat(list(pool.map(part, good)))
    columns = list(expected.columns)
    assert len(bronze) == 299 * 3
    pd.testing.assert_frame_equal(
        bronze[columns].sort_values(["sensor_id", "timestamp"]).reset_index(drop=True),
        expected[columns].sort_values(["sensor_id", "timestamp"]).reset_index(drop=True),
        check_dtype=False,
    )
