"""Fault injection (docs/reliability.md): a burst of uploads, racing ticks, a big file.

The landing side reuses the invariants harness of ``test_faults_uploads.py`` (:class:`Lake`: the
real S3 API of a moto server, the real landing sensor in batch mode, ``raw_readings`` run on a
real Dagster instance with each batch request's partition and run config). Run requests are
submitted as one daemon submits them: a request whose run key already has a run of this sensor
is skipped (Dagster's run-key dedupe, read through ``DagsterInstance.get_runs``); a request two
racing ticks both cut is run twice, as two daemons run it (``Lake.submit``; the real two-daemon
race is in ``test_faults_daemon.py``). Exactly once is judged by the outputs (:meth:`Lake.check`):
bronze parts XOR a quarantine record per version, its ledger entry, every part written once.

==========================================================  =========================================
Scenario                                                    Test
==========================================================  =========================================
8  500 files landed at once (default: one batch of 500;     ``test_500_files_landed_at_once``
   capped: 100 per batch, 2 batches per tick)
8  two evaluations of one tick racing from one cursor;      ``test_two_ticks_racing_from_one_cursor``
   two batches overlapping in the versions they name
8  a manual launch before / during a tick                   ``test_manual_launch_before_and_during_a_tick``
9  a CSV 5x larger than the run worker's memory budget,     ``test_file_5x_the_memory_budget``
   under an enforced RSS limit
9  a budget too small for any file: not the file's fault    ``test_out_of_budget_is_not_a_rejected_file``
   (a retried step failure, no quarantine)
==========================================================  =========================================

How scenario 9 limits memory: ``RLIMIT_AS`` caps virtual address space, which DuckDB, jemalloc and
Python's thread stacks reserve far beyond what they touch, so it fails for the wrong reason (a
refused reservation) or not at all; the cgroup-v1 memory controller here belongs to the sandbox
that runs the tests and is not delegated. So the run worker is a fresh process whose resident
memory a watchdog samples every 20 ms from ``/proc/<pid>/status`` and kills (SIGKILL, as a
container's OOM killer would) past a hard limit; its exact peak is the kernel's ``VmHWM`` for the
worker (not ``ru_maxrss``, which across exec keeps the parent's peak). The same worker ingesting a
1,000-row file gives the floor (Python, Dagster, DuckDB and pyarrow loaded); the big file may add
at most 3x the budget on top.

Each test prints one ``FAULTS`` line with what it measured (run ``pytest -s`` to see them).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import dagster as dg
import duckdb
import pytest

import ml_platform.defs.ingest.assets as ingest_assets
from ml_platform.defs.ingest.sensors import BatchLimits
from ml_platform.lib import paths
from ml_platform.lib.contract import load_contract
from ml_platform.lib.ingest import OutOfBudgetError, RejectedFileError, ingest_file
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import LocalStore
from ml_platform_tests.faults.test_faults_uploads import (
    HEADER,
    PREFIX,
    RUN_KEY,
    Lake,
    batch_versions,
    contract_check,
    csv,
    make_sensor,
    meta,
    tick,
)
from ml_platform_tests.helpers import ingest_versions, outcomes, table_column

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lake(s3_server, s3_env, instance, monkeypatch) -> Lake:
    return Lake(s3_server, s3_env, instance, monkeypatch)


def small_file(i: int) -> bytes:
    """A valid one-day file, different per ``i``; every tenth a header only (quarantined)."""
    if i % 10 == 9:
        return (HEADER + "\n").encode()
    return csv([f"2024-03-01T{h:02d}:00:00Z,s{i},{20 + i % 50}.5,1.5,5,20" for h in range(3)])


def assert_cursor_past_everything(lake: Lake, sensor=None, cursor=None) -> None:
    sensor, cursor = sensor or lake.sensor, cursor or lake.cursor
    left, _ = select_new(lake.store.list(PREFIX), LandingCursor.from_json(cursor), 10**6)
    assert left == []
    requests, _, result = tick(sensor, lake.instance, cursor, lake.resources)
    assert requests == [] and isinstance(result, dg.SkipReason)


def landing_days_of(lake: Lake) -> set[str]:
    """The UTC days S3 says the landed objects were written (one, unless run across midnight)."""
    return {o.last_modified.astimezone(UTC).date().isoformat() for o in lake.store.list(PREFIX)}


@pytest.mark.timeout(420)
def test_500_files_landed_at_once(lake: Lake):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: lake.put(f"burst/{i:03d}.csv", small_file(i)), range(500)))
    assert len(lake.versions) == 500
    [day] = landing_days_of(lake)

    # Default limits (500 files, 1 GiB a batch): one tick, one batch run of all 500 versions.
    started = time.perf_counter()
    [request] = lake.tick()
    tick_s = time.perf_counter() - started
    versions = batch_versions(request)
    assert len(versions) == len(set(versions)) == 500 and set(versions) == set(lake.versions)
    assert request.partition_key == day
    assert request.tags["ml_platform/batch_files"] == "500"
    assert request.run_key.startswith(f"readings:{day}:500:")
    assert_cursor_past_everything(lake)

    # Capped batches (100 files, 2 runs a tick), from a fresh cursor: 200 versions a tick in two
    # runs of 100, then the last 100; every version in exactly one batch, distinct run keys.
    capped, cursor, per_tick = make_sensor(BatchLimits(max_files=100, runs_per_tick=2)), None, []
    while True:
        requests, cursor, result = tick(capped, lake.instance, cursor, lake.resources)
        if not requests:
            assert isinstance(result, dg.SkipReason)
            break
        per_tick.append(requests)
    assert [[len(batch_versions(r)) for r in t] for t in per_tick] == [
        [100, 100],
        [100, 100],
        [100],
    ]
    capped_versions = [v for t in per_tick for r in t for v in batch_versions(r)]
    assert len(capped_versions) == len(set(capped_versions)) == 500
    assert set(capped_versions) == set(lake.versions)
    assert len({r.run_key for t in per_tick for r in t}) == 5
    assert {r.partition_key for t in per_tick for r in t} == {day}
    assert_cursor_past_everything(lake, capped, cursor)

    # The default batch, as the daemon launches it: one run handles all 500 versions.
    started = time.perf_counter()
    handled = lake.launch_all([request])
    run_s = time.perf_counter() - started
    assert sorted(handled) == sorted(lake.versions)
    [result] = lake.results.values()
    assert result.success
    quarantined = {v for v, o in outcomes(result).items() if o == "quarantined"}
    assert quarantined == {v for v, name in lake.versions.items() if name.endswith("9.csv")}
    assert len(quarantined) == 50
    assert {lake.record(v)["reason"] for v in quarantined} == {"no_rows"}
    assert meta(result)["outcomes"] == {"ingested": 450, "quarantined": 50}
    assert table_column(meta(result)["rows_by_date"], "date", "rows") == {"2024-03-01": 450 * 3}
    evaluation = contract_check(result)
    assert not evaluation.passed and evaluation.metadata["quarantined_count"].value == 50

    # The same request run again (a tick evaluated by two daemons at once), then a batch cut
    # differently that overlaps the burst (one of the capped sensor's): every version skipped
    # by the ledger, nothing written.
    writes = Counter(lake.writes)
    repeat, overlap = lake.submit(request), lake.submit(per_tick[1][0])
    assert Counter(outcomes(repeat).values()) == {
        "already_ingested": 450,
        "already_quarantined": 50,
    }
    assert set(outcomes(overlap).values()) <= {"already_ingested", "already_quarantined"}
    assert len(outcomes(overlap)) == 100 and lake.writes == writes
    lake.check()
    print(
        f"\nFAULTS 8-burst: objects=500 batches_default=1 tick_s={tick_s:.2f} "
        f"capped_per_tick={[[len(batch_versions(r)) for r in t] for t in per_tick]} "
        f"run_s={run_s:.1f} s_per_file={run_s / 500:.3f} quarantined={len(quarantined)} "
        f"cursor_hwm={LandingCursor.from_json(lake.cursor).hwm}"
    )


def test_two_ticks_racing_from_one_cursor(lake: Lake):
    for i in range(6):
        lake.put(f"race/{i}.csv", small_file(i))
    barrier = threading.Barrier(2)

    def evaluate(_):
        context = dg.build_sensor_context(
            instance=lake.instance, cursor=lake.cursor, resources=lake.resources
        )
        barrier.wait()
        return lake.sensor(context)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(evaluate, range(2))
    # Identical requests: the same batch under the same run key, the same cursor.
    for result in (first, second):
        assert not result.dynamic_partitions_requests
    [one], [two] = first.run_requests, second.run_requests
    assert (one.run_key, one.partition_key, one.run_config) == (
        two.run_key,
        two.partition_key,
        two.run_config,
    )
    assert sorted(batch_versions(one)) == sorted(lake.versions)
    assert first.cursor == second.cursor
    lake.cursor = second.cursor
    lake.requests += [one, two]

    # Both requests become runs, as with two daemons (test_faults_daemon.py saw both submitted:
    # run-key dedupe does not see across racing ticks); the queue runs them one after the other,
    # and the ledger makes the second one handle nothing.
    first_run, second_run = lake.submit(one), lake.submit(two)
    assert first_run.success and second_run.success
    assert outcomes(first_run) == dict.fromkeys(lake.versions, "ingested")
    assert outcomes(second_run) == dict.fromkeys(lake.versions, "already_ingested")
    runs = lake.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY: one.run_key}))
    assert len(runs) == 2
    assert_cursor_past_everything(lake)

    # Two batches overlapping in their versions (one after the other, as the run queue's limit of
    # one ingest run per dataset orders them): the second skips the versions the first handled,
    # by the ledger, and ingests only its new ones; no part is written twice.
    more = [lake.put(f"race/{i}.csv", small_file(i)) for i in range(6, 9)]
    overlap = [v for v in lake.versions if v not in more][:3] + more
    [request] = lake.tick()
    assert sorted(batch_versions(request)) == sorted(more)
    second_batch = lake.batch(overlap)  # the overlapping batch goes first, by hand
    assert outcomes(second_batch) == {
        **{v: "already_ingested" for v in overlap[:3]},
        **{v: "ingested" for v in more},
    }
    assert lake.launch_all([request]) == []  # the sensor's batch: every version already done
    [sensor_run] = [
        r for r in lake.results.values() if r.dagster_run.tags.get(RUN_KEY) == request.run_key
    ]
    assert outcomes(sensor_run) == {v: "already_ingested" for v in batch_versions(request)}
    outcome = lake.check()  # every part written once, one ledger entry each
    assert all(isinstance(o, dict) for o in outcome.values())
    # The guard for batches running at the same time is the run queue (one ingest run per
    # dataset, e2e/test_run_limits.py), and behind it the ledger's create-only entries.
    print(
        f"\nFAULTS 8-race: versions={len(lake.versions)} requests={len(lake.requests)} "
        f"runs={len(lake.results)} overlapping_skipped=3 "
        f"cursor_hwm={LandingCursor.from_json(lake.cursor).hwm}"
    )


def test_manual_launch_before_and_during_a_tick(lake: Lake):
    a, b, c = (lake.put(f"manual/{n}.csv", small_file(i)) for i, n in enumerate("abc"))

    # Before the tick: someone launches today's partition by hand, naming a's key (no run key).
    manual_a = lake.batch(files=["manual/a.csv"])
    assert manual_a.success and outcomes(manual_a) == {a: "ingested"}
    parts_a = lake.parts(a)
    [request] = lake.tick()
    requested = batch_versions(request)
    assert set(requested) - {a} == {b, c}  # a may be named again: its batch skips it

    # During the tick: the tick already requested its batch; b is launched by hand before the
    # daemon launches it. A hand-launched run carries no run key, so the run-key dedupe cannot see
    # it; the ledger can: the batch skips b, and b's parts are written once.
    manual_b = lake.batch([b])
    assert manual_b.success and outcomes(manual_b) == {b: "ingested"}
    parts_b = lake.parts(b)
    assert lake.launch_all([request]) == [c]
    [sensor_run] = [r for r in lake.results.values() if r not in (manual_a, manual_b)]
    assert outcomes(sensor_run) == {
        **({a: "already_ingested"} if a in requested else {}),
        b: "already_ingested",
        c: "ingested",
    }
    assert lake.parts(a) == parts_a and lake.parts(b) == parts_b  # same days, same sha256
    # A whole landing day launched by hand (empty config): its three versions, all done before.
    day_run = lake.batch()
    assert outcomes(day_run) == {v: "already_ingested" for v in (a, b, c)}
    lake.check()  # handled once each, by manual_a, manual_b and the sensor's run
    assert lake.ledger(a)["run_id"] == manual_a.run_id
    assert lake.ledger(b)["run_id"] == manual_b.run_id
    assert lake.ledger(c)["run_id"] == sensor_run.run_id
    assert_cursor_past_everything(lake)
    print(
        "\nFAULTS 8-manual: before_tick=already_ingested during_tick=already_ingested "
        f"runs={len(lake.results)} parts_b={parts_b}"
    )


# Scenario 9 -----------------------------------------------------------------------------------

BUDGET_MB = 64
ROWS = 6_500_000  # ~340 MB of CSV: more than 5x the budget
DUPLICATES = 19_900  # rows 100..19,999 again at the end
REJECTS = -(-(ROWS - 7) // 100_000)  # every 100,000th row (from row 7) has no timestamp

WORKER = """
import json, os, sys, time
started = time.perf_counter()
import dagster as dg
from ml_platform.lib import paths
from ml_platform.lib.store import open_store
from ml_platform_tests.helpers import ingest_landed, memory_instance, outcomes
store = open_store(os.environ["ML_PLATFORM_STORE_URL"])
etag = store.etag(paths.landing_object("readings", sys.argv[1]))
with memory_instance() as instance:
    version, result = ingest_landed(instance, sys.argv[1], etag)
    out = {"success": result.success, "seconds": round(time.perf_counter() - started, 1)}
    if result.success:
        [m] = result.asset_materializations_for_node("raw_readings")
        out["outcome"] = outcomes(result)[version]
        out.update({k: m.metadata[k].value for k in ("dates", "dagster/row_count", "bronze_parts")
                    if k in m.metadata})
        out.update(m.metadata["first_file"].value if "first_file" in m.metadata else {})
    else:
        out["error"] = result.failure_data_for_node("raw_readings").error.message[:1500]
