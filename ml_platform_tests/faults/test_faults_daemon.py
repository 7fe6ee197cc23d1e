"""Fault injection under the real daemon (docs/reliability.md): an S3 outage, PostgreSQL
restarts, a SIGKILLed run worker, a SIGKILLed daemon and two daemons at once, against moto's S3 API server and a real
PostgreSQL, with the deployed instance config ``docker/dagster.yaml`` (PostgreSQL storage, queued runs, run retries,
run monitoring, S3 compute logs).

Every process of the stack reaches S3 and PostgreSQL through a TCP proxy in this file, and each
fault is fired by the proxy when it sees the exact request the scenario is about, never after a
sleep: "during a run's writes" is the moment the ingest step sends its second bronze part (the
first one is already in the bucket), "during a sensor tick" is the listing response that shows
the landing sensor the new files, and "mid-tick" for the daemon is its third ``INSERT INTO runs``
of the batches the tick is submitting. The request is held while the fault happens (the S3 server
is cut off, or PostgreSQL restarts, or a process is SIGKILLed) and then forwarded or dropped. So the faults land
where they are meant to however loaded the machine is; only the waits for recovery depend on
speed, and they are generous.

Ingest runs are micro-batches (the object versions in the run config); the stack caps them at
two files (ML_PLATFORM_BATCH_MAX_FILES=2) so that a tick of a few files submits several runs and
a batch holds several files. A rejected file no longer fails its run: it is quarantined, the run
succeeds and its WARN check ``landed_files_pass_their_contract`` fails.

Invariants checked after each fault, over every object version the scenario landed:
- processed (bronze parts) xor quarantined (a record), as its ledger entry says;
- exactly once: the version is in the batch of exactly one root run (retries of it are allowed)
  and a successful run; across the successful runs whose batch holds it, "ingested" or
  "quarantined" is reported once, by the run its ledger entry names (others report
  ``already_*``); every successful run's metadata lists exactly the files of its batch, and its
  WARN check fails exactly when one of them was quarantined;
- the bronze parts are byte-identical to those of a clean run of the same object version (an
  in-process run on a separate bucket that no fault touches), with the same ledger outcome;
- nothing partial anywhere in the bucket (no open multipart upload, every Parquet object of the
  lake readable to its footer);
- the landing sensor's cursor is past every landed object and every object is in a run's batch
  (the cursor never skipped one).
The measurements (recovery time, root runs (batches), runs, step retries, failed ticks, ...) are
printed as ``FAULTS_DAEMON`` lines and summarised at the end of the module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType, TickStatus

from benchmarks.run import FAULT_RESULTS_ENV
from ml_platform.lib import paths
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import open_store
from ml_platform_tests.feature_helpers import copy_feature_repo
from ml_platform_tests.helpers import READINGS_HEADER as HEADER
from ml_platform_tests.helpers import ingest_landed, memory_instance
from ml_platform_tests.servers import dagster_daemon, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
PREFIX = paths.LANDING_PREFIXES["readings"]
SENSOR = "readings_landing_sensor"
#: How long the S3 server stays unreachable (the issue's 30 s).
OUTAGE_S = float(os.environ.get("ML_PLATFORM_FAULT_OUTAGE_S", "30"))
#: Each scenario runs this many times on the same stack (``make soak`` sets more).
ROUNDS = int(os.environ.get("ML_PLATFORM_FAULT_ROUNDS", "1"))
SETTLE_S = 150.0
#: Files per ingest run on this stack (the default is 500).
BATCH_MAX_FILES = 2
INGEST_JOB = "ingest_readings_job"
CHECK = "landed_files_pass_their_contract"
RESULTS: dict[str, dict] = {}


def reading_file(n: int, tag: str) -> bytes:
    """A small valid readings file over two days (so two bronze parts), different bytes for each
    (n, tag)."""
    value = 40 + n % 30
    return (
        HEADER + f"2024-06-01T10:00:00Z,{tag}-{n},{value},2,5,20\n"
        f"2024-06-02T10:00:00Z,{tag}-{n},{value + 1},2,5,21\n"
    ).encode()


# --- the proxy ----------------------------------------------------------------------------------


@dataclass
class Trap:
    pattern: re.Pattern[bytes]
    remaining: int  # matching chunks still to let through before the fault fires
    fault: Callable[[], None]
    from_server: bool  # match what the server sends (a response) instead of a request
    fired: threading.Event = field(default_factory=threading.Event)


class Proxy:
    """A TCP proxy on a loopback port that can cut every connection (:meth:`down`) and fire a
    fault when a matching request or response passes (:meth:`arm`)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.trap: Trap | None = None
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(256)
        with self.lock:
            self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones (the upstream server keeps its state)."""
        with self.lock:
            listener, self.listener = self.listener, None
            conns, self.conns = self.conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def arm(
        self, pattern: bytes, fault: Callable[[], None], nth: int = 1, from_server: bool = False
    ) -> threading.Event:
        """Run ``fault`` when the ``nth`` chunk matching ``pattern`` passes (a client's request,
        or with ``from_server`` a server's response), holding it until ``fault`` returns; then it
        is forwarded if its connection is still up. Returns an event set once the fault ran."""
        self.trap = Trap(re.compile(pattern, re.DOTALL), nth, fault, from_server)
        return self.trap.fired

    def _spring(self, data: bytes, from_server: bool) -> None:
        with self.lock:
            trap = self.trap
            if trap is None or trap.from_server != from_server or not trap.pattern.search(data):
                return
            trap.remaining -= 1
            if trap.remaining > 0:
                return
            self.trap = None
        try:
            trap.fault()
        finally:
            trap.fired.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:  # went down meanwhile: no connection survives
                    client.close()
                    upstream.close()
                    return
                self.conns |= {client, upstream}
            running = [2]  # pipes of this pair still running: the last one closes the sockets
            for src, dst, from_server in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pipe, args=(src, dst, from_server, running), daemon=True
                ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, from_server: bool, running: list[int]
    ) -> None:
        try:
            while data := src.recv(65536):
                self._spring(data, from_server)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self.lock:
                self.conns -= {src, dst}
                running[0] -= 1
                last = running[0] == 0
            if last:
                src.close()
                dst.close()


# --- the stack ----------------------------------------------------------------------------------


class Stack:
    """The daemon (with its code server and run workers) behind the two proxies; the test itself
    talks to moto and PostgreSQL directly."""

    def __init__(self, tmp: Path, s3_server, postgres, env: dict[str, str]) -> None:
        self.tmp, self.s3_server, self.postgres, self.env = tmp, s3_server, postgres, env
        self.s3 = Proxy(_host_port(s3_server.endpoint))
        self.pg = Proxy((postgres.host, postgres.port))
        self.daemon_env = {
            **os.environ,
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{self.s3.port}",
            "DAGSTER_PG_PORT": str(self.pg.port),
        }
        self.client = s3_server.client()
        self.bucket = env["ML_PLATFORM_STORE_URL"].removeprefix("s3://")
        self.store = open_store(env["ML_PLATFORM_STORE_URL"])
        # The deployed instance config (docker/dagster.yaml), with run monitoring polling every 5 s instead of 30 s so
        # a dead worker is noticed within the test's time budget.
        self.config = tmp / "dagster.faults.yaml"
        text = (ROOT / "docker" / "dagster.yaml").read_text()
        for old, new in (
            ("poll_interval_seconds: 30", "poll_interval_seconds: 5"),
            ("start_timeout_seconds: 180", "start_timeout_seconds: 60"),
        ):
            assert old in text, old
            text = text.replace(old, new)
        self.config.write_text(text)
        self._daemon_cm = None
        self.abandoned: list = []  # contexts of SIGKILLed daemons, closed at teardown
        self.instance = self.daemon = None
        self.landed: dict[str, tuple[str, bytes]] = {}  # partition -> (relative key, bytes)
        self.since = datetime.now(UTC) - timedelta(minutes=1)

    def start_daemon(self) -> None:
        self.log = self.tmp / f"daemon-{time.monotonic_ns()}.log"
        self._daemon_cm = dagster_daemon(
            self.tmp / "dagster_home", self.daemon_env, self.log, config=str(self.config)
        )
        self.instance, self.daemon = self._daemon_cm.__enter__()

    @contextlib.contextmanager
    def twin_daemon(self):
        """A second daemon on the same instance (its own home, the same config, databases and
        proxies), as a rolling deploy or a second stack started by mistake leaves for a while.
        Yields its log."""
        stamp = time.monotonic_ns()
        log, home = self.tmp / f"daemon-twin-{stamp}.log", self.tmp / f"dagster_home_twin_{stamp}"
        with dagster_daemon(home, self.daemon_env, log, config=str(self.config)):
            yield log

    def stop_daemon(self) -> None:
        if self._daemon_cm is not None:
            self._daemon_cm.__exit__(None, None, None)
            self._daemon_cm = None

    def put(self, name: str, body: bytes) -> str:
        """Land an object straight into the S3 server (as an uploader would, whatever the
        platform's own connection is doing)."""
        etag = self.client.put_object(Bucket=self.bucket, Key=PREFIX + name, Body=body)["ETag"]
        partition = paths.partition_key(name, etag)
        self.landed[partition] = (name, body)
        return partition

    def runs(self, version: str) -> list[dg.DagsterRun]:
        """The ingest runs whose batch holds ``version``, newest first, read from the run bodies.

        Not through the tag index: Dagster writes a run's row and its tag rows in two statements,
        so a daemon killed between them leaves a run the index does not know (see
        :meth:`untagged`)."""
        return [
            run
            for run in self.instance.get_runs(dg.RunsFilter(created_after=self.since))
            if run.job_name == INGEST_JOB and version in batch(run)
        ]

    def untagged(self, version: str) -> int:
        """How many of the version's runs the tag index misses."""
        indexed = self.instance.get_runs(
            dg.RunsFilter(tags={"ml_platform/ingest": "readings"}, created_after=self.since)
        )
        known = {r.run_id for r in indexed}
        return sum(r.run_id not in known for r in self.runs(version))

    def roots(self, versions: list[str]) -> list[dg.DagsterRun]:
        """The root runs (batches, not retries) holding any of ``versions``, oldest first."""
        found = {r.run_id: r for v in versions for r in self.runs(v)}
        roots = [r for r in found.values() if "dagster/parent_run_id" not in r.tags]
        return sorted(
            roots, key=lambda r: self.instance.get_run_record_by_id(r.run_id).create_timestamp
        )

    def reported(self, run: dg.DagsterRun) -> dict[str, str]:
        """A successful run's outcome per version, from its metadata table, which must list
        exactly the run's batch; its WARN check fails exactly when one was quarantined."""
        [record] = self.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        ).records
        metadata = record.event_log_entry.asset_materialization.metadata
        rows = [r.data for r in metadata["file_outcomes"].value.records]
        assert [r["version"] for r in rows] == batch(run), f"{run.run_id}: {rows} vs {batch(run)}"
        assert metadata["files"].value == len(rows)
        outcomes = {r["version"]: r["outcome"] for r in rows}
        [evaluation] = [
            r.event_log_entry.dagster_event.event_specific_data
            for r in self.instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
            if r.event_log_entry.dagster_event.event_specific_data.check_name == CHECK
        ]
        quarantined = sum(o == "quarantined" for o in outcomes.values())
        assert evaluation.passed == (not quarantined), (run.run_id, outcomes)
        assert evaluation.severity == dg.AssetCheckSeverity.WARN
        assert evaluation.metadata["quarantined_count"].value == quarantined
        return outcomes

    def ledger(self, version: str, bucket: str | None = None) -> dict | None:
        key = paths.ledger_object("readings", paths.file_id(version))
        try:
            return json.loads(
                self.client.get_object(Bucket=bucket or self.bucket, Key=key)["Body"].read()
            )
        except self.client.exceptions.NoSuchKey:
            return None

    def record(self, partition: str, bucket: str | None = None) -> dict | None:
        key = paths.quarantine_record(
            "readings", paths.file_id(partition), self.landed[partition][0]
        )
        try:
            body = self.client.get_object(Bucket=bucket or self.bucket, Key=key)["Body"].read()
            return json.loads(body)
        except self.client.exceptions.NoSuchKey:
            return None

    def keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket or self.bucket, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def parts(self, partition: str, bucket: str | None = None) -> dict[str, str]:
        """The version's bronze parts: key -> sha256 of the bytes."""
        suffix = f"/file={paths.file_id(partition)}.parquet"
        bucket = bucket or self.bucket
        return {
            key: hashlib.sha256(
                self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            ).hexdigest()
            for key in self.keys(paths.BRONZE + "readings/", bucket)
            if key.endswith(suffix)
        }

    def settled(self, partition: str) -> bool:
        """Its latest run finished and nothing more will happen to it (no retry pending)."""
        runs = self.runs(partition)
        if not runs or not all(r.is_finished for r in runs):
            return False
        if runs[0].status == dg.DagsterRunStatus.SUCCESS:
            return True
        return runs[0].tags.get("dagster/will_retry") == "false"

    def settle(self, partitions: list[str], timeout: float = SETTLE_S) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.daemon.poll() is None, f"the daemon exited: {self.log_tail()}"
            if all(self.settled(p) for p in partitions):
                return time.monotonic() - start
            time.sleep(0.5)
        state = {p: [(r.status.value, dict(r.tags)) for r in self.runs(p)] for p in partitions}
        raise AssertionError(f"not settled after {timeout} s: {state}")

    def _sensor_state(self, name: str = SENSOR):
        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.origin.instigator_name == name:
                return state
        return None

    def stop_sensor(self, name: str) -> None:
        """Turn a sensor off as the UI does (its stored state says STOPPED)."""
        self._set_sensor_status(name, InstigatorStatus.STOPPED)

    def pause_landing(self) -> None:
        """Turn the landing sensor off and let a tick already under way end (the interval is
        1 s), so that the next tick sees every file landed meanwhile."""
        self.stop_sensor(SENSOR)
        time.sleep(3)

    def start_sensor(self, name: str) -> None:
        """Turn a sensor back on as the UI does (its cursor is kept)."""
        self._set_sensor_status(name, InstigatorStatus.RUNNING)

    def _set_sensor_status(self, name: str, status: InstigatorStatus) -> None:
        state = self._sensor_state(name)
        assert state is not None, f"the daemon has not ticked {name} yet"
        self.instance.update_instigator_state(state.with_status(status))

    def cursor(self) -> str | None:
        state = self._sensor_state()
        return state.instigator_data.cursor if state and state.instigator_data else None

    def describe(self) -> str:
        """The latest runs and landing ticks, for a failure message."""
        runs = [f"{r.run_id[:8]} {r.status.value} {r.tags.get('dagster/run_key')}"
                for r in self.instance.get_runs(limit=8)]  # fmt: skip
        state = self._sensor_state()
        ticks = [] if state is None else [
            f"{t.status.value} runs={len(t.run_ids)} skip={t.skip_reason} error={t.error}"
            for t in self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
        ]  # fmt: skip
        return "runs:\n  " + "\n  ".join(runs) + "\nticks:\n  " + "\n  ".join(ticks)

    def failed_ticks(self, since: float) -> int:
        state = self._sensor_state()
        if state is None:
            return 0
        ticks = self.instance.get_ticks(
            state.instigator_origin_id, state.selector_id, after=since, limit=500
        )
        return sum(t.status == TickStatus.FAILURE for t in ticks)

    def check(self, versions: list[str], daemons: int = 1) -> dict:
        """The invariants over the scenario's object versions (and the whole bucket). Each
        version is in the batch of one run key, with a root run from each of up to ``daemons``
        daemons: racing ticks may each create the run of a request before seeing the other's."""
        outcome = {}
        for version in versions:
            runs, parts, record, entry = (
                self.runs(version),
                self.parts(version),
                self.record(version),
                self.ledger(version),
            )
            roots = [r for r in runs if "dagster/parent_run_id" not in r.tags]
            successes = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
            keys = {r.tags.get("dagster/run_key") for r in roots}
            assert len(keys) == 1 and len(roots) <= daemons, f"{version}: {len(roots)} roots"
            assert successes, f"{version}: no successful run: {[r.status for r in runs]}"
            assert entry is not None, f"{version}: no ledger entry"
            done = entry["outcome"]
            assert done in ("ingested", "quarantined"), entry
            assert entry["version"] == version and entry["run_id"] in {r.run_id for r in runs}
            # Exactly once by what the runs report: one successful run says "ingested" (or
            # "quarantined"), the one the ledger names; any other says "already_...".
            reported = {r.run_id: self.reported(r)[version] for r in successes}
            fresh = [(run_id, o) for run_id, o in reported.items() if not o.startswith("already_")]
            assert set(reported.values()) <= {done, f"already_{done}"}, (version, reported, entry)
            if fresh:
                assert fresh == [(entry["run_id"], done)], (version, reported, entry)
            else:
                # Decided by an attempt that failed after writing the ledger: a step retry of the
                # same run, or the parent of a run retry, then reported it as already done.
                writer = next(r for r in runs if r.run_id == entry["run_id"])
                assert writer.status != dg.DagsterRunStatus.SUCCESS or self.instance.all_logs(
                    writer.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY
                ), (version, reported, entry)
            assert bool(parts) != bool(record), f"{version}: parts={parts} record={record}"
            assert bool(parts) == (done == "ingested"), f"{version}: parts={parts} {entry}"
            assert sorted(entry["parts"]) == sorted(parts), (entry["parts"], parts)
            if record:
                assert record["reason"] == entry["reason"], (record, entry)
            clean, clean_entry = clean_run(self, version)
            assert parts == clean, f"{version}: bronze differs from a clean run: {parts} {clean}"
            for field_ in ("outcome", "rows", "rows_by_date", "reason"):
                assert entry[field_] == clean_entry[field_], (field_, entry, clean_entry)
            retries = sum(
                len(self.instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY))
                for r in runs
            )
            outcome[version] = {
                "runs": len(runs),
                "root_runs": len(roots),
                "batch_files": len(batch(roots[0])),
                "step_retries": retries,
                "statuses": [r.status.value for r in reversed(runs)],
                "reported": [reported[r.run_id] for r in reversed(successes)],
                "parts": len(parts),
                "same_as_clean_run": parts == clean,
                "runs_missing_from_tag_index": self.untagged(version),
                "quarantined": record["reason"] if record else None,
            }
        # No partial object anywhere: no multipart upload left open, and every Parquet object
        # of the lake (bronze, silver, gold, whoever wrote it) is whole (its footer reads).
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        assert not uploads, [u["Key"] for u in uploads]
        for key in self.keys("lake/"):
            if key.endswith(".parquet"):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                pq.ParquetFile(io.BytesIO(body))
        # The cursor is past every landed object version, and each of them is in a run's batch.
        left, _ = select_new(
            self.store.list(PREFIX), LandingCursor.from_json(self.cursor()), 1_000_000
        )
        assert left == [], [o.key for o in left]
        for version in self.landed:
            assert self.runs(version), f"skipped: {version}"
        return outcome

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""


