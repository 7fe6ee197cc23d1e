"""One measured ingest in a fresh process: prints JSON with seconds, rows and peak RSS.

Run by ``benchmarks.run`` as ``python -m benchmarks.worker MODE FILE OUT``; each mode is a
separate process so that peak RSS belongs to that engine alone.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def duckdb_copy(path: Path, out: Path) -> int:
    """The reference: a bare DuckDB copy of the CSV into day-partitioned Parquet."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    rows = con.execute(
        f"COPY (SELECT *, strftime(timestamp, '%Y-%m-%d') AS date FROM read_csv('{path}')) "
        f"TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date))"
    ).fetchone()[0]
    return int(rows)


def _ingest(path: Path, out: Path, instance) -> tuple[dict, Any]:
    """Land ``path`` in a local store at ``out`` (a hard link, no copy) and run ``raw_readings``
    on it. Returns the resources and the materialization."""
    import dagster as dg

    from ml_platform.defs.ingest.assets import raw_readings
    from ml_platform.defs.resources import build_resources
    from ml_platform.lib import paths
    from ml_platform.lib.store import LocalStore

    store = LocalStore(out)
    key = paths.landing_object("readings", path.name)
    (out / key).parent.mkdir(parents=True, exist_ok=True)
    os.link(path.resolve(), out / key)
    os.environ["ML_PLATFORM_STORE_URL"] = out.as_uri()
    # The landing day of the object: a run of that partition ingests what landed that day.
    [landed] = store.list("landing/readings/")
    partition, resources = paths.landing_day(landed.last_modified), build_resources()
    result = dg.materialize(
        [raw_readings], instance=instance, partition_key=partition, resources=resources
    )
    [materialization] = result.asset_materializations_for_node("raw_readings")
    return resources, materialization


def asset(path: Path, out: Path) -> tuple[int, float]:
    """The platform's ingest: the ``raw_readings`` asset itself, with a local object store."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        _, mat = _ingest(path, out, instance)
    # The asset's own wall time (read, hash, cast, validate, count, write, publish), without the
    # Dagster process start-up that every run pays whatever it does.
    return int(mat.metadata["dagster/row_count"].value), float(mat.metadata["seconds"].value)


def pandas_naive(path: Path, out: Path) -> int:
    """What a first pandas version does: read all, parse, de-duplicate, write one file per day."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"sensor_id": "string"})
    rows = len(df)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    df = df.dropna(subset=["timestamp", "sensor_id"]).drop_duplicates()
    for day, part in df.groupby(df["timestamp"].dt.strftime("%Y-%m-%d")):
        target = out / f"date={day}"
        target.mkdir(parents=True, exist_ok=True)
        part.to_parquet(target / "part.parquet", index=False)
    return rows


def lakehouse(path: Path, out: Path) -> dict:
    """raw_readings -> sensor_chunks -> daily_aggregates through the asset code, 30 days in one run."""
    import dagster as dg

    from ml_platform.defs.lakehouse.assets import daily_aggregates, sensor_chunks

    with dg.instance_for_test() as instance:
        resources, mat = _ingest(path, out, instance)
        days = mat.metadata["dates"].value
        started = time.perf_counter()
        result = dg.materialize(
            [sensor_chunks, daily_aggregates], instance=instance, resources=resources,
            tags={"dagster/asset_partition_range_start": days[0],
                  "dagster/asset_partition_range_end": days[-1]},
        )  # fmt: skip
        wall = time.perf_counter() - started
        runs = len(instance.get_runs())
    compute = {
        node: result.asset_materializations_for_node(node)[0].metadata["seconds"].value
        for node in ("sensor_chunks", "daily_aggregates")
    }
    return {
        "rows": int(mat.metadata["dagster/row_count"].value),
        "seconds": float(mat.metadata["seconds"].value) + sum(compute.values()),
        "backfill_wall_s": wall,
        "backfill_compute_s": sum(compute.values()),
        "backfill_runs": runs - 1,
        "days": len(days),
    }


