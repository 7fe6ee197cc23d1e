"""Worker of ``make bench BENCH=landing``: micro-batch landing on the production profile.

Each invocation starts a fresh production-profile stack (``prod_stack``: PostgreSQL, moto S3
API, MLflow, the gRPC code server, webserver and the real daemon, sensors at the stack's
interval), puts generated readings files to its S3 API and times, from this process's clock,
what the separate daemon and run workers make of them. Prints one JSON line (the last line of
stdout); the run timeline and sensor ticks go to stderr. Traffic stays on 127.0.0.1.

``burst N TIMEOUT [RATE SECONDS]``
    N files of 12 rows (one sensor-hour each at 5-minute readings; 100 sensors, N/100 hours
    ending at the last full hour) put at once by 16 threads. Timed until (a) every version is
    reported ingested by an ingest run's materialization (read from the instance, not from the
    S3 API the runs use) and (b) every touched day's ``daily_aggregates`` was
    materialized by a run that started after the last ingest run's raw_readings
    materialization, and both blocking suites of that run (daily_aggregates_pass_quality_suite,
    sensor_chunks_pass_quality_suite) passed for the day; at most TIMEOUT seconds after the
    first put. Then, from the lake itself: duplicates (versions whose rows are in two bronze
    parts, versions in bronze and quarantine, silver rows beyond its distinct keys) and lost
    versions (not ingested).
``one N TIMEOUT [RATE SECONDS]``
    The same rows as ONE file (the reference), timed the same way.
``sustained RATE SECONDS``, or RATE SECONDS after either of the above (same stack)
    Files of 12 rows put at RATE files/s for SECONDS (on days 10 days before the above);
    every SAMPLE_S seconds the backlog (files put - files reported ingested) is
    sampled, then up to DRAIN_S more seconds for it to drain.

``bench_landing`` (end of this file) runs the plan of ``make bench BENCH=landing``.
"""

from __future__ import annotations

import io
import json
import math
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from benchmarks.sizes import size
from ml_platform.devstack.stack import BUCKET, SENSOR_INTERVAL_S, Stack, prod_stack
from ml_platform.lib import paths

HEADER = "timestamp,sensor_id,temperature,vibration,pressure,current\n"
SENSORS = 100
READINGS_PER_FILE = 12  # one hour at 5-minute readings
PUT_THREADS = 16
INGEST_JOB = "ingest_readings_job"
CHECKS = (
    ("daily_aggregates", "daily_aggregates_pass_quality_suite"),
    ("sensor_chunks", "sensor_chunks_pass_quality_suite"),
)
LEDGER_PREFIX = paths.LEDGER + "readings/"
#: Hard bounds (seconds), inside the worker so that the stack is always torn down.
DRAIN_S = 60
SAMPLE_S = size(10, 2)  # a few samples even in the smoke's 10 s stream
STREAM_DAYS_BACK = 10
#: Whole process: the wait's bound plus this (stack start-up, audit, teardown). SIGALRM raises
#: in the main thread, so prod_stack still tears everything down.
STACK_BOUND_S = 300


class BenchTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise BenchTimeout("the landing benchmark worker ran out of time")


# --- generated files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    key: str  # below landing/readings/
    body: bytes
    keys: frozenset[tuple[str, str]]  # (sensor_id, ISO timestamp) of its rows
    days: frozenset[str]


def _rows(sensor: str, hour: datetime, rng: random.Random) -> list[str]:
    """12 readings of one sensor-hour, every value inside the contract's [min, max]."""
    lines = []
    for i in range(READINGS_PER_FILE):
        ts = (hour + timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(
            f"{ts},{sensor},{rng.uniform(40, 80):.2f},{rng.uniform(0.5, 12):.3f},"
            f"{rng.uniform(2, 10):.3f},{rng.uniform(10, 60):.2f}\n"
        )
    return lines


def generate(n: int, *, tag: str, seed: int = 7, end: datetime | None = None) -> list[File]:
    """``n`` one-sensor-hour files: sensor s00..s99, hours ending at the last full hour."""
    end = end or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hours = math.ceil(n / SENSORS)
    rng = random.Random(seed)
    files = []
    for i in range(n):
        h, s = divmod(i, SENSORS)
        hour = end - timedelta(hours=hours - h)
        sensor = f"s{s:02d}"
        lines = _rows(sensor, hour, rng)
        keys = frozenset((sensor, line.split(",", 1)[0]) for line in lines)
        files.append(
            File(
                f"bench-{tag}/{hour:%Y%m%dT%H}/{sensor}.csv",
                (HEADER + "".join(lines)).encode(),
                keys,
                frozenset({hour.date().isoformat()}),
            )
        )
    return files


def as_one_file(files: list[File], tag: str) -> File:
    body = HEADER.encode() + b"".join(f.body[len(HEADER) :] for f in files)
    return File(
        f"bench-{tag}/all-{len(files)}.csv",
        body,
        frozenset().union(*(f.keys for f in files)),
        frozenset().union(*(f.days for f in files)),
    )


# --- the stack's S3 API ---------------------------------------------------------------------------


def s3_client(stack: Stack):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=stack.s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack.s3.access_key,
        aws_secret_access_key=stack.s3.secret_key,
        config=Config(max_pool_connections=PUT_THREADS * 2, retries={"max_attempts": 5}),
    )