def batch(run: dg.DagsterRun) -> list[str]:
    """The object versions of an ingest run (its run config)."""
    config = run.run_config.get("ops", {}).get("raw_readings", {}).get("config", {})
    return list(config.get("versions", []))


def batches(stack: Stack, versions: list[str]) -> list[int]:
    """The sizes of the root runs (batches) holding ``versions``, oldest first."""
    return [len(batch(r)) for r in stack.roots(versions)]


def _host_port(endpoint: str) -> tuple[str, int]:
    url = urlsplit(endpoint)
    return url.hostname, url.port


def clean_run(stack: Stack, partition: str) -> tuple[dict[str, str], dict]:
    """Bronze checksums and ledger entry of the same object version ingested in-process on a
    bucket of its own, with no fault anywhere: what the faulted run must have produced."""
    name, body = stack.landed[partition]
    bucket = f"clean-{uuid.uuid4().hex[:10]}"
    stack.client.create_bucket(Bucket=bucket)
    etag = stack.client.put_object(Bucket=bucket, Key=PREFIX + name, Body=body)["ETag"]
    try:
        with pytest.MonkeyPatch.context() as mp, memory_instance() as instance:
            mp.setenv("ML_PLATFORM_STORE_URL", f"s3://{bucket}")
            same, result = ingest_landed(instance, name, etag)
        assert same == partition
        assert result.success, f"the clean run of {name} failed"
        entry = stack.ledger(partition, bucket)
        assert entry is not None, f"the clean run of {name} wrote no ledger entry"
        return stack.parts(partition, bucket), entry
    finally:
        for key in stack.keys(bucket=bucket):
            stack.client.delete_object(Bucket=bucket, Key=key)
        stack.client.delete_bucket(Bucket=bucket)


