"""Worker of ``make bench BENCH=backfill``: a year of history through the lakehouse.

``python -m benchmarks.backfill setup SENSORS INTERVAL_S OUT`` generates 365 days of readings,
lands them as one file in a local store under OUT and ingests them (not timed).
``python -m benchmarks.backfill duckdb OUT`` is the hand-written DuckDB reference: the same work
and the same checks on the same bronze parts. The timed lakehouse itself is a plain
``dagster asset materialize --partition-range`` started by ``bench_backfill`` (benchmarks/run.py
calls it), so its wall time includes everything a user's CLI call pays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from benchmarks.sizes import size

ROOT = Path(__file__).resolve().parents[1]
DAYS = size(365, 3)
START = "2024-01-01"
END = (date.fromisoformat(START) + timedelta(days=DAYS - 1)).isoformat()  # 2024-12-30 for 365
MEASUREMENTS = ["temperature", "vibration", "pressure", "current"]
BLOCKING = (
    "sensor_chunks_pass_quality_suite",
    "daily_aggregates_pass_quality_suite",
    "floor_check",
)


def setup(sensors: int, interval_s: int, out: Path) -> dict:
    """Generate (cached in benchmarks/data/), land and ingest the year; returns rows and the
    store URL."""
    import dagster as dg

    from benchmarks.run import readings_csv

    year = readings_csv(days=DAYS, sensors=sensors, interval_s=interval_s)
    store_url = (out / "lake").as_uri()
    os.environ["ML_PLATFORM_STORE_URL"] = store_url
    from ml_platform.defs.ingest.assets import raw_readings
    from ml_platform.defs.resources import build_resources
    from ml_platform.lib import paths
    from ml_platform.lib.store import LocalStore

    store = LocalStore(out / "lake")
    store.put_file(year, paths.landing_object("readings", year.name))
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [raw_readings],
            instance=instance,
            partition_key=paths.landing_day(
                next(iter(store.list("landing/readings/"))).last_modified
            ),
            resources=build_resources(),
        )
    [event] = result.asset_materializations_for_node("raw_readings")
    return {"rows": int(event.metadata["dagster/row_count"].value), "store_url": store_url}


def postgres_storage(*, pooled: bool = True) -> str:
    """The storage sections of the deployed profile's instance (docker/dagster.yaml), values from
    the environment. ``pooled=False``: dagster-postgres' own classes on the same database, which
    connect for every statement (the reference)."""
    import yaml

    instance = yaml.safe_load((ROOT / "docker" / "dagster.yaml").read_text())
    sections = {k: instance[k] for k in ("run_storage", "event_log_storage", "schedule_storage")}
    if not pooled:
        sections = {
            key: {**section, "module": "dagster_postgres",
                  "class": section["class"].removeprefix("Pooled")}
            for key, section in sections.items()
        }  # fmt: skip
    return yaml.safe_dump(sections, sort_keys=False)


def materialize(
    store_url: str,
    home: Path,
    first: str,
    last: str,
    *,
    storage: str = "",
    env: dict | None = None,
    module: str = "ml_platform.definitions",
    select: str = "sensor_chunks,daily_aggregates",
) -> dict:
    """``dagster asset materialize`` of both lakehouse assets (and so their checks) over
    ``first...last`` from a fresh process; wall time measured around it. ``storage``: the
    instance's storage section (default: Dagster's SQLite storage under ``home``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(storage + "telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        **(env or {}),
        "DAGSTER_HOME": str(home),
        "ML_PLATFORM_STORE_URL": store_url,
    }
    cmd = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m",
           module, "--select", select, "--partition-range", f"{first}...{last}"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"materialize failed:\n{done.stderr[-3000:]}")
    summary = {"wall_s": wall, **_run_summary(home, env)}
    print(f"[bench]   materialize {first}...{last}: {json.dumps(summary)}", flush=True)
    return summary


