"""Fault injection, issue 8 scenarios 4-7: bad, duplicate, drifted and late uploads.

Every test lands objects in the real S3 API (moto server), evaluates the real landing sensor
(``build_landing_sensor``), executes each run request's partition of ``raw_readings`` on a real
Dagster instance (skipping a run key the sensor already requested, as the daemon does), and then
checks the issue's invariants for every object version landed (:meth:`Lake.check`):

- processed (bronze parts) or quarantined (an ``.error.json`` with a reason): exactly one of the two;
- exactly one run per object version; a further sensor tick requests nothing; the cursor's
  listing has nothing left that is new;
- no partial or temporary object anywhere under ``lake/`` and every quarantined copy has its record;
- re-running a partition gives byte-identical bronze parts (sha256) and the same quarantine record
  (apart from its ``run_id`` and ``rejected_at``).

Each test prints one ``FAULTS`` line with what it measured (run ``pytest -s`` to see them).

==========================================================  =========================================
Scenario (issue 8)                                          Test
==========================================================  =========================================
4  corrupt uploads: truncated CSV, bad Parquet footer,      ``test_corrupt_uploads_in_one_batch``
   zero bytes, binary garbage, UTF-16 with BOM, a 10 MB
   single line, a header only (one batch, one good file)
5  duplicates: same object re-put with identical bytes,     ``test_duplicate_uploads``
   same bytes under another key, changed re-put
6  schema drift: extra column, renamed / missing required   ``test_schema_drift_follows_the_contract``
   column, numbers as strings (CSV quoted, Parquet
   string type), units changed (out of range)
7  out-of-order rows, a late file for an old day, future    ``test_out_of_order_late_future_and_clock_shifted``
   timestamps, one sensor's clock shifted by hours
==========================================================  =========================================

Decisions these tests pin down:

- The same bytes under another key are a separate upload: their own partition and run, their own
  bronze parts (byte-identical to the first key's). Rows are not de-duplicated across files in
  bronze (each part is one upload's lineage); the silver build keeps one row per
  ``(sensor_id, timestamp)``, so downstream sees each reading once.
- A changed re-put is a new version: a new run and new parts; the old version's parts stay
  (silver keeps the newest ingestion for a repeated reading).
- A sensor clock "shifted" means timestamps carrying a UTC offset: rows land on their UTC day,
  byte-identical to the same readings written in UTC. A clock that is simply wrong, without an
  offset, cannot be told apart from real time and lands where it says.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_platform.defs.ingest.assets import raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.lakehouse import distinct_keys
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import open_store
from ml_platform_tests.test_ingest_assets import keys_under
from ml_platform_tests.test_sensor_s3 import make_sensor, tick

pytestmark = pytest.mark.integration
PREFIX = paths.LANDING_PREFIXES["readings"]
HEADER = "timestamp,sensor_id,temperature,vibration,pressure,current"
VOLATILE = {"run_id", "rejected_at"}  # the only record fields a re-run may change


def rows(day: str = "2024-03-01", days: int = 2, sensors: int = 3) -> list[str]:
    """Hourly readings, in time order: ``days`` UTC days from ``day``, ``sensors`` sensors."""
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    out = []
    for h in range(24 * days):
        ts = (start + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for s in range(sensors):
            out.append(f"{ts},s{s},{40 + (h * 7 + s) % 30}.5,{1 + s}.25,{5 + h % 3},{20 + s}")
    return out


def csv(lines: list[str], header: str = HEADER) -> bytes:
    return (header + "\n" + "\n".join(lines) + "\n").encode()


CLEAN = csv(rows())


def parquet(columns: dict[str, list]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Lake:
    """The bucket, the sensor with its cursor, and every object version landed and run."""

    def __init__(self, s3_server, s3_env, instance):
        self.client, self.bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
        self.s3_server, self.s3_env, self.instance = s3_server, s3_env, instance
        self.store = open_store(s3_env["ML_PLATFORM_STORE_URL"])
        self.sensor, self.resources, self.cursor = make_sensor(), build_resources(), None
        self.versions: dict[str, str] = {}  # partition key -> relative key, in landing order
        self.results: dict[str, dg.ExecuteInProcessResult] = {}
        self.requested: list[str] = []  # every run key the sensor handed out
        self.deduped = 0  # requests whose run key had run already (the daemon skips them)

    def put(self, name: str, body: bytes) -> str:
        response = self.client.put_object(Bucket=self.bucket, Key=PREFIX + name, Body=body)
        partition = paths.partition_key(name, response["ETag"])
        self.versions[partition] = name
        return partition

    def tick_and_run(self) -> list[str]:
        """One sensor tick, then each requested run as the daemon launches it. The partitions run."""
        requests, self.cursor, _ = tick(self.sensor, self.instance, self.cursor, self.resources)
        ran = []
        for request in requests:
            self.requested.append(request.run_key)
            tags = {"dagster/run_key": request.run_key, "dagster/sensor_name": self.sensor.name}
            if self.instance.get_runs(filters=dg.RunsFilter(tags=tags)):
                self.deduped += 1
                continue
            self.results[request.partition_key] = self.materialize(
                request.partition_key, {**request.tags, **tags}
            )
            ran.append(request.partition_key)
        return ran

    def materialize(self, partition: str, tags: dict[str, str]) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [raw_readings],
            instance=self.instance,
            partition_key=partition,
            resources=self.resources,
            tags=tags,
            raise_on_error=False,
        )

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def parts(self, partition: str) -> dict[str, str]:
        """The bronze parts of one object version: day -> sha256 of the part's bytes."""
        fid = paths.file_id(partition)
        return {
            paths.bronze_day(k): sha256(self.get(k))
            for k in keys_under(self.s3_server, self.s3_env, paths.BRONZE + "readings/")
            if k.endswith(f"/file={fid}.parquet")
        }

    def record(self, partition: str) -> dict | None:
        key = paths.quarantine_record(
            "readings", paths.file_id(partition), self.versions[partition]
        )
        try:
            return json.loads(self.get(key))
        except self.client.exceptions.NoSuchKey:
            return None

    def meta(self, partition: str) -> dict:
        [mat] = self.results[partition].asset_materializations_for_node("raw_readings")
        return {k: v.value for k, v in mat.metadata.items()}

    def runs(self, partition: str) -> int:
        """Runs of one object version, leaving out the deliberate re-runs of :meth:`rerun`."""
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
        return sum("faults/rerun" not in r.tags for r in runs)

    def check(self) -> dict:
        """The issue's invariants over every version landed; returns what was measured."""
        outcome = {}
        for partition in self.versions:
            parts, record = self.parts(partition), self.record(partition)
            assert bool(parts) != bool(record), f"{partition}: parts={parts} record={record}"
            if record:
                assert (
                    record["reason"] and record["message"] and record["partition_key"] == partition
                )
            assert self.runs(partition) == 1, partition
            assert self.results[partition].success == bool(parts), partition
            outcome[partition] = parts or record["reason"]
        assert len(self.requested) - self.deduped == len(self.versions)
        # The cursor is past every landed object, and one more tick requests nothing.
        left, _ = select_new(
            self.store.list(PREFIX), LandingCursor.from_json(self.cursor), 1_000_000
        )
        assert left == []
        assert self.tick_and_run() == []
        # Nothing partial: only whole bronze parts under lake/, no temporary keys anywhere, and
        # quarantine holds copy + record pairs only.
        everything = keys_under(self.s3_server, self.s3_env, "")
        assert not [k for k in everything if ".tmp-" in k or "partial" in k.lower()]
        lake = [k for k in everything if k.startswith("lake/")]
        assert all(paths.bronze_day(k) for k in lake), lake
        quarantined = [k for k in everything if k.startswith(paths.QUARANTINE)]
        records = {k for k in quarantined if k.endswith(".error.json")}
        assert {k + ".error.json" for k in quarantined if k not in records} == records
        return outcome

    def rerun(self, partitions: list[str]) -> None:
        """Re-running a partition rewrites the same bytes (or the same quarantine record)."""
        for partition in partitions:
            parts, record = self.parts(partition), self.record(partition)
            copy = paths.quarantine_object(
                "readings", paths.file_id(partition), self.versions[partition]
            )
            copy_sha = sha256(self.get(copy)) if record else None
            again = self.materialize(partition, {"faults/rerun": "1"})
            assert again.success == bool(parts)
            assert self.parts(partition) == parts, partition
            if record:
                fresh = self.record(partition)
                assert fresh["run_id"] != record["run_id"]  # it really was rewritten
                assert {k: v for k, v in fresh.items() if k not in VOLATILE} == {
                    k: v for k, v in record.items() if k not in VOLATILE
                }
                assert sha256(self.get(copy)) == copy_sha

    def report(self, scenario: str, **numbers) -> None:
        runs = {f"{self.versions[p]}@{p[-6:]}": self.runs(p) for p in self.versions}
        quarantine = keys_under(self.s3_server, self.s3_env, paths.QUARANTINE)
        print(
            f"\nFAULTS {scenario}: versions={len(self.versions)} runs_per_version={runs} "
            f"requests={len(self.requested)} deduped={self.deduped} "
            f"quarantine_records={sum(k.endswith('.error.json') for k in quarantine)} "
            f"cursor={self.cursor} " + " ".join(f"{k}={v}" for k, v in numbers.items())
        )