def bronze_put(stack: Stack) -> bytes:
    """A request writing a bronze readings part (single PUT or the start of a multipart one)."""
    return rb"(PUT|POST) /" + stack.bucket.encode() + rb"/lake/bronze/readings/"


def listed(key: str) -> bytes:
    """A listing response naming ``key`` (URL-encoded or not)."""
    return rb"<Key>" + re.escape(key.encode()).replace(b"/", b"(?:/|%2F)") + rb"</Key>"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, postgres):
    tmp = tmp_path_factory.mktemp("faults_daemon")
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    db = f"dagster_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    env = {
        **s3_server.env(bucket),
        **postgres.dagster_env(db),
        "ML_PLATFORM_SENSOR_INTERVAL_S": "1",
        "ML_PLATFORM_BATCH_MAX_FILES": str(BATCH_MAX_FILES),
        "ML_PLATFORM_FEAST_REPO": str(copy_feature_repo(tmp / "feature_repo")),
        # The daemon's calls to the code server wait longer than Dagster's 60 s: on a loaded
        # 2-core CI machine a run launch while another stack starts can take more.
        "DAGSTER_GRPC_TIMEOUT_SECONDS": "180",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        s = Stack(tmp, s3_server, postgres, env)
        s.start_daemon()
        try:
            # Warm up: the first run proves the stack works before any fault.
            first = s.put("faults/warmup.csv", reading_file(0, "warm"))
            s.settle([first], timeout=180)
            s.check([first])
            assert batches(s, [first]) == [1]
            # The warm-up went on through the lakehouse (its Parquet is checked after every
            # scenario); from here on the scenarios are about landing and ingest, and the
            # lakehouse runs of every scenario's days would only load the machine.
            s.stop_sensor("lakehouse_on_new_readings_sensor")
            # The reference for the recovery times: one file, no fault, landed to ingested.
            start = time.monotonic()
            clean = s.put("faults/clean.csv", reading_file(0, "clean"))
            s.settle([clean])
            report("no_fault", tag="", upload_to_ingested_s=round(time.monotonic() - start, 1),
                   root_runs=len(s.roots([clean])))  # fmt: skip
            yield s
        finally:
            s.stop_daemon()
            for cm in s.abandoned:  # code servers orphaned by a SIGKILLed daemon
                cm.__exit__(None, None, None)
            s.s3.down()
            s.pg.down()
            print(f"\nFAULTS_DAEMON summary: {json.dumps(RESULTS, indent=1)}")
            if out := os.environ.get(FAULT_RESULTS_ENV):  # make bench BENCH=faults, the smoke
                Path(out).write_text(json.dumps(RESULTS, indent=1))


