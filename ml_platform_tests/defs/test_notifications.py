"""Event-driven landing: MinIO bucket notifications in PostgreSQL ("access" format).

Unit tests of the parsing and of the id cursor, then the landing sensor in event mode against a
real PostgreSQL table (the contract's DDL, rows inserted as MinIO's PostgreSQL target inserts
them) and the S3 HTTP API (moto). Readings land in micro-batches (one run per batch of versions,
partitioned by landing day); scoring requests stay one run and one dynamic partition per version.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote_plus

import dagster as dg
import pytest

from ml_platform.defs.ingest.assets import ingest_readings_job
from ml_platform.defs.ingest.sensors import BatchLimits, build_landing_sensor
from ml_platform.defs.partitions import landing_days, scoring_files
from ml_platform.defs.predictions.assets import scoring_job
from ml_platform.defs.resources import build_resources, settings
from ml_platform.lib import paths
from ml_platform.lib.notifications import (
    EventCursor,
    EventRow,
    EventTable,
    Gap,
    MalformedEventError,
    created_keys,
    landing_key,
    parse_row,
    table_identifier,
)
from ml_platform.lib.store import S3Store
from ml_platform_tests.helpers import READINGS_HEADER, ingest_versions, outcomes

PREFIX = "landing/readings/"
SCORING = "landing/scoring/"
#: A file the readings contract accepts, and one it rejects (no sensor_id column).
GOOD_CSV = (READINGS_HEADER + "2024-03-01T10:00:00Z,s1,50,2,5,20\n").encode()
BAD_CSV = b"timestamp,temperature\n2024-03-01T10:00:00Z,4\n"
#: The contract's table (docker/ creates it before MinIO starts publishing).
DDL = (
    "CREATE TABLE {table} (id bigserial PRIMARY KEY, event_time timestamptz NOT NULL, "
    "event_data jsonb NOT NULL)"
)


def minio_record(
    key: str, *, bucket: str = "lake", name: str = "s3:ObjectCreated:Put", etag: str = "e1"
) -> dict:
    """One record as MinIO's ``eventArgs.ToEvent(escape=true)`` builds it: the key escaped with
    Go's ``url.QueryEscape`` (``quote_plus`` with nothing safe), no ETag/size for removals."""
    obj = {"key": quote_plus(key, safe=""), "sequencer": "17E0A1B2C3D4E5F6"}
    if not name.startswith("s3:ObjectRemoved:"):
        obj |= {"size": 12, "eTag": etag, "contentType": "text/csv", "userMetadata": {}}
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": name,
        "userIdentity": {"principalId": "platform"},
        "requestParameters": {"principalId": "platform", "region": "", "sourceIPAddress": "::1"},
        "responseElements": {"x-amz-request-id": "17E0A1B2C3D4E5F6", "x-minio-origin-endpoint": ""},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "platform"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
        "source": {"host": "::1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7"},
    }


def access_row(record: dict) -> dict:
    """``event_data`` of MinIO's PostgreSQL target, access format: ``{"Records": [record]}``."""
    return {"Records": [record]}


# --- Parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("landing/readings/a.csv", "landing/readings/a.csv"),
        ("landing/readings/my data + more.csv", "landing/readings/my data + more.csv"),
        ("landing/readings/café/100%.csv", "landing/readings/café/100%.csv"),
    ],
)
def test_keys_are_url_decoded_as_minio_encodes_them(key, expected):
    record = minio_record(key)
    assert "/" not in record["s3"]["object"]["key"]  # QueryEscape encodes "/" as %2F
    if " " in key:
        assert "+" in record["s3"]["object"]["key"]  # and a space as "+"
    (event,) = parse_row(7, access_row(record))
    assert (event.event_id, event.bucket, event.key) == (7, "lake", expected)
    assert (event.etag, event.size, event.is_created) == ("e1", 12, True)