@pytest.fixture
def lake(s3_server, s3_env, instance) -> Lake:
    return Lake(s3_server, s3_env, instance)


def test_corrupt_uploads_in_one_batch(lake: Lake):
    good_parquet = parquet(
        {
            "timestamp": ["2024-03-01T00:00:00Z"],
            "sensor_id": ["s1"],
            **{c: [1.0] for c in ("temperature", "vibration", "pressure", "current")},
        }
    )
    bad = {
        "truncated.csv": (CLEAN[: len(CLEAN) // 2 + 7], "unreadable"),  # cut mid-row
        "bad-footer.parquet": (good_parquet[:-8] + b"\x00\x00\x00\x00XXXX", "unreadable"),
        "zero.csv": (b"", "empty_file"),
        "garbage.bin": (random.Random(4).randbytes(256 * 1024), "unreadable"),
        "utf16.csv": (CLEAN.decode().encode("utf-16"), "unreadable"),  # BOM ff fe
        "one-line-10mb.csv": (b"1.5," * (10 * 1024 * 1024 // 4), "line_too_long"),
        "header-only.csv": ((HEADER + "\n").encode(), "no_rows"),
    }
    assert bad["utf16.csv"][0][:2] == b"\xff\xfe" and not CLEAN[: len(CLEAN) // 2 + 7].endswith(
        b"\n"
    )
    keys = {name: lake.put(name, body) for name, (body, _) in bad.items()}
    clean = lake.put("clean.csv", CLEAN)

    started = time.perf_counter()
    ran = lake.tick_and_run()  # one tick takes the whole batch
    seconds = time.perf_counter() - started
    assert sorted(ran) == sorted([*keys.values(), clean])
    outcome = lake.check()
    assert {name: outcome[keys[name]] for name in bad} == {n: r for n, (_, r) in bad.items()}
    assert sorted(outcome[clean]) == ["2024-03-01", "2024-03-02"]
    for name, (body, _) in bad.items():  # the quarantined copy is the rejected bytes
        fid = paths.file_id(keys[name])
        assert lake.get(paths.quarantine_object("readings", fid, name)) == body
        assert lake.get(PREFIX + name) == body  # the landed original is untouched
    lake.rerun([clean, keys["truncated.csv"], keys["one-line-10mb.csv"], keys["garbage.bin"]])
    lake.report("4-corrupt", batch_seconds=round(seconds, 1), clean_parts=outcome[clean])


def test_duplicate_uploads(lake: Lake, tmp_path: Path):
    first = lake.put("plant/a.csv", CLEAN)
    assert lake.tick_and_run() == [first]
    clean_parts = lake.parts(first)

    # Identical bytes re-put, in a later second (a new LastModified): the same version, no run.
    time.sleep(1.1)
    assert lake.put("plant/a.csv", CLEAN) == first
    assert lake.tick_and_run() == []

    # The same bytes under another key: its own partition, run once, byte-identical parts.
    copy = lake.put("other/a-copy.csv", CLEAN)
    assert lake.tick_and_run() == [copy]
    assert copy != first and lake.parts(copy) == clean_parts
    # Bronze keeps both uploads; the silver build reads each reading once.
    day = "2024-03-01"
    day_keys = keys_under(lake.s3_server, lake.s3_env, paths.bronze_day_prefix("readings", day))
    assert len(day_keys) == 2
    bronze_rows = sum(lake.meta(p)["rows_by_date"][day] for p in (first, copy))
    local = lake.store.fetch(day_keys, tmp_path)
    assert distinct_keys(local) == bronze_rows // 2 == 72

    # Changed content under the first key: a new version, a new run, new parts.
    changed = lake.put(
        "plant/a.csv",
        CLEAN.replace(b",s0,40.5,", b",s0,41.5,") + b"2024-03-03T00:00:00Z,s0,1,1,1,1\n",
    )
    assert changed != first
    assert lake.tick_and_run() == [changed]
    assert sorted(lake.parts(changed)) == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert lake.parts(changed)["2024-03-01"] != clean_parts["2024-03-01"]

    outcome = lake.check()
    assert outcome[first] == clean_parts  # the old version's parts are untouched
    lake.rerun([copy, changed])
    # The overwritten version cannot be re-run under its old ETag: a clear failure, no writes.
    stale = lake.materialize(first, {"faults/rerun": "1"})
    assert not stale.success
    assert "was overwritten" in stale.failure_data_for_node("raw_readings").error.message
    assert lake.parts(first) == clean_parts and lake.record(first) is None
    lake.report(
        "5-duplicates",
        identical_parts_across_keys=lake.parts(copy) == clean_parts,
        silver_distinct_rows_day1=distinct_keys(local),
        bronze_rows_day1=bronze_rows,
    )


def test_schema_drift_follows_the_contract(lake: Lake):
    contract = lake.resources["ingest"].contract("readings")
    assert (contract.extra_columns, contract.out_of_range) == ("report", "keep")  # the policy
    body = rows(days=1)
    n = len(body)
    reference = lake.put("reference.csv", csv(body))
    files = {
        "extra-column.csv": csv([r + ",7" for r in body], HEADER + ",humidity"),
        "renamed-required.csv": csv(body, HEADER.replace("temperature", "temp")),
        "renamed-by-contract.csv": csv(
            body, HEADER.replace("timestamp", "time").replace("sensor_id", "device_id")
        ),
        "missing-required.csv": csv(
            [",".join(r.split(",")[:5]) for r in body], HEADER.rsplit(",", 1)[0]
        ),
        "quoted-numbers.csv": csv(
            [",".join([*r.split(",")[:2], *(f'"{v}"' for v in r.split(",")[2:])]) for r in body]
        ),
        "string-numbers.parquet": parquet(
            {
                name: [r.split(",")[i] for r in body]  # every column a string, "40.5" and so on
                for i, name in enumerate(HEADER.split(","))
            }
        ),
        "kelvin.csv": csv(
            [
                ",".join(
                    [*r.split(",")[:2], f"{float(r.split(',')[2]) + 273.15:.2f}", *r.split(",")[3:]]
                )
                for r in body
            ]
        ),
    }
    keys = {name: lake.put(name, data) for name, data in files.items()}
    lake.tick_and_run()
    outcome = lake.check()
    expected = {
        "extra-column.csv": "processed",
        "renamed-required.csv": "missing_columns",
        "renamed-by-contract.csv": "processed",
        "missing-required.csv": "missing_columns",
        "quoted-numbers.csv": "processed",
        "string-numbers.parquet": "wrong_type",
        "kelvin.csv": "processed",
    }
    got = {
        name: "processed" if isinstance(outcome[k], dict) else outcome[k]
        for name, k in keys.items()
    }
    assert got == expected
    ref = lake.parts(reference)
    # What the contract drops or maps leaves the same rows, byte for byte.
    for name in ("extra-column.csv", "renamed-by-contract.csv", "quoted-numbers.csv"):
        assert lake.parts(keys[name]) == ref, name
    assert lake.meta(keys["extra-column.csv"])["extra_columns"] == ["humidity"]
    assert lake.meta(keys["renamed-by-contract.csv"])["renamed_columns"] == {
        "time": "timestamp",
        "device_id": "sensor_id",
    }
    kelvin = lake.meta(keys["kelvin.csv"])
    assert kelvin["out_of_range_values"] == {"temperature": n}  # counted, kept ("keep")
    assert kelvin["rows_out"] == n and lake.parts(keys["kelvin.csv"]) != ref
    missing = lake.record(keys["renamed-required.csv"])
    assert missing["details"]["missing"] == ["temperature"]
    lake.rerun([keys["extra-column.csv"], keys["renamed-required.csv"], keys["kelvin.csv"]])
    lake.report("6-drift", outcomes=got, kelvin_out_of_range=kelvin["out_of_range_values"])


def test_out_of_order_late_future_and_clock_shifted(lake: Lake):
    ordered = rows(days=2)
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != ordered
    in_order = lake.put("in-order.csv", csv(ordered))
    out_of_order = lake.put("out-of-order.csv", csv(shuffled))

    # Sensor s1 reports local time at +09:00: its 05:00 local on 03-02 is 20:00 UTC on 03-01.
    def shift(line: str) -> str:
        ts, sensor, rest = line.split(",", 2)
        if sensor != "s1":
            return line
        utc = datetime.fromisoformat(ts)
        return f"{(utc + timedelta(hours=9)).strftime('%Y-%m-%dT%H:%M:%S')}+09:00,{sensor},{rest}"

    shifted_lines = [shift(r) for r in ordered]
    assert (
        sum(
            r.split(",")[0][:10] != s.split(",")[0][:10]
            for r, s in zip(ordered, shifted_lines, strict=True)
        )
        == 18
    )
    shifted = lake.put("clock-shifted.csv", csv(shifted_lines))

    now = datetime.now(UTC).replace(microsecond=0)
    near, far = now + timedelta(minutes=10), now + timedelta(hours=3)
    future_rows = [
        *ordered[:6],
        f"{near.strftime('%Y-%m-%dT%H:%M:%SZ')},s0,50,2,5,20",  # within the 60 min tolerance
        *(
            f"{(far + timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},s0,50,2,5,20"
            for i in range(4)
        ),
    ]
    future = lake.put("future.csv", csv(future_rows))
    assert len(lake.tick_and_run()) == 4

    # A late file for a day long closed, landed after the others.
    late = lake.put("late/2024-01-15.csv", csv(rows("2024-01-15", days=1)))
    assert lake.tick_and_run() == [late]

    outcome = lake.check()
    clean = outcome[in_order]
    assert sorted(clean) == ["2024-03-01", "2024-03-02"]
    assert outcome[out_of_order] == clean  # row order inside a file does not matter
    assert outcome[shifted] == clean  # offsets are honoured: the right UTC days, same bytes
    assert lake.meta(shifted)["rows_by_date"] == {"2024-03-01": 72, "2024-03-02": 72}
    assert sorted(outcome[late]) == ["2024-01-15"]
    assert lake.meta(late)["dates"] == ["2024-01-15"]
    future_meta = lake.meta(future)
    assert future_meta["rejected_rows"] == {"future_timestamp": 4}
    assert future_meta["rows_out"] == 7
    assert future_meta["rows_by_date"] == {"2024-03-01": 6, near.date().isoformat(): 1}
    lake.rerun([in_order, out_of_order, shifted, future, late])
    lake.report(
        "7-time",
        clean_parts=clean,
        future_rejected=future_meta["rejected_rows"],
        late_dates=lake.meta(late)["dates"],
    )