@pytest.fixture(params=range(ROUNDS), ids=lambda r: f"round{r}")
def tag(request) -> str:
    """Distinguishes the object keys and bytes of each round."""
    return f"r{request.param}"


def wait(event: threading.Event, what: str, stack: Stack, timeout: float = 180) -> None:
    assert event.wait(timeout), f"the fault never fired: {what}\n{stack.describe()}"


def report(name: str, **numbers) -> None:
    tag = numbers.pop("tag")
    name = name if ROUNDS == 1 else f"{name}[{tag}]"
    RESULTS[name] = numbers
    print(f"\nFAULTS_DAEMON {name}: " + " ".join(f"{k}={v}" for k, v in numbers.items()))


def run_pids(instance, run_id: str) -> list[int]:
    """The run worker's and its step processes' pids, as the run logged them ("... (pid: N)").

    The code server spawns run workers through multiprocessing, so no command line names the run.
    """
    pids = []
    for record in instance.all_logs(run_id):
        for match in re.finditer(r"pid: (\d+)", record.message or ""):
            pid = int(match.group(1))
            if pid != os.getpid() and Path(f"/proc/{pid}").exists() and pid not in pids:
                pids.append(pid)
    return pids


def restart_postgres(stack: Stack) -> float:
    start = time.monotonic()
    # Reuses postmaster.opts (port, socket dir); -l again, else the server keeps pg_ctl's
    # captured stdout open and the call never returns.
    log = str(stack.postgres.data_dir.parent / "server.log")
    stack.postgres.pg_ctl("-m", "fast", "-w", "-l", log, "restart")
    return time.monotonic() - start