def test_both_minio_wrappings_and_text_jsonb_parse_the_same():
    record = minio_record("landing/readings/a b.csv", etag='"quoted"')
    logged = {"EventName": "s3:ObjectCreated:Put", "Key": "lake/landing/readings/a b.csv"}
    plain = parse_row(1, access_row(record))
    assert parse_row(1, {**logged, "Records": [record]}) == plain
    assert parse_row(1, json.dumps(access_row(record))) == plain
    assert plain[0].etag == "quoted"


@pytest.mark.parametrize(
    ("name", "bucket", "key", "expected"),
    [
        ("s3:ObjectCreated:Put", "lake", "tenant/landing/readings/x.csv", "landing/readings/x.csv"),
        ("s3:ObjectCreated:CompleteMultipartUpload", "lake", "tenant/landing/readings/x.csv", "landing/readings/x.csv"),
        ("ObjectCreated:Copy", "lake", "tenant/landing/readings/x.csv", "landing/readings/x.csv"),
        ("s3:ObjectRemoved:Delete", "lake", "tenant/landing/readings/x.csv", None),
        ("s3:ObjectAccessed:Get", "lake", "tenant/landing/readings/x.csv", None),
        ("s3:ObjectCreated:Put", "other", "tenant/landing/readings/x.csv", None),
        ("s3:ObjectCreated:Put", "lake", "landing/readings/x.csv", None),
        ("s3:ObjectCreated:Put", "lake", "tenant/landing/labels/x.csv", None),
        ("s3:ObjectCreated:Put", "lake", "tenant/landing/readings-old/x.csv", None),
        ("s3:ObjectCreated:Put", "lake", "tenant/landing/readings/folder/", None),
    ],
)  # fmt: skip
def test_only_objects_created_under_the_store_and_landing_prefix_count(name, bucket, key, expected):
    (event,) = parse_row(1, access_row(minio_record(key, bucket=bucket, name=name)))
    assert landing_key(event, bucket="lake", store_prefix="tenant/", prefix=PREFIX) == expected


def test_malformed_rows_are_rejected():
    for bad in ({}, {"Records": "x"}, {"Records": [{"eventName": "s3:ObjectCreated:Put"}]}, "[1]"):
        with pytest.raises(MalformedEventError, match="event 3"):
            parse_row(3, bad)
    row = EventRow(2, datetime.now(UTC), access_row(minio_record("landing/readings/ok.csv")))
    assert created_keys(row, bucket="lake", store_prefix="", prefix=PREFIX) == [
        "landing/readings/ok.csv"
    ]


@pytest.mark.parametrize("name", ["x; DROP TABLE t", "1abc", "a-b", "public.t", "", "a" * 64])
def test_the_table_name_must_be_a_plain_identifier(name):
    with pytest.raises(ValueError, match="invalid events table name"):
        EventTable("postgresql://u:p@h/db", name)


def test_settings_switch_event_mode_on_and_hide_the_password():
    assert settings({}).events is None and settings({}).reconcile_interval_s == 3600
    url = "postgresql://platform:s3cret@db:5432/events"
    on = settings({"ML_PLATFORM_EVENTS_URL": url, "ML_PLATFORM_RECONCILE_INTERVAL_S": "600"})
    assert on.events == EventTable(url, "minio_events") and on.reconcile_interval_s == 600
    assert "s3cret" not in repr(on) and "s3cret" not in on.events.describe()
    assert on.events.sqlalchemy_url() == "postgresql+psycopg2://platform:s3cret@db:5432/events"
    assert (
        settings({"ML_PLATFORM_EVENTS_URL": url, "ML_PLATFORM_EVENTS_TABLE": "Ev"}).events.table
        == "Ev"
    )
    assert table_identifier("Ev") == '"ev"'  # MinIO writes it unquoted: PostgreSQL folds it


# --- The id cursor --------------------------------------------------------------------------


