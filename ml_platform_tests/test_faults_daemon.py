"""Fault injection under the real daemon (issue 8, scenarios 1-3): S3 outages, PostgreSQL restarts,
a SIGKILLed run worker and a SIGKILLed daemon, against moto's S3 API and a PostgreSQL instance.

One daemon stack serves every scenario (module fixture). The platform reaches moto through a small
TCP proxy in this file, so an "S3 outage" closes the proxy's listener and every open connection
(connections are refused) while moto keeps its objects. The outage lasts ``OUTAGE_S`` (10 s, the
issue asks for 30 s: shortened to fit the suite's time budget).

The instance is the repository's ``dagster.yaml`` with two edits (made here, on a copy):
``run_monitoring.poll_interval_seconds`` 30 -> 5 and ``start_timeout_seconds`` 180 -> 60, so a
dead worker is noticed within the test's time budget.

Invariants checked after each fault, over every object version the scenario landed:
- processed (bronze parts) xor quarantined (a record), matching how its run ended;
- one effective run: exactly one root run per partition (retries of it are allowed), at most one
  success;
- nothing partial anywhere in the bucket (no ``.tmp-`` keys);
- the landing sensor's cursor is past every landed object and every object got a run or a
  quarantine record (the cursor never skipped one).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from ml_platform.lib import paths
from ml_platform.lib.generator import GeneratorConfig, write_files
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import open_store
from ml_platform_tests.feature_helpers import copy_feature_repo
from ml_platform_tests.servers import dagster_daemon

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[1]
PREFIX = paths.LANDING_PREFIXES["readings"]
SENSOR = "readings_landing_sensor"
HEADER = "timestamp,sensor_id,temperature,vibration,pressure,current\n"
OUTAGE_S = 10.0
SETTLE_S = 120.0
RESULTS: dict[str, dict] = {}


def small(n: int, tag: str) -> bytes:
    """A small valid readings file, different bytes for each (n, tag)."""
    value = 40 + n % 30
    return (
        HEADER + f"2024-06-01T10:00:00Z,{tag}-{n},{value},2,5,20\n"
        f"2024-06-02T10:00:00Z,{tag}-{n},{value + 1},2,5,21\n"
    ).encode()


# --- the S3 proxy -------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to moto on a fixed loopback port; :meth:`down` refuses and cuts connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(256)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not)
            listener.close()
        with self.lock:
            conns, self.conns = self.conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

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
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self.lock:
                self.conns -= {src, dst}

    @contextlib.contextmanager
    def outage(self, seconds: float):
        self.down()
        try:
            yield
            time.sleep(seconds)
        finally:
            self.up()


# --- the stack ----------------------------------------------------------------------------------


class Stack:
    def __init__(self, tmp: Path, s3_server, postgres, env: dict[str, str], proxy: Proxy):
        self.tmp, self.s3_server, self.postgres, self.env, self.proxy = (
            tmp,
            s3_server,
            postgres,
            env,
            proxy,
        )
        self.client = s3_server.client()  # straight to moto: the test's own view, never cut
        self.bucket = env["ML_PLATFORM_STORE_URL"][5:]
        self.store = open_store(env["ML_PLATFORM_STORE_URL"])  # through the proxy
        self.config = tmp / "dagster.faults.yaml"
        text = (ROOT / "dagster.yaml").read_text()
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
        self.versions: dict[str, str] = {}  # partition -> relative key, every scenario

    def start_daemon(self) -> None:
        log = self.tmp / f"daemon-{time.monotonic_ns()}.log"
        self._daemon_cm = dagster_daemon(
            self.tmp / "dagster_home", {**os.environ}, log, config=str(self.config)
        )
        self.instance, self.daemon = self._daemon_cm.__enter__()
        self.log = log

    def stop_daemon(self) -> None:
        if self._daemon_cm is not None:
            self._daemon_cm.__exit__(None, None, None)
            self._daemon_cm = None

    def put(self, name: str, body: bytes) -> str:
        etag = self.client.put_object(Bucket=self.bucket, Key=PREFIX + name, Body=body)["ETag"]
        partition = paths.partition_key(name, etag)
        self.versions[partition] = name
        return partition

    def runs(self, partition: str) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition})))

    def record(self, partition: str) -> dict | None:
        key = paths.quarantine_record(
            "readings", paths.file_id(partition), self.versions[partition]
        )
        try:
            return json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def parts(self, partition: str) -> list[str]:
        fid = paths.file_id(partition)
        return [
            k for k in self.keys(paths.BRONZE + "readings/") if k.endswith(f"/file={fid}.parquet")
        ]

    def settled(self, partition: str) -> bool:
        """Its latest run finished and nothing more will happen to it (no retry pending)."""
        runs = self.runs(partition)
        if not runs or not all(r.is_finished for r in runs):
            return False
        latest = runs[0]
        if latest.status == dg.DagsterRunStatus.SUCCESS:
            return True
        return latest.tags.get("dagster/will_retry") == "false"

    def settle(self, partitions: list[str], timeout: float = SETTLE_S) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.daemon.poll() is None, f"the daemon exited: {self.log_tail()}"
            if all(self.settled(p) for p in partitions):
                return time.monotonic() - start
            time.sleep(0.5)
        state = {p: [(r.status.value, dict(r.tags)) for r in self.runs(p)] for p in partitions}
        raise AssertionError(f"not settled after {timeout} s: {state}")

    def wait_started(self, partition: str, timeout: float = 60) -> dg.DagsterRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs(partition)
            if runs and runs[-1].status == dg.DagsterRunStatus.STARTED:
                return runs[-1]
            assert not (runs and runs[-1].is_finished), f"finished early: {runs[-1].status}"
            time.sleep(0.1)
        raise TimeoutError(f"no started run for {partition}")

    def cursor(self) -> str | None:
        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.origin.instigator_name == SENSOR:
                return state.instigator_data.cursor if state.instigator_data else None
        return None

    def ticks(self, since: float) -> list:
        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.origin.instigator_name == SENSOR:
                return list(
                    self.instance.get_ticks(
                        state.instigator_origin_id, state.selector_id, after=since, limit=500
                    )
                )
        return []

    def check(self, partitions: list[str]) -> dict:
        """The invariants over the scenario's object versions (and the whole bucket)."""
        outcome = {}
        for partition in partitions:
            runs, parts, record = (
                self.runs(partition),
                self.parts(partition),
                self.record(partition),
            )
            roots = [r for r in runs if "dagster/parent_run_id" not in r.tags]
            successes = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
            assert len(roots) == 1, f"{partition}: {len(roots)} root runs"
            assert len(successes) <= 1, f"{partition}: {len(successes)} successful runs"
            assert bool(parts) != bool(record), f"{partition}: parts={parts} record={record}"
            assert bool(successes) == bool(parts), f"{partition}: {[r.status for r in runs]}"
            retries = sum(
                len(self.instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY))
                for r in runs
            )
            outcome[partition] = {
                "runs": len(runs),
                "step_retries": retries,
                "statuses": [r.status.value for r in reversed(runs)],
                "parts": len(parts),
                "quarantined": record["reason"] if record else None,
            }
        everything = self.keys()
        assert not [k for k in everything if ".tmp-" in k], [k for k in everything if ".tmp-" in k]
        # The cursor is past every landed object version, and each of them has a run.
        left, _ = select_new(
            self.store.list(PREFIX), LandingCursor.from_json(self.cursor()), 1_000_000
        )
        assert left == [], [o.key for o in left]
        for partition in self.versions:
            assert self.runs(partition) or self.record(partition), f"skipped: {partition}"
        return outcome

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> bytes:
    """Three days of 50 sensors at 10 s in one file (~1.3M rows, ~60 MB): a run that takes a few
    seconds to ingest on 2 cores."""
    out = tmp_path_factory.mktemp("gen")
    files = write_files(GeneratorConfig(days=3, sensors=50, interval_s=10, seed=3), out)
    texts = [f.read_bytes() for f in files.readings]
    return texts[0] + b"".join(t.split(b"\n", 1)[1] for t in texts[1:])


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, postgres):
    tmp = tmp_path_factory.mktemp("faults_daemon")
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    db = f"dagster_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    env = {
        **s3_server.env(bucket),
        "AWS_ENDPOINT_URL_S3": proxy.endpoint,
        **postgres.dagster_env(db),
        "ML_PLATFORM_SENSOR_INTERVAL_S": "1",
        "ML_PLATFORM_FEAST_REPO": str(copy_feature_repo(tmp / "feature_repo")),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        s = Stack(tmp, s3_server, postgres, env, proxy)
        s.start_daemon()
        try:
            # Warm up: the first run proves the stack works before any fault.
            first = s.put("faults/warmup.csv", small(0, "warm"))
            s.settle([first], timeout=150)
            s.check([first])
            yield s
        finally:
            s.stop_daemon()
            for cm in s.abandoned:  # code servers orphaned by a SIGKILLed daemon
                cm.__exit__(None, None, None)
            proxy.down()
            print(f"\nFAULTS_DAEMON summary: {json.dumps(RESULTS, indent=1)}")


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