# --- scenario 1: S3 down ------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_s3_down_during_a_runs_writes_and_sensor_ticks(stack: Stack, tag: str):
    """The S3 server becomes unreachable for 30 s the moment a run sends its second bronze part;
    meanwhile more files land (one of them rejected) and the landing sensor's ticks fail."""
    since = time.time()
    cut = stack.s3.arm(bronze_put(stack), stack.s3.down, nth=2)
    writing = stack.put(f"faults/{tag}/s3/writing.csv", reading_file(1, f"s3{tag}"))
    wait(cut, "second bronze PUT", stack)
    down_at = time.monotonic()
    landed = [
        stack.put(f"faults/{tag}/s3/tick-{i}.csv", reading_file(i, f"s3tick{tag}"))
        for i in range(3)
    ]
    bad = stack.put(f"faults/{tag}/s3/tick-bad.csv", HEADER.encode())  # header only
    landed.append(bad)
    deadline = down_at + 90
    while not stack.failed_ticks(since) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.failed_ticks(since), "no landing sensor tick failed while S3 was down"
    time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
    failed = stack.failed_ticks(since)
    assert not any(stack.runs(p) for p in landed), "a run was requested while S3 was down"
    stack.s3.up()
    back = time.monotonic()
    stack.settle([writing, *landed])
    recovery = time.monotonic() - back
    outcome = stack.check([writing, *landed])
    # Nothing lost: a transient outage is no reason to quarantine good data; the file that is
    # bad is quarantined (its run succeeds, the WARN check fails: see Stack.reported).
    assert all(o["parts"] == 2 for p, o in outcome.items() if p != bad), outcome
    assert outcome[bad]["quarantined"] == "no_rows" and outcome[bad]["parts"] == 0, outcome
    assert outcome[writing]["step_retries"] >= 1, outcome
    # The writing file was a batch of its own; the four that landed during the outage are seen
    # by the first tick that lists again: two runs of BATCH_MAX_FILES = 2.
    assert batches(stack, [writing]) == [1]
    assert batches(stack, landed) == [2, 2]
    report("s3_outage", tag=tag, outage_s=round(back - down_at, 1), recovery_s=round(recovery, 1),
           failed_ticks=failed, root_runs=len(stack.roots([writing, *landed])),
           batch_files=batches(stack, [writing, *landed]), outcome=outcome)  # fmt: skip