# The kernel's high-water mark of this process's own memory since exec. Not ru_maxrss: across
# exec that keeps the parent's peak (Linux copies it in exec_mmap), here pytest's ~300 MB.
status = open("/proc/self/status").read().splitlines()
out["vm_hwm_kb"] = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
print(json.dumps(out))
"""


def write_big_csv(target: Path) -> None:
    """Unique readings one second apart (76 UTC days), some without a timestamp, duplicates."""

    def select(rows: str, null_ts: bool) -> str:
        ts = "strftime(TIMESTAMP '2024-01-01' + to_seconds(i), '%Y-%m-%dT%H:%M:%SZ')"
        if null_ts:
            ts = f"CASE WHEN i % 100000 = 7 THEN NULL ELSE {ts} END"
        return (
            f"SELECT {ts} AS timestamp, 'sensor-' || lpad(CAST(i % 50 AS VARCHAR), 3, '0') "
            "AS sensor_id, round(20 + (i % 997) * 0.05, 3) AS temperature, "
            "round((i % 113) * 0.07, 3) AS vibration, round(1 + (i % 37) * 0.1, 2) AS pressure, "
            f"round(10 + (i % 71) * 0.3, 2) AS current FROM {rows} t(i)"
        )

    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order=true")
        con.execute(
            f"COPY ({select(f'range({ROWS})', True)} UNION ALL "
            f"{select(f'range(100, {100 + DUPLICATES})', False)}) "
            f"TO '{target}' (HEADER, DELIMITER ',')"
        )


def run_worker(lake_dir: Path, name: str, limit_mb: float) -> tuple[dict, float, float]:
    """Ingest ``name`` in a fresh run worker killed past ``limit_mb`` of RSS; returns its output,
    its peak RSS (MB, the kernel's VmHWM) and the peak the watchdog sampled."""
    env = {
        **os.environ,
        "ML_PLATFORM_STORE_URL": lake_dir.as_uri(),
        "ML_PLATFORM_INGEST_MEMORY": f"{BUDGET_MB}MB",
    }
    env.pop("DAGSTER_HOME", None)
    log = lake_dir.parent / f"{name}.log"
    with log.open("w+") as err, (lake_dir.parent / f"{name}.out").open("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", WORKER, name],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )
        sampled, killed = 0.0, False
        status = Path(f"/proc/{proc.pid}/status")
        while True:
            pid, code, _ = os.wait4(proc.pid, os.WNOHANG)  # reaps it when it has exited
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(code)
                break
            try:
                rss_kb = next(
                    int(line.split()[1])
                    for line in status.read_text().splitlines()
                    if line.startswith("VmRSS:")
                )
            except (OSError, StopIteration):  # exiting
                rss_kb = 0
            sampled = max(sampled, rss_kb / 1024)
            if sampled > limit_mb and not killed:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    assert not killed, f"run worker killed at {sampled:.0f} MB RSS (limit {limit_mb:.0f} MB)"
    assert proc.returncode == 0 and output.strip(), errors[-3000:]
    result = json.loads(output.strip().splitlines()[-1])
    return result, result["vm_hwm_kb"] / 1024, sampled