def test_the_cursor_waits_for_ids_that_commit_late_without_holding_new_events_back():
    # The first read: ids below the first row are a gap too (in flight, or pruned).
    cursor = EventCursor().advance([3, 4, 6], now=100, gap_timeout_s=60)
    assert (cursor.top, cursor.gaps, cursor.settled) == (6, (Gap(1, 2, 100), Gap(5, 5, 100)), 0)
    # Ids 1, 2 and 5 commit; 9 arrives with 7..8 still invisible.
    cursor = cursor.advance([1, 2, 5, 9], now=110, gap_timeout_s=60)
    assert (cursor.top, cursor.gaps, cursor.settled) == (9, (Gap(7, 8, 110),), 6)
    # Half of a gap fills: the rest keeps its age.
    cursor = cursor.advance([7], now=120, gap_timeout_s=60)
    assert cursor.gaps == (Gap(8, 8, 110),)
    # A rolled-back insert never fills its id: given up on after the timeout.
    cursor = cursor.advance([], now=170, gap_timeout_s=60)
    assert (cursor.top, cursor.gaps, cursor.settled) == (9, (), 9)
    assert EventCursor.from_dict(json.loads(json.dumps(cursor.to_dict()))) == cursor
    assert EventCursor.from_dict(None) == EventCursor()


def test_the_cursor_stays_small():
    cursor = EventCursor().advance(range(2, 1001, 2), now=0, gap_timeout_s=60, max_gaps=10)
    assert cursor.top == 1000 and len(cursor.gaps) == 10
    assert len(json.dumps(cursor.to_dict())) < 300


# --- The sensor against PostgreSQL and S3 ---------------------------------------------------

integration = pytest.mark.integration


class Events:
    """A fresh events database with the contract's table, written as MinIO writes it."""

    def __init__(self, postgres, table: str = "minio_events"):
        self.db = f"events_{uuid.uuid4().hex[:8]}"
        postgres.create_database(self.db)
        self.dsn = postgres.url(self.db, scheme="postgresql")
        self.table = table
        self.source = EventTable(self.dsn, table)  # a bare postgresql:// URL, as users set it
        self.sql(DDL.format(table=table))

    def sql(self, statement: str, *params):
        import psycopg2

        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None

    def insert(self, record: dict, conn=None) -> int:
        """MinIO's statement: ``INSERT INTO <table> (event_time, event_data) VALUES ($1, $2)``."""
        statement = (
            f"INSERT INTO {self.table} (event_time, event_data) VALUES (%s, %s) RETURNING id"
        )
        params = (datetime.now(UTC), json.dumps(access_row(record)))
        if conn is not None:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchone()[0]
        return self.sql(statement, *params)[0][0]


@pytest.fixture
def events(postgres):
    return Events(postgres)


@pytest.fixture
def lake(s3_env, s3_server, monkeypatch):
    """The store at ``s3://<bucket>/tenant`` (a prefix inside the bucket, as deployments may use)."""
    bucket = s3_env["ML_PLATFORM_STORE_URL"][5:]
    monkeypatch.setenv("ML_PLATFORM_STORE_URL", f"s3://{bucket}/tenant")
    client = s3_server.client()

    class Lake:
        name = bucket

        def put(self, key: str, body: bytes) -> str:
            client.put_object(Bucket=bucket, Key=f"tenant/{key}", Body=body)
            return client.head_object(Bucket=bucket, Key=f"tenant/{key}")["ETag"].strip('"')

        def delete(self, key: str) -> None:
            client.delete_object(Bucket=bucket, Key=f"tenant/{key}")

        def day(self, key: str) -> str:
            """The landing day of the object: the UTC date of its LastModified."""
            modified = client.head_object(Bucket=bucket, Key=f"tenant/{key}")["LastModified"]
            return modified.astimezone(UTC).date().isoformat()

        def has(self, key: str) -> bool:
            listed = client.list_objects_v2(Bucket=bucket, Prefix=f"tenant/{key}")
            return any(o["Key"] == f"tenant/{key}" for o in listed.get("Contents", []))

        def record(self, key: str, etag: str, name: str = "s3:ObjectCreated:Put") -> dict:
            return minio_record(f"tenant/{key}", bucket=bucket, name=name, etag=etag)

    return Lake()


@pytest.fixture
def no_listing(monkeypatch):
    """Make any listing of the store fail: event ticks must not list."""

    def refuse(self, prefix):
        raise AssertionError(f"listed {prefix!r} in event mode")

    monkeypatch.setattr(S3Store, "list", refuse)