def _run_summary(home: Path, env: dict) -> dict:
    """Step seconds, evaluations per check and whether every blocking one passed."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_PG_")})
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        [run] = instance.get_runs(limit=1)
        steps: dict[str, float] = {}
        evaluations: dict[str, list[bool]] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type_value == "STEP_SUCCESS":
                steps[event.step_key] = event.event_specific_data.duration_ms / 1000
            if event.event_type_value == "ASSET_CHECK_EVALUATION":
                data = event.event_specific_data
                evaluations.setdefault(data.check_name, []).append(bool(data.passed))
    blocking = [c for c in BLOCKING if c in evaluations]
    return {
        "status": run.status.value,
        "steps": steps,
        "evaluations": {k: len(v) for k, v in evaluations.items()},
        "blocking_passed": bool(blocking) and all(all(evaluations[c]) for c in blocking),
    }


def duckdb_reference(out: Path) -> dict:
    """The same work as the two assets and their checks, hand-written in DuckDB: chunks per
    (day, sensor) with newest-part-wins de-duplication, the daily statistics with exact
    quantiles and trailing-week features, one gold file per day, then the checks' rules."""
    import duckdb

    lake, work = out / "lake", out / "duckdb"
    (work / "spill").mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    # A COPY partitioned 18,250 ways keeps a writer open per partition: 1 GB (the assets' budget)
    # runs out, so the reference gets 2 GB and no insertion order (an advantage, not a handicap).
    con.execute("SET TimeZone='UTC'; SET memory_limit='2GB'; SET preserve_insertion_order=false")
    con.execute(f"SET temp_directory='{work}/spill'")
    bronze = f"{lake}/lake/bronze/readings/date=*/*.parquet"
    con.execute(
        f"CREATE TABLE parts AS SELECT *, regexp_extract(filename, 'date=([0-9-]+)', 1) AS day "
        f"FROM read_parquet('{bronze}', filename=true)"
    )
    con.execute(
        "CREATE TABLE chunks AS SELECT * EXCLUDE (filename) FROM parts QUALIFY row_number() "
        "OVER (PARTITION BY day, sensor_id, timestamp ORDER BY filename DESC) = 1"
    )
    con.execute(
        f"COPY (SELECT * FROM chunks ORDER BY day, sensor_id, timestamp) TO '{work}/silver' "
        "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day, sensor_id), OVERWRITE_OR_IGNORE)"
    )
    stats = ", ".join(
        f"count({m}) AS {m}_count, 1 - count({m}) / count(*) AS {m}_missing_ratio, "
        f"avg({m}) AS {m}_mean, stddev_samp({m}) AS {m}_std, min({m}) AS {m}_min, "
        f"max({m}) AS {m}_max, quantile_cont({m}, [0.05, 0.5, 0.95]) AS {m}_q, "
        f"arg_max({m}, timestamp) FILTER (WHERE {m} IS NOT NULL) AS {m}_last, "
        f"regr_slope({m}, epoch(timestamp) / 3600.0) AS {m}_slope_per_h"
        for m in MEASUREMENTS
    )
    con.execute(f"CREATE TABLE daily AS SELECT day, sensor_id, count(*) AS rows, {stats} "
                "FROM chunks GROUP BY day, sensor_id")  # fmt: skip
    trailing = ", ".join(
        f"avg({m}_mean) OVER w AS {m}_mean_7d, {m}_mean - avg({m}_mean) OVER w AS {m}_change_vs_7d"
        for m in MEASUREMENTS
    )
    con.execute(
        f"CREATE TABLE gold AS SELECT *, {trailing}, count(*) OVER w AS days_with_data_7d "
        "FROM daily WINDOW w AS (PARTITION BY sensor_id ORDER BY day::DATE "
        "RANGE BETWEEN INTERVAL 7 DAYS PRECEDING AND INTERVAL 1 DAYS PRECEDING)"
    )
    con.execute(
        f"COPY (SELECT * FROM gold ORDER BY day, sensor_id) TO '{work}/gold' "
        "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day), OVERWRITE_OR_IGNORE)"
    )
    failing = _duckdb_checks(con, work)
    return {
        "failing_days": failing,
        "rows": con.execute("SELECT count(*) FROM chunks").fetchone()[0],
    }


def _duckdb_checks(con, work: Path) -> int:
    """The checks' rules over the written files, per day: null keys, unique keys, rows inside
    their day, rows = distinct keys of the parts, plausible ranges, one gold row per sensor."""
    con.execute(
        f"CREATE TABLE silver AS SELECT * FROM read_parquet('{work}/silver/*/*/*.parquet', "
        "hive_partitioning=true)"
    )
    ranges = " OR ".join(f"{m} < -1e9 OR {m} > 1e9" for m in MEASUREMENTS)
    per_day = con.execute(
        f"""
        WITH s AS (
            SELECT day, count(*) AS rows, count(*) - count(DISTINCT (sensor_id, timestamp)) AS dup,
                   count(*) FILTER (WHERE timestamp IS NULL OR sensor_id IS NULL) AS nulls,
                   count(*) FILTER (WHERE strftime(timestamp, '%Y-%m-%d') <> day) AS off_day,
                   count(*) FILTER (WHERE {ranges}) AS out_of_range
            FROM silver GROUP BY day),
        p AS (SELECT day, count(DISTINCT (sensor_id, timestamp)) AS expected FROM parts GROUP BY day),
        g AS (SELECT g.day, count(*) AS gold_rows, count(DISTINCT g.sensor_id) AS sensors,
                     count(*) FILTER (WHERE g.rows <> c.n) AS mismatched
              FROM read_parquet('{work}/gold/*/*.parquet', hive_partitioning=true) g
              JOIN (SELECT day, sensor_id, count(*) AS n FROM silver GROUP BY ALL) c
              USING (day, sensor_id) GROUP BY g.day)
        SELECT count(*) FILTER (WHERE s.dup > 0 OR s.nulls > 0 OR s.off_day > 0
                                OR s.rows <> p.expected OR g.gold_rows <> g.sensors
                                OR g.mismatched > 0)
        FROM s JOIN p USING (day) JOIN g USING (day)
        """
    ).fetchone()
    return int(per_day[0])


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "setup":
        result = setup(int(argv[1]), int(argv[2]), Path(argv[3]))
    elif mode == "duckdb":
        result = duckdb_reference(Path(argv[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