# --- scenario 2: PostgreSQL restarted -----------------------------------------------------------


@pytest.mark.timeout(240)
def test_postgres_restarted_during_a_run(stack: Stack, tag: str):
    downtime: list[float] = []
    restarted = stack.s3.arm(bronze_put(stack), lambda: downtime.append(restart_postgres(stack)))
    partition = stack.put(f"faults/{tag}/pg/run.csv", reading_file(2, f"pgrun{tag}"))
    wait(restarted, "bronze PUT", stack)
    back = time.monotonic()
    stack.settle([partition])
    recovery = time.monotonic() - back
    outcome = stack.check([partition])
    assert outcome[partition]["parts"] == 2, outcome
    assert batches(stack, [partition]) == [1]
    report("pg_restart_run", tag=tag, pg_restart_s=round(downtime[0], 1), recovery_s=round(recovery, 1),
           root_runs=len(stack.roots([partition])), outcome=outcome)  # fmt: skip


@pytest.mark.timeout(240)
def test_postgres_restarted_during_a_sensor_tick(stack: Stack, tag: str):
    """PostgreSQL restarts while the landing sensor holds the listing that shows it the new
    files (the response is held): the tick requests their runs after the restart."""
    names = [f"faults/{tag}/pg/tick-{i}.csv" for i in range(2)]
    downtime: list[float] = []
    restarted_at: list[float] = []

    def restart() -> None:
        restarted_at.append(time.time())
        downtime.append(restart_postgres(stack))

    restarted = stack.s3.arm(listed(PREFIX + names[0]), restart, from_server=True)
    landed = [stack.put(name, reading_file(i, f"pgtick{tag}")) for i, name in enumerate(names)]
    wait(restarted, "a listing naming the new file", stack)
    back = time.monotonic()
    stack.settle(landed)
    recovery = time.monotonic() - back
    for partition in landed:
        record = stack.instance.get_run_record_by_id(stack.runs(partition)[-1].run_id)
        created = record.create_timestamp.replace(tzinfo=record.create_timestamp.tzinfo or UTC)
        assert created.timestamp() > restarted_at[0], f"{partition}: run created before restart"
    outcome = stack.check(landed)
    assert all(o["parts"] == 2 for o in outcome.values()), outcome
    # One tick may see both files (one batch of 2) or the first alone (then two batches of 1).
    assert batches(stack, landed) in ([2], [1, 1]), batches(stack, landed)
    report("pg_restart_tick", tag=tag, pg_restart_s=round(downtime[0], 1), recovery_s=round(recovery, 1),
           root_runs=len(stack.roots(landed)), batch_files=batches(stack, landed),
           outcome=outcome)  # fmt: skip


