"""Fault injection (docs/reliability.md): bad, duplicate, drifted and late uploads.

Every test lands objects in the real S3 API (moto server), evaluates the real landing sensor
(``build_landing_sensor`` over ``landing_days``: micro-batches), launches each batch run request
it returns as the daemon would (a run key this sensor already has a run for is skipped, Dagster's
run-key dedupe) by materializing ``raw_readings`` with the request's landing-day partition and run
config on a real Dagster instance, and then checks the invariants for every object version landed
(:meth:`Lake.check`). Exactly once is judged by the outputs, not by counting runs:

- bronze parts XOR a quarantine record (with its reason), and a ledger object recording that
  outcome (the same parts, rows and days, or the same reason) by the run that handled it;
- exactly one run handled the version (ingested or quarantined it); any other batch naming it
  reported ``already_ingested`` / ``already_quarantined``;
- every bronze part, quarantine copy and record and ledger object was written exactly once (each
  write through the store is counted);
- every run succeeded, and its WARN check ``landed_files_pass_their_contract`` failed exactly when
  the run quarantined a file, listing each one with its reason;
- a further sensor tick requests nothing; the cursor's listing has nothing left that is new;
- no partial or temporary object anywhere, ``lake/`` holds bronze parts and one ledger object per
  version only, and every quarantined copy has its record;
- a batch naming handled versions again writes nothing; re-ingesting them (``reingest``) gives
  byte-identical bronze parts (sha256) and the same quarantine record and ledger entry (apart from
  the run id and times).

Each test prints one ``FAULTS`` line with what it measured (run ``pytest -s`` to see them).

==========================================================  =========================================
Scenario                                                    Test
==========================================================  =========================================
4  corrupt uploads: truncated CSV, bad Parquet footer,      ``test_corrupt_uploads_in_one_batch``
   zero bytes, binary garbage, UTF-16 with BOM, a 10 MB
   single line, a header only (one batch, one good file)
5  duplicates: same object re-put with identical bytes,     ``test_duplicate_uploads``
   same bytes under another key, changed re-put (also
   between the tick and its run)
6  schema drift: extra column, renamed / missing required   ``test_schema_drift_follows_the_contract``
   column, numbers as strings (CSV quoted, Parquet
   string type), units changed (out of range)
7  out-of-order rows, a late file for an old day, future    ``test_out_of_order_late_future_and_clock_shifted``
   timestamps, one sensor's clock shifted by hours
==========================================================  =========================================

Decisions these tests pin down:

- A rejected file does not fail its run: it is quarantined, the rest of the batch is ingested,
  the run succeeds and its WARN check fails.
- The same bytes under another key are a separate upload: their own version, their own bronze
  parts (byte-identical to the first key's). Rows are not de-duplicated across files in bronze
  (each part is one upload's lineage); the silver build keeps one row per
  ``(sensor_id, timestamp)``, so downstream sees each reading once.
- A changed re-put is a new version: new parts; the old version's parts stay (silver keeps the
  newest ingestion for a repeated reading). A version overwritten before its batch ran is
  ``gone``: no parts, no quarantine, no ledger entry; the new version is ingested by its own batch.
- A sensor clock "shifted" means timestamps carrying a UTC offset: rows land on their UTC day,
  byte-identical to the same readings written in UTC. A clock that is simply wrong, without an
  offset, cannot be told apart from real time and lands where it says.
- Per-file details (extra and renamed columns, out-of-range values, rejected rows) are in the
  batch's ``first_file`` metadata for its first ingested file only; the tests read them for the
  other files from a one-file re-ingest.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_platform.defs.ingest.assets import ingest_readings_job, raw_readings
from ml_platform.defs.ingest.sensors import BatchLimits, build_landing_sensor
from ml_platform.defs.partitions import landing_days
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.lakehouse import distinct_keys
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import S3Store, open_store
from ml_platform_tests.helpers import outcomes, table_column, table_rows

pytestmark = pytest.mark.integration
PREFIX = paths.LANDING_PREFIXES["readings"]
HEADER = "timestamp,sensor_id,temperature,vibration,pressure,current"
VOLATILE = {"run_id", "rejected_at", "at"}  # the only record/ledger fields a re-ingest may change
RUN_KEY, SENSOR_NAME = "dagster/run_key", "dagster/sensor_name"
RERUN = "faults/rerun"  # tags the deliberate re-runs, left out of "handled exactly once"
CHECK = "landed_files_pass_their_contract"
HANDLED = ("ingested", "quarantined")


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


def make_sensor(batch: BatchLimits | None = None) -> dg.SensorDefinition:
    """The readings landing sensor as definitions.py builds it (listing mode), default limits."""
    return build_landing_sensor(
        "readings",
        ingest_readings_job,
        landing_days,
        interval_s=1,
        max_requests_per_tick=100,
        batch=batch,
    )


def tick(sensor, instance, cursor, resources) -> tuple[list[dg.RunRequest], str | None, object]:
    """One evaluation: its run requests, its cursor, and what it returned."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result
    assert not result.dynamic_partitions_requests  # batches register no partitions
    return list(result.run_requests or []), result.cursor, result