def make_sensor(events: Events, limits: BatchLimits | None = None) -> dg.SensorDefinition:
    return build_landing_sensor(
        "readings", ingest_readings_job, landing_days, interval_s=1,
        max_requests_per_tick=100, events=events.source, reconcile_interval_s=3600,
        batch=limits or BatchLimits(),
    )  # fmt: skip


def listing_sensor() -> dg.SensorDefinition:
    return build_landing_sensor(
        "readings", ingest_readings_job, landing_days, interval_s=1, max_requests_per_tick=100
    )


def batch(request: dg.RunRequest) -> list[str]:
    """The versions one batch run ingests."""
    return request.run_config["ops"]["raw_readings"]["config"]["versions"]


def versions(requests: list[dg.RunRequest]) -> list[str]:
    """The versions of a tick's requests, flattened in request order."""
    return [v for r in requests for v in batch(r)]


def reconciled(cursor: str | None, at: float | None) -> str:
    """``cursor`` with its last reconciliation at ``at`` (None: due now). From no cursor: one that
    follows the table from its first row (a sensor's own first tick starts at the table's end)."""
    data = json.loads(cursor) if cursor else {"events": {}, "listing": None}
    return json.dumps({**data, "reconciled_at": at})


def tick(sensor, instance, cursor):
    """One evaluation, applying the dynamic-partition requests as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=build_resources())
    result = sensor(context)
    if isinstance(result, dg.SkipReason):  # the listing mode's skip: the cursor stays
        return [], cursor, result
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result.run_requests, result.cursor or cursor, result


def is_skip(result) -> bool:
    return isinstance(result, dg.SkipReason) or bool(result.skip_reason)


def events_cursor(cursor: str) -> dict:
    return json.loads(cursor)["events"]


@integration
def test_each_tick_requests_runs_for_the_new_events_only_without_listing(
    events, lake, instance, no_listing
):
    etag_a = lake.put(f"{PREFIX}a.csv", b"a1")
    etag_b = lake.put(f"{PREFIX}day 1/b + c.csv", b"b1")
    ids = [
        events.insert(lake.record(f"{PREFIX}a.csv", etag_a)),
        events.insert(lake.record("landing/labels/l.csv", "x")),  # another dataset
        events.insert(lake.record(f"{PREFIX}gone.csv", "x", "s3:ObjectRemoved:Delete")),
        events.insert(lake.record(f"{PREFIX}a.csv", etag_a, "s3:ObjectAccessed:Get")),
        events.insert(minio_record(f"tenant/{PREFIX}a.csv", bucket="elsewhere")),
        events.insert(lake.record(f"{PREFIX}day 1/b + c.csv", etag_b)),
    ]
    day = lake.day(f"{PREFIX}a.csv")
    if lake.day(f"{PREFIX}day 1/b + c.csv") != day:
        pytest.skip("the two objects landed on both sides of midnight UTC")
    sensor, start = make_sensor(events), reconciled(None, time.time())
    requests, cursor, result = tick(sensor, instance, start)
    # One batch of the two versions, oldest first, in the day they landed; no partition per file.
    assert [batch(r) for r in requests] == [[f"a.csv@{etag_a}", f"day 1/b + c.csv@{etag_b}"]]
    assert [r.partition_key for r in requests] == [day]
    assert requests[0].tags == {
        "ml_platform/batch_files": "2",
        "ml_platform/first_object": f"s3://{lake.name}/tenant/{PREFIX}a.csv",
    }
    assert result.dynamic_partitions_requests == []
    assert events_cursor(cursor) == {"top": max(ids), "gaps": []}
    # The run key is the batch's: the same tick evaluated again names the same run.
    again, _, _ = tick(sensor, instance, start)
    assert [r.run_key for r in again] == [r.run_key for r in requests]

    # Nothing new: a skip, the same position.
    nothing, same, result = tick(sensor, instance, cursor)
    assert nothing == [] and is_skip(result)
    assert events_cursor(same) == events_cursor(cursor)

    # One new event: one run of that one version, whatever the bucket holds.
    etag_c = lake.put(f"{PREFIX}c.csv", b"c1")
    last = events.insert(lake.record(f"{PREFIX}c.csv", etag_c))
    later, cursor, _ = tick(sensor, instance, cursor)
    assert [batch(r) for r in later] == [[f"c.csv@{etag_c}"]]
    assert [r.partition_key for r in later] == [lake.day(f"{PREFIX}c.csv")]
    assert later[0].run_key != requests[0].run_key
    assert events_cursor(cursor)["top"] == last


@integration
def test_scoring_events_stay_one_run_and_one_dynamic_partition_per_version(
    events, lake, instance, no_listing
):
    sensor = build_landing_sensor(
        "scoring", scoring_job, scoring_files, interval_s=1, max_requests_per_tick=100,
        events=events.source, reconcile_interval_s=3600,
    )  # fmt: skip
    etag_p = lake.put(f"{SCORING}p.csv", b"p1")
    etag_q = lake.put(f"{SCORING}week 2/q.csv", b"q1")
    events.insert(lake.record(f"{SCORING}p.csv", etag_p))
    events.insert(lake.record(f"{PREFIX}r.csv", "x"))  # a readings upload: not this sensor's
    events.insert(lake.record(f"{SCORING}week 2/q.csv", etag_q))
    requests, cursor, result = tick(sensor, instance, reconciled(None, time.time()))
    expected = {
        f"p.csv@{etag_p}": f"s3://{lake.name}/tenant/{SCORING}p.csv",
        f"week 2/q.csv@{etag_q}": f"s3://{lake.name}/tenant/{SCORING}week 2/q.csv",
    }
    assert {r.run_key: r.tags["ml_platform/object"] for r in requests} == expected
    assert all(r.partition_key == r.run_key and not r.run_config for r in requests)
    assert [sorted(d.partition_keys) for d in result.dynamic_partitions_requests] == [
        sorted(expected)
    ]
    assert sorted(instance.get_dynamic_partitions("scoring_files")) == sorted(expected)

    # A duplicated notification: the same run key, so Dagster launches nothing new.
    events.insert(lake.record(f"{SCORING}p.csv", etag_p))
    again, _, _ = tick(sensor, instance, cursor)
    assert [r.run_key for r in again] == [f"p.csv@{etag_p}"]


@integration
def test_the_reconciler_lists_hourly_and_requests_only_what_no_event_announced(
    events, lake, instance, monkeypatch
):
    sensor = make_sensor(events)
    etag_x = lake.put(f"{PREFIX}x.csv", GOOD_CSV)
    events.insert(lake.record(f"{PREFIX}x.csv", etag_x))
    etag_y = lake.put(f"{PREFIX}y.csv", GOOD_CSV + b"2024-03-01T11:00:00Z,s1,51,2,5,20\n")
    etag_z = lake.put(f"{PREFIX}z.csv", BAD_CSV)  # y's and z's notifications were lost
    x, y, z = f"x.csv@{etag_x}", f"y.csv@{etag_y}", f"z.csv@{etag_z}"

    # Within the hour: events only, so y and z are not seen.
    with monkeypatch.context() as m:
        m.setattr(S3Store, "list", lambda self, prefix: pytest.fail("listed"))
        requests, cursor, _ = tick(sensor, instance, reconciled(None, time.time()))
    assert [batch(r) for r in requests] == [[x]]

    # The daemon runs that batch: x is ingested, and the ledger says so. z was quarantined by
    # a person's run (its ledger says that too); y was never ingested.
    assert outcomes(ingest_versions(instance, "readings", batch(requests[0]))) == {x: "ingested"}
    assert outcomes(ingest_versions(instance, "readings", [z])) == {z: "quarantined"}
    ledger = {v: paths.ledger_object("readings", paths.file_id(v)) for v in (x, y, z)}
    assert [lake.has(ledger[v]) for v in (x, y, z)] == [True, False, True]

    # An hour later the tick also lists, and requests y alone (x and z have their ledger).
    requests, cursor, _ = tick(sensor, instance, reconciled(cursor, time.time() - 3601))
    assert [batch(r) for r in requests] == [[y]]
    assert [r.partition_key for r in requests] == [lake.day(f"{PREFIX}y.csv")]
    assert time.time() - json.loads(cursor)["reconciled_at"] < 60
    assert outcomes(ingest_versions(instance, "readings", batch(requests[0]))) == {y: "ingested"}

    # The version ids are the listing mode's own: a listing sensor starting from scratch finds
    # every version in the ledger and requests nothing, and a batch naming them anyway ingests
    # nothing: switching modes never ingests an object twice.
    listing = listing_sensor()
    listed, _, _ = tick(listing, instance, None)
    assert versions(listed) == []
    again = ingest_versions(instance, "readings", [x, y, z])
    assert again.success
    assert outcomes(again) == {
        x: "already_ingested",
        y: "already_ingested",
        z: "already_quarantined",
    }
    # ... and the listing mode resumes from the reconciler's position when events are switched off.
    again, _, result = tick(listing, instance, cursor)
    assert again == [] and is_skip(result)

    # Reconciled: back to events only until the next hour.
    with monkeypatch.context() as m:
        m.setattr(S3Store, "list", lambda self, prefix: pytest.fail("listed"))
        nothing, _, _ = tick(sensor, instance, cursor)
    assert nothing == []


@integration
def test_switching_event_mode_on_starts_at_the_tables_end_and_reconciles_the_past(
    events, lake, instance
):
    etag_old = lake.put(f"{PREFIX}old.csv", b"o")
    for _ in range(3):  # notifications from before: not replayed one by one
        events.insert(lake.record(f"{PREFIX}old.csv", etag_old))
    listing = listing_sensor()
    sensor = make_sensor(events)

    # From no cursor: the past comes from one listing, the events from the table's end.
    requests, cursor, _ = tick(sensor, instance, None)
    assert [batch(r) for r in requests] == [[f"old.csv@{etag_old}"]]
    assert [r.partition_key for r in requests] == [lake.day(f"{PREFIX}old.csv")]
    assert events_cursor(cursor) == {"top": 3, "gaps": []}

    # From the listing mode's cursor: its position is kept, nothing is requested twice.
    _, listing_cursor, _ = tick(listing, instance, None)
    nothing, switched, _ = tick(sensor, instance, listing_cursor)
    assert nothing == [] and json.loads(switched)["listing"] == json.loads(listing_cursor)

    etag_new = lake.put(f"{PREFIX}new.csv", b"n")
    events.insert(lake.record(f"{PREFIX}new.csv", etag_new))
    run_keys = []
    for start in (cursor, switched):
        requests, _, _ = tick(sensor, instance, start)
        assert [batch(r) for r in requests] == [[f"new.csv@{etag_new}"]]
        run_keys += [r.run_key for r in requests]
    assert run_keys[0] == run_keys[1]  # the same batch from either start: one run


@integration
def test_reputs_duplicates_stale_and_deleted_objects(events, lake, instance, no_listing):
    sensor, cursor = make_sensor(events), reconciled(None, time.time())
    etag_1 = lake.put(f"{PREFIX}a.csv", b"v1")
    events.insert(lake.record(f"{PREFIX}a.csv", etag_1))
    first, cursor, _ = tick(sensor, instance, cursor)
    assert [batch(r) for r in first] == [[f"a.csv@{etag_1}"]]

    # The same bytes put again (and a duplicated notification): one version, the same batch and
    # so the same run key, so Dagster launches nothing new.
    assert lake.put(f"{PREFIX}a.csv", b"v1") == etag_1
    events.insert(lake.record(f"{PREFIX}a.csv", etag_1))
    events.insert(lake.record(f"{PREFIX}a.csv", etag_1))
    same, cursor, _ = tick(sensor, instance, cursor)
    assert [batch(r) for r in same] == [[f"a.csv@{etag_1}"]]
    assert [r.run_key for r in same] == [first[0].run_key]

    # New bytes: a new version and run key. The old version's notification arriving late names
    # the current version (its HEAD), never one that is gone.
    etag_2 = lake.put(f"{PREFIX}a.csv", b"v2")
    events.insert(lake.record(f"{PREFIX}a.csv", etag_2))
    events.insert(lake.record(f"{PREFIX}a.csv", etag_1))
    changed, cursor, _ = tick(sensor, instance, cursor)
    assert [batch(r) for r in changed] == [[f"a.csv@{etag_2}"]] and etag_2 != etag_1
    assert changed[0].run_key != first[0].run_key

    # An object deleted before the tick: no request, no error, the event is consumed.
    etag_g = lake.put(f"{PREFIX}gone.csv", b"g")
    last = events.insert(lake.record(f"{PREFIX}gone.csv", etag_g))
    lake.delete(f"{PREFIX}gone.csv")
    nothing, cursor, result = tick(sensor, instance, cursor)
    assert nothing == [] and is_skip(result)
    assert events_cursor(cursor)["top"] == last

    # A row that is not an S3 event is skipped with a warning, not retried forever.
    bad = events.sql(
        f"INSERT INTO {events.table} (event_time, event_data) VALUES (now(), '{{}}') RETURNING id"
    )[0][0]
    nothing, cursor, _ = tick(sensor, instance, cursor)
    assert nothing == [] and events_cursor(cursor)["top"] == bad


@integration
def test_an_id_that_commits_after_a_higher_one_is_still_handled(events, lake, instance, no_listing):
    import psycopg2

    sensor, cursor = make_sensor(events), reconciled(None, time.time())
    etag_early = lake.put(f"{PREFIX}early.csv", b"e")
    etag_late = lake.put(f"{PREFIX}late.csv", b"l")
    slow = psycopg2.connect(events.dsn)  # a transaction holding an id it has not committed yet
    try:
        held = events.insert(lake.record(f"{PREFIX}early.csv", etag_early), conn=slow)
        later = events.insert(lake.record(f"{PREFIX}late.csv", etag_late))
        assert later == held + 1
        requests, cursor, _ = tick(sensor, instance, cursor)
        assert [batch(r) for r in requests] == [[f"late.csv@{etag_late}"]]
        assert events_cursor(cursor)["top"] == later
        assert [g[:2] for g in events_cursor(cursor)["gaps"]] == [[held, held]]
        slow.commit()
    finally:
        slow.close()
    requests, cursor, _ = tick(sensor, instance, cursor)
    assert [batch(r) for r in requests] == [[f"early.csv@{etag_early}"]]
    assert events_cursor(cursor) == {"top": later, "gaps": []}


@integration
def test_requests_are_capped_per_tick_and_every_event_is_handled_once(
    events, lake, instance, no_listing
):
    # 5 files a run, 2 runs a tick: 10 versions a tick.
    limits = BatchLimits(max_files=5, max_bytes=1 << 30, runs_per_tick=2)
    sensor, cursor = make_sensor(events, limits), reconciled(None, time.time())
    keys = []
    for i in range(25):
        etag = lake.put(f"{PREFIX}batch/{i:02d}.csv", f"{i}".encode())
        events.insert(lake.record(f"{PREFIX}batch/{i:02d}.csv", etag))
        keys.append(f"batch/{i:02d}.csv@{etag}")
        last = events.insert(lake.record(f"landing/labels/{i:02d}.csv", "x"))  # not ours
    per_tick, run_keys = [], []
    for _ in range(3):  # other datasets' rows do not count against the cap
        requests, cursor, _ = tick(sensor, instance, cursor)
        per_tick.append([batch(r) for r in requests])
        run_keys += [r.run_key for r in requests]
    assert per_tick == [
        [keys[0:5], keys[5:10]],
        [keys[10:15], keys[15:20]],
        [keys[20:25]],
    ]
    assert len(set(run_keys)) == len(run_keys) == 5
    assert events_cursor(tick(sensor, instance, cursor)[1]) == {"top": last, "gaps": []}

    # The table recreated (ids start again at 1): followed from its first row, not stuck.
    events.sql(f"DROP TABLE {events.table}")
    events.sql(DDL.format(table=events.table))
    etag = lake.put(f"{PREFIX}after-reset.csv", b"r")
    assert events.insert(lake.record(f"{PREFIX}after-reset.csv", etag)) == 1
    requests, cursor, _ = tick(sensor, instance, cursor)
    assert [batch(r) for r in requests] == [[f"after-reset.csv@{etag}"]]


def daemon_tick(sensor, instance, cursor):
    """One tick as the daemon evaluates it (``evaluate_tick``, which also sees a cursor set with
    ``context.update_cursor``): the cursor it stores afterwards (the evaluation's; the one it had
    when the evaluation raised), what the evaluation produced (None if it raised) and the error.
    For ticks that fail or skip: one with partitioned run requests needs a repository."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=build_resources())
    try:
        produced = sensor.evaluate_tick(context)
    except Exception as exc:
        return cursor, None, exc
    return produced.cursor, produced, None