# --- scenario 3: SIGKILL ------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_run_worker_sigkilled_mid_write(stack: Stack, tag: str):
    """SIGKILL to the run worker and its step process while the second bronze part is on its way
    (the first is already written): run monitoring fails the run, the retry rewrites both."""
    body = reading_file(3, f"kill{tag}")
    partition = paths.partition_key(f"faults/{tag}/kill/worker.csv", hashlib.md5(body).hexdigest())
    killed: list[int] = []

    def kill_worker() -> None:
        run = stack.runs(partition)[0]
        killed.extend(run_pids(stack.instance, run.run_id))
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    fired = stack.s3.arm(bronze_put(stack), kill_worker, nth=2)
    assert stack.put(f"faults/{tag}/kill/worker.csv", body) == partition
    wait(fired, "second bronze PUT", stack)
    assert killed, "no process found for the run"
    at = time.monotonic()
    stack.settle([partition])
    recovery = time.monotonic() - at
    outcome = stack.check([partition])
    runs = stack.runs(partition)
    assert len(runs) >= 2, "the killed run was not retried"
    assert runs[-1].status == dg.DagsterRunStatus.FAILURE, runs[-1].status
    assert outcome[partition]["parts"] == 2, outcome
    assert batches(stack, [partition]) == [1]
    report("sigkill_worker", tag=tag, killed_pids=len(killed), recovery_s=round(recovery, 1),
           root_runs=len(stack.roots([partition])), outcome=outcome)  # fmt: skip