def put(client, file: File) -> str:
    """Put one file; its version id (key below the landing prefix @ ETag)."""
    response = client.put_object(
        Bucket=BUCKET, Key=paths.landing_object("readings", file.key), Body=file.body
    )
    return paths.partition_key(file.key, response["ETag"])


def list_keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


class Ledger:
    """The ledger objects of the versions put, read once each as they appear (a listing per poll
    plus one GET per new entry)."""

    def __init__(self, client, pool: ThreadPoolExecutor) -> None:
        self.client, self.pool = client, pool
        self.expected: dict[str, str] = {}  # ledger key -> version
        self.entries: dict[str, dict] = {}  # version -> ledger entry
        self.seen_at: dict[str, float] = {}  # version -> monotonic time first seen
        self._lock = threading.Lock()

    def expect(self, version: str) -> None:
        with self._lock:
            self.expected[paths.ledger_object("readings", paths.file_id(version))] = version

    def poll(self) -> int:
        """Reads the new entries; the number of expected versions ingested so far."""
        listed = set(list_keys(self.client, LEDGER_PREFIX))
        with self._lock:
            new = [k for k in listed if k in self.expected and self.expected[k] not in self.entries]
        now = time.monotonic()
        for key, entry in zip(new, self.pool.map(self._get, new), strict=True):
            version = self.expected[key]
            self.entries[version], self.seen_at[version] = entry, now
        return self.ingested()

    def _get(self, key: str) -> dict:
        return json.loads(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def ingested(self) -> int:
        return sum(1 for e in self.entries.values() if e["outcome"] == "ingested")

    def complete(self) -> bool:
        return len(self.expected) == self.ingested()


class IngestProgress:
    """Which versions put so far the ingest runs report ingested, read from the instance while
    the clock runs: each ``raw_readings`` materialization lists its batch's files with their
    outcomes (``file_outcomes``), and a version counts from the time of the first one that says
    ``ingested`` (or ``already_ingested``). The S3 API the runs use is not asked: listing the
    ledger every few seconds cost moto about half a second per 1,000 entries, a large share of
    what it serves the runs. The ledger itself is read once the clock stops (:func:`audit`)."""

    def __init__(self, instance, t0_epoch: float, t0: float) -> None:
        self.instance, self.t0_epoch, self.t0 = instance, t0_epoch, t0
        self.expected: set[str] = set()
        self.seen: dict[str, tuple[float, str]] = {}  # version -> (monotonic time, run id)
        self._after = None
        self._lock = threading.Lock()

    def expect(self, version: str) -> None:
        with self._lock:
            self.expected.add(version)

    def poll(self) -> int:
        """Reads the materializations since the last poll; the expected versions ingested."""
        import dagster as dg

        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_readings"),
                                  after_storage_id=self._after),
            limit=10_000, ascending=True,
        ).records  # fmt: skip
        for record in records:
            self._after = record.storage_id
            at = self.t0 + (record.timestamp - self.t0_epoch)
            table = record.asset_materialization.metadata["file_outcomes"].value
            for row in table.records:
                if row.data["outcome"] in ("ingested", "already_ingested"):
                    self.seen.setdefault(row.data["version"], (at, record.run_id))
        return self.ingested()

    def ingested(self) -> int:
        with self._lock:
            return sum(1 for v in self.expected if v in self.seen)

    def complete(self) -> bool:
        with self._lock:
            return all(v in self.seen for v in self.expected)

    def run_ids(self) -> set[str]:
        return {run_id for _, run_id in self.seen.values()}

    def last_seen_s(self) -> float:
        return max(self.seen[v][0] for v in self.expected) - self.t0