def report(name: str, **numbers) -> None:
    RESULTS[name] = numbers
    print(f"\nFAULTS_DAEMON {name}: " + " ".join(f"{k}={v}" for k, v in numbers.items()))


# --- scenario 1: S3 down ------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_s3_down_during_sensor_ticks(stack: Stack):
    since = time.time()
    with stack.proxy.outage(OUTAGE_S):
        # Landed (straight into moto) while the platform cannot reach S3: ticks fail meanwhile.
        landed = [stack.put(f"faults/s3tick/f{i}.csv", small(i, "s3tick")) for i in range(3)]
        time.sleep(1)
        assert not any(stack.runs(p) for p in landed)
    back = time.monotonic()
    stack.settle(landed)
    recovery = time.monotonic() - back
    failed = [t for t in stack.ticks(since) if t.status == TickStatus.FAILURE]
    assert failed, "no sensor tick failed during the outage"
    outcome = stack.check(landed)
    assert all(o["parts"] == 2 for o in outcome.values()), outcome
    report("s3_down_tick", recovery_s=round(recovery, 1), failed_ticks=len(failed), outcome=outcome)


@pytest.mark.timeout(180)
def test_s3_down_during_run_writes(stack: Stack, big_file: bytes):
    partition = stack.put("faults/s3run/big.csv", big_file)
    run = stack.wait_started(partition)
    time.sleep(1)  # into the step: downloading, validating, writing parts
    assert not stack.instance.get_run_by_id(run.run_id).is_finished, "run too fast to fault"
    with stack.proxy.outage(OUTAGE_S):
        pass
    back = time.monotonic()
    stack.settle([partition], timeout=150)
    recovery = time.monotonic() - back
    outcome = stack.check([partition])
    # Nothing lost: the file is processed once the store is back (a transient outage is not a
    # reason to quarantine good data).
    assert outcome[partition]["parts"] >= 1, outcome
    report("s3_down_run", recovery_s=round(recovery, 1), outcome=outcome)