@pytest.mark.timeout(480)
def test_daemon_sigkilled_between_a_ticks_run_submissions(stack: Stack, tag: str):
    """SIGKILL to the daemon while its sensor tick is submitting runs: seven files make four
    batches (2, 2, 2, 1), two of the runs are in PostgreSQL and the third INSERT is on its way (it
    arrives, the tag rows that would follow it never do), the cursor has not moved. The restarted
    daemon resumes the tick with its reserved run ids: it launches the third run and submits the
    others, none of them twice."""
    bodies = [reading_file(i, f"daemon{tag}") for i in range(7)]
    # Armed before the files land (a single PUT's ETag is the MD5 of the bytes).
    etags = b"|".join(hashlib.md5(b).hexdigest().encode() for b in bodies)
    old = stack.daemon
    fired = stack.pg.arm(
        rb"INSERT INTO runs \(.*(" + etags + rb")", lambda: os.kill(old.pid, signal.SIGKILL), nth=3
    )
    # The sensor is off while they land, so that one tick sees all seven.
    stack.pause_landing()
    landed = [stack.put(f"faults/{tag}/daemon/f{i}.csv", body) for i, body in enumerate(bodies)]
    stack.start_sensor(SENSOR)
    wait(fired, "third INSERT INTO runs", stack)
    killed = time.monotonic()
    old.wait(10)
    time.sleep(1)  # the held INSERT is forwarded after the kill
    before = len(stack.roots(landed))
    assert before == 3, f"{before} runs were in PostgreSQL when the daemon died"
    # Its code server and run workers outlive it (as after a daemon crash; the code server shuts
    # itself down once heartbeats stop); closed at teardown.
    stack.abandoned.append(stack._daemon_cm)
    stack._daemon_cm = None
    stack.start_daemon()
    # A batch the dead daemon had begun to launch may be left STARTING (its code server shuts
    # down without heartbeats): run monitoring fails it after start_timeout_seconds (60 s here) and
    # retries it, and as ingest runs go one per dataset at a time (dagster.yaml), every other
    # batch waits behind it.
    stack.settle(landed, timeout=2 * SETTLE_S)
    recovery = time.monotonic() - killed
    outcome = stack.check(landed)
    assert all(o["parts"] == 2 for o in outcome.values()), outcome
    # Every version in one batch (check), no batch twice: as many root runs as run keys, each
    # of at most BATCH_MAX_FILES files; four of them when one tick saw all seven files.
    roots = stack.roots(landed)
    sizes = batches(stack, landed)
    assert len({r.tags["dagster/run_key"] for r in roots}) == len(roots), [r.tags for r in roots]
    assert sum(sizes) == len(landed) and max(sizes) <= BATCH_MAX_FILES, sizes
    assert len(roots) >= math.ceil(len(landed) / BATCH_MAX_FILES), sizes
    report("sigkill_daemon", tag=tag, runs_before_kill=f"{before}/{len(roots)}",
           recovery_s=round(recovery, 1), root_runs=len(roots), batch_files=sizes,
           runs_per_object=sorted({o["runs"] for o in outcome.values()}), outcome=outcome,
           runs_missing_from_tag_index=sum(stack.untagged(p) for p in landed))  # fmt: skip


# --- scenario 4: two daemons --------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_two_daemons_tick_the_landing_sensor_from_one_cursor(stack: Stack, tag: str):
    """Two daemons on one instance: the listing that shows one daemon's landing tick the new
    files is held until the other daemon's tick lists them too, so both ticks cut their batches
    from the same cursor and submit them. Each version still ends up ingested exactly once."""
    names = [f"faults/{tag}/twin/f{i}.csv" for i in range(4)]
    stack.pause_landing()
    with stack.twin_daemon() as twin_log:
        deadline = time.monotonic() + 120
        while "Checking for new runs for sensor" not in twin_log.read_text():
            assert time.monotonic() < deadline, f"the second daemon never ticked: {twin_log}"
            time.sleep(0.5)
        second = threading.Event()

        def hold_until_the_other_tick_lists() -> None:
            stack.s3.arm(listed(PREFIX + names[0]), second.set, from_server=True)
            second.wait(90)

        first = stack.s3.arm(listed(PREFIX + names[0]), hold_until_the_other_tick_lists,
                             from_server=True)  # fmt: skip
        landed = [stack.put(name, reading_file(i, f"twin{tag}")) for i, name in enumerate(names)]
        stack.start_sensor(SENSOR)
        wait(first, "a listing naming the new files", stack)
        assert second.is_set(), f"no second tick listed the files\n{stack.describe()}"
        released = time.monotonic()
        stack.settle(landed)
        recovery = time.monotonic() - released
        outcome = stack.check(landed, daemons=2)
        roots = stack.roots(landed)
    assert all(o["parts"] == 2 for o in outcome.values()), outcome
    # Both ticks cut the same batches: runs of one run key hold the same versions.
    by_key: dict[str, list[list[str]]] = {}
    for run in roots:
        by_key.setdefault(run.tags["dagster/run_key"], []).append(batch(run))
    assert all(len({tuple(b) for b in batches_}) == 1 for batches_ in by_key.values()), by_key
    assert sorted(v for batches_ in by_key.values() for v in batches_[0]) == sorted(landed)
    report("twin_daemons", tag=tag, recovery_s=round(recovery, 1), root_runs=len(roots),
           run_keys=len(by_key), batch_files=batches(stack, landed),
           reported=sorted({tuple(o["reported"]) for o in outcome.values()}),
           outcome=outcome)  # fmt: skip