@pytest.mark.timeout(150)
def test_file_5x_the_memory_budget(tmp_path: Path):
    lake_dir = tmp_path / "lake"
    landing = lake_dir / PREFIX
    landing.mkdir(parents=True)
    started = time.perf_counter()
    write_big_csv(landing / "big.csv")
    generate_s = time.perf_counter() - started
    size_mb = (landing / "big.csv").stat().st_size / 1e6
    assert size_mb > 5 * BUDGET_MB
    with (landing / "big.csv").open() as fh:
        (landing / "small.csv").write_text("".join(next(fh) for _ in range(1001)))

    floor, floor_peak, _ = run_worker(lake_dir, "small.csv", limit_mb=1024)
    assert floor["success"], floor
    limit = floor_peak + 3 * BUDGET_MB
    big, peak, sampled = run_worker(lake_dir, "big.csv", limit_mb=limit)
    assert big["success"], big.get("error")
    assert big["outcome"] == "ingested"
    assert big["rows_in"] == ROWS + DUPLICATES
    assert sum(big["rejected_rows"].values()) == REJECTS
    assert big["duplicate_rows_dropped"] == DUPLICATES
    rows_out = big["dagster/row_count"]
    assert rows_out == big["rows_in"] - REJECTS - DUPLICATES == ROWS - REJECTS
    assert len(big["dates"]) == 76
    # Bounded, not proportional: the big file adds at most 3x the budget, under half its size.
    assert peak < limit and peak - floor_peak < size_mb / 2
    store = LocalStore(lake_dir)
    version = paths.partition_key("big.csv", store.etag(PREFIX + "big.csv"))
    bronze = [o.key for o in store.list(paths.BRONZE + "readings/") if "/file=big-" in o.key]
    assert len(bronze) == big["bronze_parts"] == 76 and not list(store.list(paths.QUARANTINE))
    ledger = json.loads(store.read_bytes(paths.ledger_object("readings", paths.file_id(version))))
    assert (ledger["outcome"], ledger["rows"], len(ledger["dates"])) == ("ingested", rows_out, 76)
    assert sorted(ledger["parts"]) == sorted(bronze)
    print(
        f"\nFAULTS 9-big-file: file_mb={size_mb:.0f} budget_mb={BUDGET_MB} "
        f"ratio={size_mb / BUDGET_MB:.1f} generate_s={generate_s:.1f} rows_in={big['rows_in']} "
        f"rows_out={rows_out} rejects={REJECTS} duplicates={DUPLICATES} "
        f"peak_rss_mb={peak:.0f} floor_rss_mb={floor_peak:.0f} added_mb={peak - floor_peak:.0f} "
        f"watchdog_limit_mb={limit:.0f} sampled_mb={sampled:.0f} ingest_s={big['seconds']}"
    )


