"""Fault injection, issue 8 scenarios 8 and 9: a burst of uploads, racing ticks, a big file.

The landing side reuses the invariants harness of ``test_faults_uploads.py`` (:class:`Lake`: the
real S3 API of a moto server, the real landing sensor, ``raw_readings`` run on a real Dagster
instance). Run requests are submitted through Dagster's own run-key dedupe,
``dagster._daemon.sensor.fetch_existing_runs`` (what the sensor daemon calls before creating a
tick's runs): a request whose run key already has a run of this sensor is skipped.

==========================================================  =========================================
Scenario (issue 8)                                          Test
==========================================================  =========================================
8  500 files landed at once (default cap: 100 per tick)     ``test_500_files_landed_at_once``
8  two evaluations of one tick racing from one cursor       ``test_two_ticks_racing_from_one_cursor``
8  a manual launch before / during a tick                   ``test_manual_launch_before_and_during_a_tick``
9  a CSV 5x larger than the run worker's memory budget,     ``test_file_5x_the_memory_budget``
   under an enforced RSS limit
9  a budget too small for any file: not the file's fault    ``test_out_of_budget_is_not_a_rejected_file``
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

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest
from dagster._daemon.sensor import fetch_existing_runs

from ml_platform.lib import paths
from ml_platform.lib.contract import load_contract
from ml_platform.lib.ingest import OutOfBudgetError, RejectedFileError, ingest_file
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import LocalStore
from ml_platform_tests.test_faults_uploads import HEADER, PREFIX, Lake, csv
from ml_platform_tests.test_sensor_s3 import tick

ROOT = Path(__file__).resolve().parents[1]
RUN_KEY, SENSOR_NAME = "dagster/run_key", "dagster/sensor_name"


@pytest.fixture
def lake(s3_server, s3_env, instance) -> Lake:
    return Lake(s3_server, s3_env, instance)


def small_file(i: int) -> bytes:
    """A valid one-day file, different per ``i``; every tenth a header only (quarantined)."""
    if i % 10 == 9:
        return (HEADER + "\n").encode()
    return csv([f"2024-03-01T{h:02d}:00:00Z,s{i},{20 + i % 50}.5,1.5,5,20" for h in range(3)])


def launch(lake: Lake, requests: list[dg.RunRequest]) -> list[str]:
    """The daemon's submission of one tick: Dagster's run-key dedupe, then a run per new key."""
    existing = fetch_existing_runs(lake.instance, SimpleNamespace(name=lake.sensor.name), requests)
    launched = []
    for request in requests:
        lake.requested.append(request.run_key)
        if request.run_key in existing:
            lake.deduped += 1
            continue
        tags = {**request.tags, RUN_KEY: request.run_key, SENSOR_NAME: lake.sensor.name}
        lake.results[request.partition_key] = lake.materialize(request.partition_key, tags)
        launched.append(request.partition_key)
    return launched


def assert_one_outcome(lake: Lake, partition: str, runs: int = 1) -> None:
    """Bronze parts or a quarantine record, never both or neither; ``runs`` runs."""
    parts, record = lake.parts(partition), lake.record(partition)
    assert bool(parts) != bool(record), f"{partition}: parts={parts} record={record}"
    assert lake.results[partition].success == bool(parts)
    assert lake.runs(partition) == runs, partition


def assert_cursor_past_everything(lake: Lake) -> None:
    left, _ = select_new(lake.store.list(PREFIX), LandingCursor.from_json(lake.cursor), 10**6)
    assert left == []
    requests, _, result = tick(lake.sensor, lake.instance, lake.cursor, lake.resources)
    assert requests == [] and isinstance(result, dg.SkipReason)


@pytest.mark.timeout(120)
def test_500_files_landed_at_once(lake: Lake):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: lake.put(f"burst/{i:03d}.csv", small_file(i)), range(500)))
    assert len(lake.versions) == 500

    # Successive ticks with the default cap: 100 requests each, every version once.
    per_tick, tick_seconds = [], []
    while True:
        started = time.perf_counter()
        requests, lake.cursor, result = tick(
            lake.sensor, lake.instance, lake.cursor, lake.resources
        )
        tick_seconds.append(time.perf_counter() - started)
        if not requests:
            assert isinstance(result, dg.SkipReason)
            break
        per_tick.append(requests)
    assert [len(r) for r in per_tick] == [100] * 5
    keys = [r.run_key for tick_requests in per_tick for r in tick_requests]
    assert len(keys) == len(set(keys)) == 500
    assert set(keys) == set(lake.versions)  # run key == partition key == one object version
    assert sorted(lake.instance.get_dynamic_partitions("reading_files")) == sorted(keys)
    assert_cursor_past_everything(lake)

    # Run a random sample through the daemon's dedupe path, then the whole batch again: the
    # sample's keys are deduped, nothing runs twice.
    sample = random.Random(8).sample(keys, 30)
    by_key = {r.run_key: r for tick_requests in per_tick for r in tick_requests}
    started = time.perf_counter()
    assert sorted(launch(lake, [by_key[k] for k in sample])) == sorted(sample)
    run_seconds = (time.perf_counter() - started) / len(sample)
    resubmit = fetch_existing_runs(
        lake.instance, SimpleNamespace(name=lake.sensor.name), list(by_key.values())
    )
    assert set(resubmit) == set(sample)
    for partition in sample:
        assert_one_outcome(lake, partition)
    quarantined = [p for p in sample if lake.record(p)]
    assert {lake.record(p)["reason"] for p in quarantined} == {"no_rows"}
    assert {p for p in sample if lake.versions[p].endswith("9.csv")} == set(quarantined)
    # The rest: requested exactly once, no run yet (the queue would run them).
    assert set(Counter(keys).values()) == {1}
    runs = lake.instance.get_runs()
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(sample)
    print(
        f"\nFAULTS 8-burst: objects=500 ticks={len(per_tick)} per_tick={[len(r) for r in per_tick]} "
        f"distinct_run_keys={len(set(keys))} duplicates=0 "
        f"tick_s_max={max(tick_seconds):.2f} sampled_runs={len(sample)} "
        f"quarantined_in_sample={len(quarantined)} s_per_run={run_seconds:.2f} "
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
    keys = [{r.run_key for r in result.run_requests} for result in (first, second)]
    assert keys[0] == keys[1] == set(lake.versions)
    assert first.cursor == second.cursor
    for result in (first, second):  # the daemon applies each tick's partition requests
        for request in result.dynamic_partitions_requests:
            lake.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
    lake.cursor = second.cursor

    launched_first = launch(lake, list(first.run_requests))
    launched_second = launch(lake, list(second.run_requests))
    assert sorted(launched_first) == sorted(lake.versions) and launched_second == []
    for partition in lake.versions:
        assert_one_outcome(lake, partition)
        runs = lake.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY: partition}))
        assert len(runs) == 1
    assert sorted(lake.instance.get_dynamic_partitions("reading_files")) == sorted(lake.versions)
    assert_cursor_past_everything(lake)
    print(
        f"\nFAULTS 8-race: versions={len(lake.versions)} requests={len(lake.requested)} "
        f"deduped={lake.deduped} runs_per_version=1 "
        f"cursor_hwm={LandingCursor.from_json(lake.cursor).hwm}"
    )


def test_manual_launch_before_and_during_a_tick(lake: Lake):
    a, b, c = (lake.put(f"manual/{n}.csv", small_file(i)) for i, n in enumerate("abc"))

    # Before the tick: someone registers and materializes a by hand (no run key).
    lake.instance.add_dynamic_partitions("reading_files", [a])
    lake.results[a] = lake.materialize(a, {})
    assert lake.results[a].success
    requests, lake.cursor, _ = tick(lake.sensor, lake.instance, lake.cursor, lake.resources)
    assert sorted(r.partition_key for r in requests) == sorted([b, c])  # _not_built skips a

    # During the tick: the tick already requested b and c; b is materialized by hand before the
    # daemon launches them. A hand-launched run carries no run key, so the dedupe cannot see it:
    # b runs twice, and the overwrite gives byte-identical parts (one effective run).
    lake.instance.add_dynamic_partitions("reading_files", [b])
    manual_b = lake.materialize(b, {})
    assert manual_b.success
    parts_b = lake.parts(b)
    assert sorted(launch(lake, requests)) == sorted([b, c])
    assert lake.parts(b) == parts_b  # same days, same sha256
    for partition, runs in ((a, 1), (b, 2), (c, 1)):
        assert_one_outcome(lake, partition, runs)
    assert_cursor_past_everything(lake)
    print(
        "\nFAULTS 8-manual: before_tick=skipped_by_not_built during_tick=2_runs_identical_parts "
        f"parts_b={parts_b}"
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
from ml_platform_tests.helpers import ingest_landed
store = open_store(os.environ["ML_PLATFORM_STORE_URL"])
etag = store.etag(paths.landing_object("readings", sys.argv[1]))
with dg.instance_for_test() as instance:
    partition, result = ingest_landed(instance, sys.argv[1], etag)
    out = {"success": result.success, "seconds": round(time.perf_counter() - started, 1)}
    if result.success:
        [m] = result.asset_materializations_for_node("raw_readings")
        out.update({k: v.value for k, v in m.metadata.items() if k in (
            "rows_in", "rows_out", "duplicate_rows_dropped", "rejected_rows_total", "dates")})
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
    assert big["rows_in"] == ROWS + DUPLICATES
    assert big["rejected_rows_total"] == REJECTS
    assert big["duplicate_rows_dropped"] == DUPLICATES
    assert big["rows_out"] == big["rows_in"] - REJECTS - DUPLICATES == ROWS - REJECTS
    assert len(big["dates"]) == 76
    # Bounded, not proportional: the big file adds at most 3x the budget, under half its size.
    assert peak < limit and peak - floor_peak < size_mb / 2
    store = LocalStore(lake_dir)
    bronze = [o.key for o in store.list(paths.BRONZE + "readings/") if "/file=big-" in o.key]
    assert len(bronze) == 76 and not list(store.list(paths.QUARANTINE))
    print(
        f"\nFAULTS 9-big-file: file_mb={size_mb:.0f} budget_mb={BUDGET_MB} "
        f"ratio={size_mb / BUDGET_MB:.1f} generate_s={generate_s:.1f} rows_in={big['rows_in']} "
        f"rows_out={big['rows_out']} rejects={REJECTS} duplicates={DUPLICATES} "
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