# --- the instance ---------------------------------------------------------------------------------


def _raw_materialization(instance, run_id: str) -> tuple[int, list[str]] | None:
    """The run's raw_readings materialization: its storage id and the days it touched."""
    import dagster as dg

    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    found = [
        (r.storage_id, r.event_log_entry.asset_materialization.metadata)
        for r in records
        if r.event_log_entry.asset_materialization.asset_key == dg.AssetKey("raw_readings")
    ]
    if not found:
        return None
    storage_id, metadata = max(found, key=lambda f: f[0])
    return storage_id, list(metadata["dates"].value)


def _run_start_id(instance, run_id: str) -> int | None:
    import dagster as dg

    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_START, limit=1
    ).records
    return records[0].storage_id if records else None


def gold_status(instance, days: set[str], ingest_run_ids: set[str]) -> dict:
    """Per touched day, whether gold holds everything ingested: the latest daily_aggregates
    materialization's run started after the last raw_readings materialization that touched the
    day, and that run's evaluations of both blocking suites for the day passed."""
    import dagster as dg
    from dagster._core.event_api import PartitionKeyFilter
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    found = [_raw_materialization(instance, r) for r in ingest_run_ids]
    if not found or None in found:
        return {"ready": False, "why": "an ingest run has not materialized yet"}
    last_touch: dict[str, int] = {}
    for storage_id, touched in found:
        for day in touched:
            last_touch[day] = max(last_touch.get(day, -1), storage_id)
    status: dict[str, dict] = {}
    for day in sorted(days):
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("daily_aggregates"), asset_partitions=[day]
            ),
            limit=1,
        ).records
        if not result:
            status[day] = {"ok": False, "why": "no daily_aggregates"}
            continue
        run_id = result[0].run_id
        start = _run_start_id(instance, run_id)
        fresh = start is not None and start > last_touch.get(day, -1)
        checks = {}
        for asset, name in CHECKS:
            key = dg.AssetCheckKey(dg.AssetKey(asset), name)
            latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [key], partition_filter=PartitionKeyFilter(key=day)
            ).get(key)
            checks[name] = bool(
                latest
                and latest.run_id == run_id
                and latest.status == AssetCheckExecutionRecordStatus.SUCCEEDED
            )
        status[day] = {"ok": fresh and all(checks.values()), "fresh": fresh, "run_id": run_id,
                       **checks}  # fmt: skip
    return {"ready": all(s["ok"] for s in status.values()), "days": status}


def runs_summary(instance, t0: float) -> list[dict]:
    """Every run, oldest first, times relative to ``t0`` (epoch seconds), with step times."""
    out = []
    for record in reversed(instance.get_run_records()):
        run = record.dagster_run
        rel = lambda t: None if t is None else round(t - t0, 1)  # noqa: E731
        steps = {
            s.step_key: round(s.end_time - s.start_time, 1)
            for s in instance.get_run_step_stats(run.run_id)
            if s.start_time and s.end_time
        }
        out.append(
            {
                "job": run.job_name,
                "status": run.status.value,
                "created": rel(record.create_timestamp.timestamp()),
                "started": rel(record.start_time),
                "ended": rel(record.end_time),
                "files": run.tags.get("ml_platform/batch_files"),
                "days": run.tags.get("dagster/asset_partition_range_start", "")
                + ".."
                + run.tags.get("dagster/asset_partition_range_end", ""),
                "assets": ",".join(k.to_user_string() for k in run.asset_selection or []),
                "steps": steps,
                "now": rel(time.time()),
            }
        )
    return out


def ticks_summary(instance, name: str, t0: float) -> list[dict]:
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.origin.instigator_name == name:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=t0)
            return [
                {"at": round(t.timestamp - t0, 1),
                 "took": round((t.end_timestamp or t.timestamp) - t.timestamp, 1),
                 "status": t.status.value, "runs": len(t.run_ids)}
                for t in reversed(list(ticks))
            ]  # fmt: skip
    return []