def duckdb_pipeline(path: Path, out: Path) -> int:
    """The hand-written reference: the same work in three DuckDB statements."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute("SET memory_limit='1GB'")
    con.execute(f"SET temp_directory='{out}/spill'")
    con.execute(
        f"CREATE TABLE r AS SELECT DISTINCT * FROM read_csv('{path}', types={{'sensor_id': 'VARCHAR'}})"
    )
    con.execute(
        "CREATE TABLE d AS SELECT * FROM r QUALIFY row_number() OVER "
        "(PARTITION BY sensor_id, timestamp ORDER BY temperature) = 1"
    )
    con.execute(
        f"COPY (SELECT *, strftime(timestamp, '%Y-%m-%d') AS date FROM d ORDER BY sensor_id, timestamp) "
        f"TO '{out}/chunks' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date, sensor_id))"
    )
    stats = []
    for m in ("temperature", "vibration", "pressure", "current"):
        stats += [f"count({m})", f"1 - count({m}) / count(*)", f"avg({m})", f"stddev_samp({m})",
                  f"min({m})", f"max({m})", f"quantile_cont({m}, [0.05, 0.5, 0.95])",
                  f"arg_max({m}, timestamp)", f"regr_slope({m}, epoch(timestamp) / 3600)"]  # fmt: skip
    con.execute(
        f"COPY (SELECT strftime(timestamp, '%Y-%m-%d') AS date, sensor_id, count(*), {', '.join(stats)} "
        f"FROM d GROUP BY ALL) TO '{out}/aggregates' (FORMAT parquet, PARTITION_BY (date))"
    )
    return con.execute(f"SELECT count(*) FROM read_csv('{path}')").fetchone()[0]


def pandas_pipeline(path: Path, out: Path) -> int:
    """A naive pandas version: group loop writing one file per day and sensor."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(path, dtype={"sensor_id": "string"})
    rows = len(df)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    df = df.drop_duplicates().drop_duplicates(subset=["sensor_id", "timestamp"])
    df["date"] = df["timestamp"].dt.strftime("%Y-%m-%d")
    aggregates = []
    for (day, sensor), group in df.groupby(["date", "sensor_id"]):
        group = group.sort_values("timestamp")
        target = out / f"date={day}"
        target.mkdir(parents=True, exist_ok=True)
        group.to_parquet(target / f"sensor_id={sensor}.parquet", index=False)
        hours = group["timestamp"].astype("int64") / 3.6e12
        row = {"date": day, "sensor_id": sensor, "rows": len(group)}
        for m in ("temperature", "vibration", "pressure", "current"):
            v = group[m]
            ok = v.notna()
            row |= {f"{m}_count": v.count(), f"{m}_mean": v.mean(), f"{m}_std": v.std(),
                    f"{m}_min": v.min(), f"{m}_max": v.max(), f"{m}_p05": v.quantile(0.05),
                    f"{m}_p50": v.median(), f"{m}_p95": v.quantile(0.95),
                    f"{m}_last": v[ok].iloc[-1] if ok.any() else np.nan,
                    f"{m}_slope": np.polyfit(hours[ok], v[ok], 1)[0] if ok.sum() > 1 else np.nan}  # fmt: skip
        aggregates.append(row)
    pd.DataFrame(aggregates).to_parquet(out / "aggregates.parquet")
    return rows


MODES = {
    "duckdb_copy": duckdb_copy,
    "asset": asset,
    "pandas_naive": pandas_naive,
    "lakehouse": lakehouse,
    "duckdb_pipeline": duckdb_pipeline,
    "pandas_pipeline": pandas_pipeline,
}

if __name__ == "__main__":
    mode, file, out = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = MODES[mode](file, out)
    record = {"mode": mode, "seconds": time.perf_counter() - started}
    if isinstance(result, dict):
        record |= result
    elif isinstance(result, tuple):
        record["rows"], record["seconds"] = result
    else:
        record["rows"] = result
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(record))