def batch_versions(request: dg.RunRequest) -> list[str]:
    """The object versions a batch run request names."""
    return request.run_config["ops"]["raw_readings"]["config"]["versions"]


def meta(result: dg.ExecuteInProcessResult) -> dict:
    [mat] = result.asset_materializations_for_node("raw_readings")
    return {k: v.value for k, v in mat.metadata.items()}


def contract_check(result: dg.ExecuteInProcessResult):
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == CHECK and evaluation.asset_key == dg.AssetKey("raw_readings")
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    return evaluation


def failure(result: dg.ExecuteInProcessResult) -> str:
    """Why a run failed: its step failures' messages."""
    return "; ".join(
        str(e.event_specific_data.error.message)[:2000]
        for e in result.all_events
        if e.event_type_value in ("STEP_FAILURE", "STEP_UP_FOR_RETRY")
    )


def keys_under(s3_server, s3_env, prefix: str) -> list[str]:
    bucket = s3_env["ML_PLATFORM_STORE_URL"][5:]
    pages = (
        s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


class Lake:
    """The bucket, the sensor with its cursor, every object version landed and every run."""

    def __init__(self, s3_server, s3_env, instance, monkeypatch):
        self.client, self.bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
        self.s3_server, self.s3_env, self.instance = s3_server, s3_env, instance
        self.store = open_store(s3_env["ML_PLATFORM_STORE_URL"])
        self.sensor, self.resources, self.cursor = make_sensor(), build_resources(), None
        self.versions: dict[str, str] = {}  # version id -> relative key, in landing order
        self.gone: set[str] = set()  # versions the test overwrote before their batch ran
        self.results: dict[str, dg.ExecuteInProcessResult] = {}  # run id -> result, every run
        self.requests: list[dg.RunRequest] = []  # every run request the sensor handed out
        self.deduped = 0  # requests whose run key had a run already (the daemon skips them)
        self.writes: Counter[str] = Counter()  # store key -> times written by the platform
        self._count_writes(monkeypatch)

    def _count_writes(self, monkeypatch) -> None:
        put_file, put_bytes, lock = S3Store.put_file, S3Store.put_bytes, threading.Lock()
        create_bytes = S3Store.create_bytes

        def counted_put_file(store, src, key, *, move=False):
            put_file(store, src, key, move=move)
            with lock:
                self.writes[key] += 1

        def counted_put_bytes(store, data, key):
            put_bytes(store, data, key)
            with lock:
                self.writes[key] += 1

        def counted_create_bytes(store, data, key):
            created = create_bytes(store, data, key)
            with lock:
                self.writes[key] += created
            return created

        monkeypatch.setattr(S3Store, "put_file", counted_put_file)
        monkeypatch.setattr(S3Store, "put_bytes", counted_put_bytes)
        monkeypatch.setattr(S3Store, "create_bytes", counted_create_bytes)

    def put(self, name: str, body: bytes) -> str:
        response = self.client.put_object(Bucket=self.bucket, Key=PREFIX + name, Body=body)
        version = paths.partition_key(name, response["ETag"])
        self.versions[version] = name
        return version

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{PREFIX}{name}"

    def landing_day(self, name: str) -> str:
        """The UTC day S3 says the object at ``name`` was written."""
        head = self.client.head_object(Bucket=self.bucket, Key=PREFIX + name)
        return head["LastModified"].astimezone(UTC).date().isoformat()

    def tick(self) -> list[dg.RunRequest]:
        requests, self.cursor, _ = tick(self.sensor, self.instance, self.cursor, self.resources)
        self.requests += requests
        return requests

    def launch_all(self, requests: list[dg.RunRequest]) -> list[str]:
        """Each request as the daemon launches it; the versions the launched runs handled
        (ingested or quarantined), in batch order."""
        handled = []
        for request in requests:
            result = self.launch(request)
            if result is not None:
                assert result.success, failure(result)
                handled += [v for v, o in outcomes(result).items() if o in HANDLED]
        return handled

    def tick_and_run(self) -> list[str]:
        """One sensor tick, then each batch it requests; the versions handled."""
        return self.launch_all(self.tick())

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult | None:
        """The daemon's submission: skipped when this sensor already has a run for the run key
        (Dagster's run-key dedupe), else a run of the request's partition and run config."""
        if self.instance.get_runs(filters=dg.RunsFilter(tags=self._daemon_tags(request))):
            self.deduped += 1
            return None
        return self.submit(request)

    def submit(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        """A run of the request, whether or not its run key has one already: what each of two
        daemons ticking at once submits (their run-key dedupe does not see the other's run)."""
        tags = {**request.tags, **self._daemon_tags(request)}
        return self.run(request.partition_key, request.run_config, tags)

    def _daemon_tags(self, request: dg.RunRequest) -> dict[str, str]:
        return {RUN_KEY: request.run_key, SENSOR_NAME: self.sensor.name}

    def run(self, partition: str, run_config: dict, tags: dict[str, str] | None = None):
        result = dg.materialize(
            [raw_readings],
            instance=self.instance,
            partition_key=partition,
            run_config=run_config,
            resources=self.resources,
            tags=tags or {},
            raise_on_error=False,
        )
        self.results[result.run_id] = result
        return result

    def batch(self, versions: list[str] | None = None, *, reingest: bool = False, **config):
        """A run launched by hand in today's landing day: the ``versions`` named, or ``files``
        (plain keys), or with neither every version landed today. ``tags`` via ``config``."""
        tags = config.pop("tags", None)
        ops_config = {"reingest": reingest, **config}
        if versions is not None:
            ops_config["versions"] = versions
        day = datetime.now(UTC).date().isoformat()
        return self.run(day, {"ops": {"raw_readings": {"config": ops_config}}}, tags)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def bronze(self) -> list[str]:
        return keys_under(self.s3_server, self.s3_env, paths.BRONZE + "readings/")

    def parts(self, version: str, bronze: list[str] | None = None) -> dict[str, str]:
        """The bronze parts of one object version: day -> sha256 of the part's bytes (from the
        ``bronze`` listing given, else a fresh one)."""
        fid = paths.file_id(version)
        return {
            paths.bronze_day(k): sha256(self.get(k))
            for k in (self.bronze() if bronze is None else bronze)
            if k.endswith(f"/file={fid}.parquet")
        }

    def _json(self, key: str) -> dict | None:
        try:
            return json.loads(self.get(key))
        except self.client.exceptions.NoSuchKey:
            return None

    def record(self, version: str) -> dict | None:
        fid = paths.file_id(version)
        return self._json(paths.quarantine_record("readings", fid, self.versions[version]))

    def copy_key(self, version: str) -> str:
        return paths.quarantine_object("readings", paths.file_id(version), self.versions[version])

    def ledger(self, version: str) -> dict | None:
        return self._json(paths.ledger_object("readings", paths.file_id(version)))

    def handled(self) -> dict[str, list[tuple[str, str]]]:
        """Version -> (run id, outcome) of every run but the deliberate re-runs."""
        seen = defaultdict(list)
        for run_id, result in self.results.items():
            if RERUN not in result.dagster_run.tags:
                for version, outcome in outcomes(result).items():
                    seen[version].append((run_id, outcome))
        return seen

    def check_contract_check(self, result: dg.ExecuteInProcessResult) -> None:
        """The WARN check fails exactly when the run quarantined a file, listing each one."""
        evaluation = contract_check(result)
        quarantined = [v for v, o in outcomes(result).items() if o == "quarantined"]
        assert evaluation.passed == (not quarantined), result.run_id
        assert evaluation.metadata["quarantined_count"].value == len(quarantined)
        listed = table_rows(evaluation.metadata["quarantined"].value)
        assert sorted((q["object"], q["reason"]) for q in listed) == sorted(
            (self.uri(self.versions[v]), self.record(v)["reason"]) for v in quarantined
        )

    def check(self) -> dict:
        """The invariants over every version landed; returns what was measured."""
        handled, outcome, bronze = self.handled(), {}, self.bronze()
        for version, name in self.versions.items():
            parts, record = self.parts(version, bronze), self.record(version)
            ledger = self.ledger(version)
            ledger_key = paths.ledger_object("readings", paths.file_id(version))
            if version in self.gone:  # overwritten before its batch: nothing of it anywhere
                assert (parts, record, ledger) == ({}, None, None), version
                assert {o for _, o in handled[version]} == {"gone"}, handled[version]
                outcome[version] = "gone"
                continue
            assert bool(parts) != bool(record), f"{version}: parts={parts} record={record}"
            done = "ingested" if parts else "quarantined"
            first = [(run, o) for run, o in handled[version] if o in HANDLED]
            assert first == [(first[0][0], done)], (version, handled[version])
            run_id = first[0][0]
            assert {o for _, o in handled[version]} <= {done, f"already_{done}"}, version
            assert ledger is not None, version
            assert (ledger["version"], ledger["outcome"], ledger["run_id"]) == (
                version,
                done,
                run_id,
            )
            assert ledger["object"] == self.uri(name)
            assert self.writes[ledger_key] == 1, ledger_key
            if parts:
                part_keys = sorted(
                    paths.bronze_part("readings", d, paths.file_id(version)) for d in parts
                )
                assert sorted(ledger["parts"]) == part_keys
                assert ledger["dates"] == sorted(parts) == sorted(ledger["rows_by_date"])
                assert ledger["rows"] == sum(ledger["rows_by_date"].values()) > 0
                assert ledger["reason"] == ""
                assert [self.writes[k] for k in part_keys] == [1] * len(part_keys), part_keys
            else:
                assert record["reason"] and record["message"]
                assert (record["partition_key"], record["run_id"]) == (version, run_id)
                assert (ledger["reason"], ledger["parts"], ledger["rows"]) == (
                    record["reason"],
                    [],
                    0,
                )
                record_key = paths.quarantine_record(
                    "readings", paths.file_id(version), self.versions[version]
                )
                assert (self.writes[self.copy_key(version)], self.writes[record_key]) == (1, 1)
            outcome[version] = parts or record["reason"]
        for result in self.results.values():
            assert result.success, result.run_id
            self.check_contract_check(result)
        # The cursor is past every landed object, and one more tick requests nothing.
        left, _ = select_new(
            self.store.list(PREFIX), LandingCursor.from_json(self.cursor), 1_000_000
        )
        assert left == []
        assert self.tick() == []
        # Nothing partial: only whole bronze parts and the versions' ledger objects under lake/,
        # no temporary keys anywhere, and quarantine holds copy + record pairs only.
        everything = keys_under(self.s3_server, self.s3_env, "")
        assert not [k for k in everything if ".tmp-" in k or "partial" in k.lower()]
        lake = [k for k in everything if k.startswith("lake/")]
        ledgers = {k for k in lake if k.startswith(paths.LEDGER)}
        assert ledgers == {
            paths.ledger_object("readings", paths.file_id(v))
            for v in self.versions
            if v not in self.gone
        }
        assert all(paths.bronze_day(k) for k in lake if k not in ledgers), lake
        quarantined = [k for k in everything if k.startswith(paths.QUARANTINE)]
        records = {k for k in quarantined if k.endswith(".error.json")}
        assert {k + ".error.json" for k in quarantined if k not in records} == records
        return outcome

    def rerun(self, versions: list[str]) -> dict[str, dict]:
        """A batch naming handled versions again leaves them alone and writes nothing;
        re-ingesting each one rewrites the same bytes (or the same quarantine record). Returns
        the ``first_file`` metadata of each ingested version's one-file re-ingest."""
        before = {v: (self.parts(v), self.record(v), self.ledger(v)) for v in versions}
        copies = {v: sha256(self.get(self.copy_key(v))) for v in versions if before[v][1]}
        writes = Counter(self.writes)
        again = self.batch(versions, tags={RERUN: "skip"})
        assert again.success
        assert outcomes(again) == {v: f"already_{before[v][2]['outcome']}" for v in versions}
        assert self.writes == writes  # not one part, record or ledger entry written
        assert contract_check(again).passed  # this run quarantined nothing
        assert {v: (self.parts(v), self.record(v), self.ledger(v)) for v in versions} == before

        details = {}
        for version in versions:
            parts, record, ledger = before[version]
            result = self.batch([version], reingest=True, tags={RERUN: "reingest"})
            assert result.success
            assert outcomes(result) == {version: ledger["outcome"]}
            assert self.parts(version) == parts, version
            fresh = self.ledger(version)
            assert fresh["run_id"] == result.run_id != ledger["run_id"]  # really rewritten
            assert {k: v for k, v in fresh.items() if k not in VOLATILE} == {
                k: v for k, v in ledger.items() if k not in VOLATILE
            }
            assert contract_check(result).passed == (record is None)
            if record:
                fresh = self.record(version)
                assert fresh["run_id"] == result.run_id != record["run_id"]
                assert {k: v for k, v in fresh.items() if k not in VOLATILE} == {
                    k: v for k, v in record.items() if k not in VOLATILE
                }
                assert sha256(self.get(self.copy_key(version))) == copies[version]
            else:
                details[version] = meta(result)["first_file"]
        return details

    def report(self, scenario: str, **numbers) -> None:
        handled = self.handled()
        runs = {
            f"{self.versions[v]}@{v[-6:]}": sum(o in HANDLED for _, o in handled[v])
            for v in self.versions
        }
        quarantine = keys_under(self.s3_server, self.s3_env, paths.QUARANTINE)
        print(
            f"\nFAULTS {scenario}: versions={len(self.versions)} handled_per_version={runs} "
            f"requests={len(self.requests)} deduped={self.deduped} runs={len(self.results)} "
            f"quarantine_records={sum(k.endswith('.error.json') for k in quarantine)} "
            f"cursor={self.cursor} " + " ".join(f"{k}={v}" for k, v in numbers.items())
        )


@pytest.fixture
def lake(s3_server, s3_env, instance, monkeypatch) -> Lake:
    return Lake(s3_server, s3_env, instance, monkeypatch)


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
    handled = lake.tick_and_run()  # one tick takes the whole batch
    seconds = time.perf_counter() - started
    assert sorted(handled) == sorted([*keys.values(), clean])
    [request] = lake.requests  # one run for the whole batch, in the day the files landed
    assert sorted(batch_versions(request)) == sorted(lake.versions)
    assert request.partition_key == lake.landing_day("clean.csv")
    [result] = lake.results.values()
    assert result.success  # seven rejected files do not fail the run
    outcome = lake.check()
    assert {name: outcome[keys[name]] for name in bad} == {n: r for n, (_, r) in bad.items()}
    assert sorted(outcome[clean]) == ["2024-03-01", "2024-03-02"]
    evaluation = contract_check(result)
    assert not evaluation.passed and evaluation.metadata["quarantined_count"].value == 7
    batch = meta(result)
    assert batch["outcomes"] == {"ingested": 1, "quarantined": 7}
    assert (batch["files"], batch["dagster/row_count"], batch["bronze_parts"]) == (8, 144, 2)
    assert batch["dates"] == ["2024-03-01", "2024-03-02"]
    assert table_column(batch["rows_by_date"], "date", "rows") == {
        "2024-03-01": 72,
        "2024-03-02": 72,
    }
    assert batch["first_file"]["rows_in"] == 144  # the clean file, the only one ingested
    assert batch["first_file"]["sha256"] == sha256(CLEAN)
    for name, (body, _) in bad.items():  # the quarantined copy is the rejected bytes
        assert lake.get(lake.copy_key(keys[name])) == body
        assert lake.get(PREFIX + name) == body  # the landed original is untouched
    lake.rerun([clean, keys["truncated.csv"], keys["one-line-10mb.csv"], keys["garbage.bin"]])
    lake.report("4-corrupt", batch_seconds=round(seconds, 1), clean_parts=outcome[clean])


def test_duplicate_uploads(lake: Lake, tmp_path: Path):
    first = lake.put("plant/a.csv", CLEAN)
    assert lake.tick_and_run() == [first]
    clean_parts = lake.parts(first)

    # Identical bytes re-put, in a later second (a new LastModified): the same version, already
    # in the ledger, so the tick requests nothing: nothing runs, nothing is written.
    time.sleep(1.1)
    assert lake.put("plant/a.csv", CLEAN) == first
    assert lake.tick_and_run() == []
    [first_request] = lake.requests
    assert batch_versions(first_request) == [first]

    # The same bytes under another key: its own version, ingested once, byte-identical parts.
    copy = lake.put("other/a-copy.csv", CLEAN)
    assert lake.tick_and_run() == [copy]
    assert copy != first and lake.parts(copy) == clean_parts
    # Bronze keeps both uploads; the silver build reads each reading once.
    day = "2024-03-01"
    day_keys = keys_under(lake.s3_server, lake.s3_env, paths.bronze_day_prefix("readings", day))
    assert len(day_keys) == 2
    bronze_rows = sum(lake.ledger(p)["rows_by_date"][day] for p in (first, copy))
    local = lake.store.fetch(day_keys, tmp_path)
    assert distinct_keys(local) == bronze_rows // 2 == 72

    # Changed content under the first key: a new version, a new batch, new parts.
    changed = lake.put(
        "plant/a.csv",
        CLEAN.replace(b",s0,40.5,", b",s0,41.5,") + b"2024-03-03T00:00:00Z,s0,1,1,1,1\n",
    )
    assert changed != first
    assert lake.tick_and_run() == [changed]
    assert sorted(lake.parts(changed)) == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert lake.parts(changed)["2024-03-01"] != clean_parts["2024-03-01"]

    # Overwritten between the tick and its run: the requested version is gone (no parts, no
    # quarantine, no ledger entry) and the run succeeds; the next tick ingests the new one.
    doomed = lake.put("plant/b.csv", csv(rows(days=1)))
    [request] = lake.tick()
    assert batch_versions(request) == [doomed]
    replacement = lake.put("plant/b.csv", csv(rows("2024-03-05", days=1)))
    lake.gone.add(doomed)
    assert lake.launch_all([request]) == []
    [gone_run] = [r for r in lake.results.values() if doomed in outcomes(r)]
    assert outcomes(gone_run) == {doomed: "gone"}
    assert "overwritten" in meta(gone_run)["file_outcomes"].records[0].data["reason"]
    assert lake.tick_and_run() == [replacement]
    assert sorted(lake.parts(replacement)) == ["2024-03-05"]

    outcome = lake.check()
    assert outcome[first] == clean_parts  # the old version's parts are untouched
    assert outcome[doomed] == "gone"
    lake.rerun([copy, changed])
    # The overwritten version is left alone by a batch naming it (the ledger has it), and cannot
    # be re-ingested under its old ETag: outcome "gone", the run succeeds, nothing is written.
    writes = Counter(lake.writes)
    skipped = lake.batch([first], tags={RERUN: "skip"})
    assert skipped.success and outcomes(skipped) == {first: "already_ingested"}
    stale = lake.batch([first], reingest=True, tags={RERUN: "stale"})
    assert stale.success and outcomes(stale) == {first: "gone"}
    assert "overwritten" in meta(stale)["file_outcomes"].records[0].data["reason"]
    assert lake.writes == writes
    assert lake.parts(first) == clean_parts and lake.record(first) is None
    assert lake.ledger(first)["run_id"] == lake.handled()[first][0][0]
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
    [request] = lake.requests  # one batch: the reference and the seven drifted files
    assert sorted(batch_versions(request)) == sorted(lake.versions)
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
    [result] = lake.results.values()
    assert result.success and not contract_check(result).passed
    assert meta(result)["outcomes"] == {"ingested": 5, "quarantined": 3}
    ref = lake.parts(reference)
    # What the contract drops or maps leaves the same rows, byte for byte.
    for name in ("extra-column.csv", "renamed-by-contract.csv", "quoted-numbers.csv"):
        assert lake.parts(keys[name]) == ref, name
    rerun = [reference, *(keys[k] for k in files if expected[k] == "processed")]
    details = lake.rerun([*rerun, keys["renamed-required.csv"]])
    # The batch's first_file is its first ingested version's, the same as that file alone gives.
    first_ingested = next(v for v in batch_versions(request) if isinstance(outcome[v], dict))
    assert meta(result)["first_file"] == details[first_ingested]
    assert details[reference]["extra_columns"] == []
    assert details[keys["extra-column.csv"]]["extra_columns"] == ["humidity"]
    assert details[keys["renamed-by-contract.csv"]]["renamed_columns"] == {
        "time": "timestamp",
        "device_id": "sensor_id",
    }
    kelvin = details[keys["kelvin.csv"]]
    assert kelvin["out_of_range_values"] == {"temperature": n}  # counted, kept ("keep")
    assert details[reference]["out_of_range_values"] == {}
    assert lake.ledger(keys["kelvin.csv"])["rows"] == n and lake.parts(keys["kelvin.csv"]) != ref
    missing = lake.record(keys["renamed-required.csv"])
    assert missing["details"]["missing"] == ["temperature"]
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
    [first_batch] = lake.results.values()  # one run for the four files

    # A late file for a day long closed, landed after the others: its own batch.
    late = lake.put("late/2024-01-15.csv", csv(rows("2024-01-15", days=1)))
    assert lake.tick_and_run() == [late]
    assert len(lake.requests) == 2
    [late_batch] = [r for r in lake.results.values() if r is not first_batch]
    assert lake.requests[1].partition_key == lake.landing_day("late/2024-01-15.csv")

    outcome = lake.check()
    clean = outcome[in_order]
    assert sorted(clean) == ["2024-03-01", "2024-03-02"]
    assert outcome[out_of_order] == clean  # row order inside a file does not matter
    assert outcome[shifted] == clean  # offsets are honoured: the right UTC days, same bytes
    assert lake.ledger(shifted)["rows_by_date"] == {"2024-03-01": 72, "2024-03-02": 72}
    assert sorted(outcome[late]) == ["2024-01-15"]
    assert meta(late_batch)["dates"] == ["2024-01-15"]
    assert table_column(meta(late_batch)["rows_by_date"], "date", "rows") == {"2024-01-15": 72}
    # The first batch's days: three clean files of 72 rows a day, and the future file's 6 + 1.
    near_day = near.date().isoformat()
    assert table_column(meta(first_batch)["rows_by_date"], "date", "rows") == {
        "2024-03-01": 3 * 72 + 6,
        "2024-03-02": 3 * 72,
        near_day: 1,
    }
    assert meta(first_batch)["dates"] == ["2024-03-01", "2024-03-02", near_day]
    future_ledger = lake.ledger(future)
    assert future_ledger["rows"] == 7
    assert future_ledger["rows_by_date"] == {"2024-03-01": 6, near_day: 1}
    details = lake.rerun([in_order, out_of_order, shifted, future, late])
    assert details[future]["rejected_rows"] == {"future_timestamp": 4}
    assert details[future]["rows_in"] == 11 and details[in_order]["rejected_rows"] == {}
    lake.report(
        "7-time",
        clean_parts=clean,
        future_rejected=details[future]["rejected_rows"],
        late_dates=meta(late_batch)["dates"],
    )