@integration
def test_an_unreachable_events_database_fails_the_tick_and_keeps_the_cursor(
    events, lake, instance, no_listing
):
    from sqlalchemy.exc import OperationalError

    from ml_platform_tests.servers import free_port

    sensor, cursor = make_sensor(events), reconciled(None, time.time())
    etag_a = lake.put(f"{PREFIX}a.csv", b"a")
    events.insert(lake.record(f"{PREFIX}a.csv", etag_a))
    first, cursor, _ = tick(sensor, instance, cursor)
    assert versions(first) == [f"a.csv@{etag_a}"]
    pending, last = [], None
    for name in ("b.csv", "c.csv"):
        etag = lake.put(f"{PREFIX}{name}", name.encode())
        last = events.insert(lake.record(f"{PREFIX}{name}", etag))
        pending.append(f"{name}@{etag}")

    # The same sensor while its events database does not answer (the cursor is its only state).
    down = build_landing_sensor(
        "readings", ingest_readings_job, landing_days, interval_s=1, max_requests_per_tick=100,
        events=EventTable(f"postgresql://u:p@127.0.0.1:{free_port()}/events"),
        reconcile_interval_s=3600, batch=BatchLimits(),
    )  # fmt: skip
    kept, produced, error = daemon_tick(down, instance, cursor)
    # The tick fails: it produces no result, so no cursor, and the daemon keeps the one it had.
    assert produced is None and kept == cursor, produced
    assert isinstance(error, OperationalError)
    # The database answers again: the next tick requests exactly the versions that were pending
    # and moves the cursor to the last of their events.
    recovered, after, _ = tick(sensor, instance, kept)
    assert versions(recovered) == pending
    assert events_cursor(after) == {"top": last, "gaps": []}


def test_event_mode_needs_an_s3_store(store, instance):
    sensor = build_landing_sensor(
        "readings", ingest_readings_job, landing_days, interval_s=1, max_requests_per_tick=10,
        events=EventTable("postgresql://u:p@127.0.0.1:1/events"),
    )  # fmt: skip
    context = dg.build_sensor_context(instance=instance, resources=build_resources())
    with pytest.raises(ValueError, match="not s3://"):
        sensor(context)


def test_the_code_location_switches_all_landing_sensors_to_event_mode():
    import subprocess
    import sys

    code = (
        "import json; from ml_platform.definitions import defs; "
        "print(json.dumps({s.name: s.description for s in defs.sensors if 'landing' in s.name}))"
    )
    env = {
        "ML_PLATFORM_EVENTS_URL": "postgresql://platform:s3cret@db:5432/events",
        "ML_PLATFORM_EVENTS_TABLE": "bucket_events",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True, env={**os.environ, **env},
    )  # fmt: skip
    descriptions = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(descriptions) == {f"{d}_landing_sensor" for d in ("readings", "labels", "scoring")}
    assert all("table bucket_events" in d for d in descriptions.values())
    assert "s3cret" not in out.stdout + out.stderr