def print_timeline(runs: list[dict], ticks: dict[str, list[dict]]) -> None:
    for r in runs:
        steps = " ".join(f"{k}={v}" for k, v in r["steps"].items())
        print(
            f"created {r['created']:>7} started {r['started']!s:>7} ended {r['ended']!s:>7} "
            f"{r['status']:8} {r['job']:22} files={r['files']} {r['days']} {steps}",
            file=sys.stderr,
        )
    for name, items in ticks.items():
        with_runs = [t for t in items if t["runs"]]
        print(f"{name}: {len(items)} ticks, {len(with_runs)} with runs: "
              + " ".join(f"{t['at']}s({t['took']}s,{t['runs']})" for t in with_runs),
              file=sys.stderr)  # fmt: skip


# --- bronze, quarantine and silver after the fact -------------------------------------------------


def _parquet(client, key: str):
    import pandas as pd

    return pd.read_parquet(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def _row_keys(frame) -> list[tuple[str, str]]:
    import pandas as pd

    ts = pd.to_datetime(frame["timestamp"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return list(zip(frame["sensor_id"].astype(str), ts, strict=True))


def audit(client, pool, files_by_version: dict[str, File], ledger: Ledger) -> dict:
    """Duplicates and losses, from the lake itself (not from the platform's metadata)."""
    ids = {paths.file_id(v): v for v in files_by_version}
    bronze = [k for k in list_keys(client, paths.BRONZE + "readings/") if k.endswith(".parquet")]
    owner = {k: ids.get(k.rsplit("file=", 1)[-1].removesuffix(".parquet")) for k in bronze}
    rows_in: dict[tuple[str, str], set[str]] = {}
    for key, frame in zip(bronze, pool.map(lambda k: _parquet(client, k), bronze), strict=True):
        for row in _row_keys(frame):
            rows_in.setdefault(row, set()).add(key)
    dup_versions = {owner[k] for parts in rows_in.values() if len(parts) > 1 for k in parts}
    quarantined = {
        k.split("/")[3]
        for k in list_keys(client, paths.QUARANTINE + "readings/")
        if k.count("/") > 3
    }
    in_both = {ids[i] for i in quarantined if i in ids} & set(owner.values())
    put_keys = set().union(*(f.keys for f in files_by_version.values()))
    days = set().union(*(f.days for f in files_by_version.values()))
    silver_keys: list[tuple[str, str]] = []
    chunk_objects = [k for d in sorted(days) for k in list_keys(client, paths.chunks_day_prefix(d))]
    for frame in pool.map(lambda k: _parquet(client, k), chunk_objects):
        silver_keys.extend(_row_keys(frame))
    silver = set(silver_keys)
    not_ingested = [
        v for v in files_by_version if ledger.entries.get(v, {}).get("outcome") != "ingested"
    ]
    return {
        "bronze_parts": len(bronze),
        "bronze_rows": sum(len(p) for p in rows_in.values()),
        "versions_with_rows_in_two_parts": len(dup_versions - {None}),
        "versions_in_bronze_and_quarantine": len(in_both),
        "silver_rows": len(silver_keys),
        "silver_distinct_keys": len(silver),
        "silver_extra_rows": len(silver_keys) - len(silver & put_keys),
        "silver_missing_keys": len(put_keys - silver),
        "keys_put": len(put_keys),
        "duplicates": len(dup_versions - {None}) + len(in_both) + len(silver_keys) - len(silver),
        "lost": len(not_ingested),
        "not_ingested": [
            (v, ledger.entries.get(v, {}).get("outcome", "no ledger")) for v in not_ingested[:20]
        ],
    }


# --- modes ----------------------------------------------------------------------------------------


def _stack():
    """A fresh production profile on free loopback ports."""
    return prod_stack(dict.fromkeys(("s3", "postgres", "mlflow", "grpc", "ui", "api"), 0))


def _counts(runs: list[dict]) -> dict:
    return {
        "ingest_runs": sum(r["job"] == INGEST_JOB for r in runs),
        "lakehouse_runs": sum(r["job"] == "lakehouse_job" for r in runs),
        "other_runs": sum(r["job"] not in (INGEST_JOB, "lakehouse_job") for r in runs),
    }


def to_gold(stack: Stack, files: list[File], timeout: float) -> dict:
    """Put ``files`` at once (16 threads) on a fresh stack; time to bronze and to gold."""
    days = set().union(*(f.days for f in files))
    with ThreadPoolExecutor(PUT_THREADS) as pool, stack.instance() as instance:
        client = s3_client(stack)
        t0_epoch, t0 = time.time(), time.monotonic()
        progress = IngestProgress(instance, t0_epoch, t0)

        def put_one(file: File) -> str:
            version = put(client, file)
            progress.expect(version)
            return version

        versions = list(pool.map(put_one, files))
        puts_s = time.monotonic() - t0
        by_version = dict(zip(versions, files, strict=True))
        bronze_s = gold_s = None
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            stack.check_alive()
            if bronze_s is None and progress.poll() and progress.complete():
                bronze_s = progress.last_seen_s()
            if bronze_s is not None:
                status = gold_status(instance, days, progress.run_ids())
                if status["ready"]:
                    gold_s = time.monotonic() - t0
                    break
            time.sleep(1.0)
        waited = time.monotonic() - t0
        if gold_s is None:  # the bound: what the lake and instance hold at it
            progress.poll()
            status = gold_status(instance, days, progress.run_ids())
        runs = runs_summary(instance, t0_epoch)
        ticks = {
            name: ticks_summary(instance, name, t0_epoch)
            for name in ("readings_landing_sensor", "lakehouse_on_new_readings_sensor")
        }
        print_timeline(runs, ticks)
        ledger = Ledger(client, pool)  # the clock has stopped: the lake's own record
        for version in versions:
            ledger.expect(version)
        ledger.poll()
        checked = audit(client, pool, by_version, ledger)
    first_ingest = min((r["created"] for r in runs if r["job"] == INGEST_JOB), default=None)
    ingest_runs = [r for r in runs if r["job"] == INGEST_JOB]
    lakehouse_runs = [r for r in runs if r["job"] == "lakehouse_job"]
    return {
        "files": len(files),
        "rows": sum(len(f.keys) for f in files),
        "days": sorted(days),
        "timed_out": gold_s is None,
        "files_to_gold_s": gold_s if gold_s is not None else waited,
        "files_to_bronze_s": bronze_s if bronze_s is not None else waited,
        "bronze_timed_out": bronze_s is None,
        "puts_s": puts_s,
        "first_ingest_run_created_s": first_ingest,
        "ingest_run_seconds": _busy(ingest_runs),
        "lakehouse_run_seconds": _busy(lakehouse_runs),
        "gold_status": status,
        **_counts(runs),
        **checked,
        "runs": runs,
        "ticks": {k: [t for t in v if t["runs"]] for k, v in ticks.items()},
    }


def _busy(runs: list[dict]) -> float:
    """Seconds the runs were running (from start to end, or to now for one still running)."""
    return round(sum((r["ended"] or r["now"]) - r["started"] for r in runs if r["started"]), 1)


def sustained(stack: Stack, rate: float, seconds: float) -> dict:
    """Files at ``rate``/s for ``seconds``; the backlog every SAMPLE_S seconds, then up to
    DRAIN_S seconds for it to drain. The files' hours end STREAM_DAYS_BACK days before the last
    full hour: not the days of an earlier measurement on the same stack, and further apart than
    the lakehouse sensor merges into one run (MERGE_GAP_DAYS), so its runs do not rebuild those."""
    total = int(rate * seconds)
    end_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        days=STREAM_DAYS_BACK
    )
    files = generate(total, tag=f"stream{rate:g}", seed=11, end=end_hour)
    with ThreadPoolExecutor(PUT_THREADS) as pool, stack.instance() as instance:
        client = s3_client(stack)
        done = []  # versions whose put returned
        lock = threading.Lock()
        late = [0.0]
        t0_epoch, t0 = time.time(), time.monotonic()
        progress = IngestProgress(instance, t0_epoch, t0)

        def put_one(file: File) -> None:
            version = put(client, file)
            progress.expect(version)
            with lock:
                done.append(version)

        def schedule() -> None:
            for i, file in enumerate(files):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late[0] = max(late[0], -delay)
                pool.submit(put_one, file)

        feeder = threading.Thread(target=schedule, daemon=True)
        feeder.start()
        samples = []
        next_sample = t0 + SAMPLE_S
        end = t0 + seconds
        drain_end = end + DRAIN_S
        drained_s = None
        while True:
            stack.check_alive()
            time.sleep(max(0.0, next_sample - time.monotonic()))
            ingested = progress.poll()
            with lock:
                put_count = len(done)
            at = time.monotonic() - t0
            samples.append({"t": round(at, 1), "put": put_count, "ingested": ingested,
                            "backlog": put_count - ingested})  # fmt: skip
            print(f"[sustained] {samples[-1]}", file=sys.stderr, flush=True)
            next_sample += SAMPLE_S
            if next_sample > end and at < seconds:
                next_sample = end  # one sample exactly at the end of the stream
            if at >= seconds and put_count == total and ingested == total:
                drained_s = at - seconds
                break
            if time.monotonic() >= drain_end:
                break
        feeder.join(timeout=5)
        runs = [r for r in runs_summary(instance, t0_epoch) if r["created"] >= 0]
        ticks = {"readings_landing_sensor": ticks_summary(
            instance, "readings_landing_sensor", t0_epoch)}  # fmt: skip
        print_timeline(runs, ticks)
    # The stream's samples up to the one taken at its end (polling makes it a little late).
    last = next((i for i, s in enumerate(samples) if s["t"] >= seconds), len(samples) - 1)
    stream = samples[: last + 1]
    at_end = stream[-1]
    tail = stream[len(stream) // 3 :]
    slope = _slope([s["t"] for s in tail], [s["backlog"] for s in tail])
    ingest_slope = _slope([s["t"] for s in tail], [s["ingested"] for s in tail])
    return {
        "rate": rate,
        "seconds": seconds,
        "files": total,
        "max_put_lateness_s": late[0],
        "ingested_at_end": at_end["ingested"],
        "files_per_s": at_end["ingested"] / at_end["t"],
        "steady_ingest_files_per_s": ingest_slope,
        "backlog_max": max(s["backlog"] for s in stream),
        "backlog_end": at_end["backlog"],
        "backlog_slope_files_per_s": slope,
        # Flat: over the last two thirds of the stream the backlog grew by less than a tenth of
        # the offered rate (the platform kept at least 90 % of it).
        "flat": slope <= 0.1 * rate,
        "drained_s": drained_s,
        "samples": samples,
        **_counts(runs),
        "runs": runs,
        "ticks": {k: [t for t in v if t["runs"]] for k, v in ticks.items()},
    }


def _slope(x: list[float], y: list[float]) -> float:
    if len(x) < 2:
        return 0.0
    mx, my = sum(x) / len(x), sum(y) / len(y)
    var = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / var if var else 0.0


def main(argv: list[str]) -> int:
    """``burst N TIMEOUT [RATE SECONDS]``, ``one N TIMEOUT [RATE SECONDS]`` (then a stream on
    the same stack) or ``sustained RATE SECONDS``; the last argument is the output folder."""
    mode, *args, _out = argv
    if mode in ("burst", "one"):
        n, timeout, stream = int(args[0]), float(args[1]), [float(a) for a in args[2:4]]
    elif mode == "sustained":
        n, timeout, stream = 0, 0.0, [float(a) for a in args[0:2]]
    else:
        raise SystemExit(f"unknown mode {mode!r}: burst|one N TIMEOUT [RATE SECONDS] | "
                         "sustained RATE SECONDS")  # fmt: skip
    bound = timeout + (stream[1] + DRAIN_S if stream else 0) + STACK_BOUND_S
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(bound))
    result: dict = {"mode": mode}
    started = time.monotonic()
    with _stack() as stack:
        result["stack_start_s"] = time.monotonic() - started
        if mode == "burst":
            result["gold"] = to_gold(stack, generate(n, tag="burst"), timeout)
        elif mode == "one":
            result["gold"] = to_gold(stack, [as_one_file(generate(n, tag="one"), "one")], timeout)
        if stream:
            result["stream"] = sustained(stack, stream[0], stream[1])
        stopping = time.monotonic()
    signal.alarm(0)
    result["stack_stop_s"] = time.monotonic() - stopping
    result["worker_s"] = time.monotonic() - started
    result["sensor_interval_s"] = SENSOR_INTERVAL_S
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


#: bench_landing's plan: the reference file then a 5 files/s stream on one stack, the burst (then
#: a 10 files/s stream if 5 kept flat) on another; the burst's wait gets what the budget leaves.
BENCH_BUDGET_S = 22 * 60
ONE_FILE_TIMEOUT_S = 300
BURST_TIMEOUT_S = 600
STREAM_S = size(180, 10)
STACK_OVERHEAD_S = 240  # start-up, audit and teardown of one stack (2 cores under load)
BURST_FILES = size(2500, 20)


def bench_landing() -> list[dict]:
    """2,500 small files at once vs the same rows as one file, to gold; then files arriving at
    a fixed rate (benchmarks/landing.py). Two fresh production-profile stacks."""
    from benchmarks.run import DATA, record, run_worker

    started = time.monotonic()
    n = str(BURST_FILES)
    a = run_worker("benchmarks.landing", "one", n, str(ONE_FILE_TIMEOUT_S), "5", str(STREAM_S))
    one, streams = a["gold"], [a["stream"]]
    then_10 = streams[0]["flat"]
    left = BENCH_BUDGET_S - (time.monotonic() - started)
    reserve = STACK_OVERHEAD_S + (STREAM_S + DRAIN_S if then_10 else 0)
    timeout = int(max(60, min(BURST_TIMEOUT_S, left - reserve)))
    b = run_worker("benchmarks.landing", "burst", n, str(timeout),
                   *(["10", str(STREAM_S)] if then_10 else []))  # fmt: skip
    burst = b["gold"]
    if "stream" in b:
        streams.append(b["stream"])
    flat = [s for s in streams if s["flat"]]
    kept = max(flat, key=lambda s: s["rate"]) if flat else streams[0]
    files = burst["files"]
    records = [
        record("landing_2500_files_to_gold_s", burst["files_to_gold_s"], "s",
               "landing_one_file_same_rows_s", one["files_to_gold_s"], burst["rows"]),
        record("landing_one_file_same_rows_s", one["files_to_gold_s"], "s", rows=one["rows"]),
        record("landing_2500_files_to_bronze_s", burst["files_to_bronze_s"], "s",
               "landing_one_file_to_bronze_s", one["files_to_bronze_s"], files),
        record("landing_one_file_to_bronze_s", one["files_to_bronze_s"], "s", rows=one["rows"]),
        # 1: the wait hit its bound; the times above are then lower bounds, "lost" counts the
        # versions not ingested by then.
        record("landing_2500_timed_out", int(burst["timed_out"]), "bool",
               "landing_2500_wait_bound_s", timeout),
        record("landing_one_file_timed_out", int(one["timed_out"]), "bool"),
        record("landing_2500_duplicates", burst["duplicates"], "versions", rows=files),
        record("landing_2500_lost", burst["lost"], "versions", rows=files),
        record("landing_2500_silver_rows", burst["silver_rows"], "rows", "rows put",
               burst["keys_put"]),
        record("landing_2500_ingest_runs", burst["ingest_runs"], "runs",
               "landing_one_file_ingest_runs", one["ingest_runs"], files),
        record("landing_2500_lakehouse_runs", burst["lakehouse_runs"], "runs",
               "landing_one_file_lakehouse_runs", one["lakehouse_runs"], files),
        record("landing_one_file_ingest_runs", one["ingest_runs"], "runs", rows=1),
        record("landing_one_file_lakehouse_runs", one["lakehouse_runs"], "runs", rows=1),
        # The highest offered rate whose backlog stayed flat (else the lowest tried).
        record("landing_sustained_files_per_s", kept["files_per_s"], "files/s",
               "landing_sustained_offered_files_per_s", kept["rate"], kept["files"]),
        record("landing_sustained_offered_files_per_s", kept["rate"], "files/s",
               rows=int(kept["seconds"])),
        record("landing_sustained_flat", int(kept["flat"]), "bool",
               "landing_sustained_backlog_slope_files_per_s", kept["backlog_slope_files_per_s"]),
        record("landing_sustained_backlog_max", kept["backlog_max"], "files", rows=kept["files"]),
        record("landing_sustained_backlog_end", kept["backlog_end"], "files",
               "landing_sustained_backlog_max", kept["backlog_max"], kept["files"]),
    ]  # fmt: skip
    for s in streams:
        r = f"{s['rate']:g}"
        records += [
            record(f"landing_stream_{r}_files_per_s", s["files_per_s"], "files/s",
                   "offered rate", s["rate"], s["files"]),
            record(f"landing_stream_{r}_backlog_end", s["backlog_end"], "files",
                   f"landing_stream_{r}_backlog_max", s["backlog_max"], s["files"]),
        ]  # fmt: skip
    # The workers' whole results (run timelines, ticks, backlog samples) for a closer look.
    (DATA / "landing_last.json").write_text(json.dumps({"one": a, "burst": b}, indent=1) + "\n")
    print(f"[bench] landing: {time.monotonic() - started:.0f} s (worker one+stream "
          f"{a['worker_s']:.0f} s, burst {b['worker_s']:.0f} s)", flush=True)  # fmt: skip
    return records