# --- scenario 2: PostgreSQL restarted -----------------------------------------------------------


def restart_postgres(stack: Stack) -> float:
    start = time.monotonic()
    # Reuses postmaster.opts (port, socket dir); -l again, else the server keeps pg_ctl's
    # captured stdout open and the call never returns.
    log = str(stack.postgres.data_dir.parent / "server.log")
    stack.postgres.pg_ctl("-m", "fast", "-w", "-l", log, "restart")
    return time.monotonic() - start


@pytest.mark.timeout(180)
def test_postgres_restarted_during_a_run(stack: Stack, big_file: bytes):
    partition = stack.put("faults/pgrun/big.csv", big_file)
    run = stack.wait_started(partition)
    time.sleep(1.5)
    assert not stack.instance.get_run_by_id(run.run_id).is_finished, "run too fast to fault"
    downtime = restart_postgres(stack)
    back = time.monotonic()
    stack.settle([partition], timeout=150)
    recovery = time.monotonic() - back
    outcome = stack.check([partition])
    assert outcome[partition]["parts"] >= 1, outcome
    report("pg_restart_run", pg_restart_s=round(downtime, 1), recovery_s=round(recovery, 1),
           outcome=outcome)  # fmt: skip


@pytest.mark.timeout(150)
def test_postgres_restarted_during_sensor_ticks(stack: Stack):
    landed = []
    downtime = 0.0
    for i in range(3):  # ticks run every second: restarts land on ticks in progress
        landed.append(stack.put(f"faults/pgtick/f{i}.csv", small(i, "pgtick")))
        time.sleep(0.3 * i)
        downtime += restart_postgres(stack)
    back = time.monotonic()
    stack.settle(landed)
    recovery = time.monotonic() - back
    outcome = stack.check(landed)
    assert all(o["parts"] == 2 for o in outcome.values()), outcome
    report("pg_restart_tick", pg_restart_s=round(downtime, 1), recovery_s=round(recovery, 1),
           outcome=outcome)  # fmt: skip