def test_out_of_budget_is_not_a_rejected_file(tmp_path: Path):
    """A budget DuckDB cannot work in is the worker's fault, not the file's: no quarantine
    (RejectedFileError), an error that names the setting; the asset lets it fail and retry."""
    path = tmp_path / "ok.csv"
    path.write_bytes(small_file(1))
    with pytest.raises(OutOfBudgetError, match="ML_PLATFORM_INGEST_MEMORY") as info:
        ingest_file(path, load_contract(), tmp_path / "out", memory_limit="4MB")
    assert not isinstance(info.value, RejectedFileError)
    report = ingest_file(path, load_contract(), tmp_path / "out2", memory_limit="16MB")
    assert report.rows_out == 3


def error_chain(error):
    """A serialized error and every error it was raised from or during."""
    while error is not None:
        yield error
        yield from error_chain(error.context)
        error = error.cause


@pytest.mark.timeout(120)
def test_out_of_budget_in_a_batch_is_a_retried_step_failure(
    store: LocalStore, instance, monkeypatch
):
    """In a batch run, the budget running out on one file fails the step, which the asset's
    retry policy runs again (after 10 s); the file is not quarantined. The other file of the
    batch, finished before the failure, is in the ledger, so the retry skips it: both are
    ingested once. The first ingest of the run really runs DuckDB in a 4 MB budget."""
    bodies = {f"oob/{i}.csv": small_file(i) for i in (1, 2)}
    versions = {}
    for name, body in bodies.items():
        key = paths.landing_object("readings", name)
        store.put_bytes(body, key)
        versions[name] = paths.partition_key(name, store.etag(key))
    real, short, lock = ingest_assets.ingest_file, [], threading.Lock()

    def short_of_memory_once(path, contract, out_dir, **kwargs):
        with lock:
            first = not short
            if first:
                short.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        return real(
            path, contract, out_dir, **{**kwargs, **({"memory_limit": "4MB"} if first else {})}
        )

    monkeypatch.setattr(ingest_assets, "ingest_file", short_of_memory_once)
    started = time.perf_counter()
    result = ingest_versions(instance, "readings", list(versions.values()))
    seconds = time.perf_counter() - started
    [failed] = [n for n, body in bodies.items() if hashlib.sha256(body).hexdigest() == short[0]]
    [finished] = [n for n in bodies if n != failed]

    assert result.success
    events = [e.event_type_value for e in result.all_events if e.step_key == "raw_readings"]
    assert events.count("STEP_UP_FOR_RETRY") == 1 and events.count("STEP_RESTARTED") == 1
    assert "STEP_FAILURE" not in events
    [retry] = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retry.event_specific_data.seconds_to_wait == 10
    chain = list(error_chain(retry.event_specific_data.error))
    [budget] = [e for e in chain if e.cls_name == "OutOfBudgetError"]  # not RejectedFileError
    assert "ML_PLATFORM_INGEST_MEMORY" in budget.message
    assert not [e for e in chain if e.cls_name in ("RejectedFileError", "Failure")]
    assert outcomes(result) == {
        versions[failed]: "ingested",
        versions[finished]: "already_ingested",
    }
    assert contract_check(result).passed
    assert not list(store.list(paths.QUARANTINE))
    for name, version in versions.items():
        ledger = json.loads(
            store.read_bytes(paths.ledger_object("readings", paths.file_id(version)))
        )
        assert (ledger["outcome"], ledger["rows"], ledger["run_id"]) == (
            "ingested",
            3,
            result.run_id,
        )
        assert ledger["parts"] == [
            paths.bronze_part("readings", "2024-03-01", paths.file_id(version))
        ]
        assert store.exists(ledger["parts"][0]), name
    print(
        f"\nFAULTS 9-out-of-budget: retries=1 retry_wait_s=10 run_s={seconds:.1f} "
        f"quarantined=0 outcomes={outcomes(result)}"
    )