# --- scenario 3: SIGKILL ------------------------------------------------------------------------


@pytest.mark.timeout(200)
def test_run_worker_sigkilled_mid_write(stack: Stack, big_file: bytes):
    partition = stack.put("faults/kill/big.csv", big_file)
    run = stack.wait_started(partition)
    deadline = time.monotonic() + 10
    while not (pids := run_pids(stack.instance, run.run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    pids = run_pids(stack.instance, run.run_id)
    assert pids, "no process for the run"
    assert not stack.instance.get_run_by_id(run.run_id).is_finished, "run too fast to fault"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    stack.settle([partition], timeout=170)
    recovery = time.monotonic() - killed
    outcome = stack.check([partition])
    runs = stack.runs(partition)
    assert len(runs) >= 2, "the killed run was not retried"
    assert outcome[partition]["parts"] >= 1, outcome
    report("sigkill_worker", killed_pids=len(pids), recovery_s=round(recovery, 1), outcome=outcome)


@pytest.mark.timeout(200)
def test_daemon_sigkilled_mid_tick_then_restarted(stack: Stack):
    since = time.time()
    landed = [stack.put(f"faults/daemon/f{i:02d}.csv", small(i, "daemon")) for i in range(8)]
    # Kill as soon as the sensor has begun requesting them: a tick in flight.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(stack.runs(p) for p in landed):
        time.sleep(0.02)
    old = stack.daemon
    os.kill(old.pid, signal.SIGKILL)
    killed = time.monotonic()
    old.wait(10)
    requested_before = sum(bool(stack.runs(p)) for p in landed)
    # Its code server and run workers live on (as they would after a daemon crash); the group
    # is cleaned up at teardown.
    stack.abandoned.append(stack._daemon_cm)
    stack._daemon_cm = None
    stack.start_daemon()
    stack.settle(landed, timeout=170)
    recovery = time.monotonic() - killed
    outcome = stack.check(landed)
    assert all(o["parts"] == 2 for o in outcome.values()), outcome
    report("sigkill_daemon", requested_before_kill=f"{requested_before}/{len(landed)}",
           ticks=len(stack.ticks(since)), recovery_s=round(recovery, 1),
           runs_per_object=sorted({o["runs"] for o in outcome.values()}))  # fmt: skip
