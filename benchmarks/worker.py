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


def asset(path: Path, out: Path) -> tuple[int, float]:
    """The platform's ingest: the ``raw_readings`` asset itself, with a local object store."""
    import dagster as dg

    from ml_platform.defs.ingest.assets import raw_readings
    from ml_platform.defs.resources import build_resources
    from ml_platform.lib import paths
    from ml_platform.lib.store import LocalStore

    store = LocalStore(out)
    key = paths.landing_object("readings", path.name)
    target = out / key
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(path.resolve(), target)  # land it without copying gigabytes (same filesystem)
    partition = paths.partition_key(path.name, store.etag(key))
    os.environ["ML_PLATFORM_STORE_URL"] = out.as_uri()
    resources = build_resources()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("reading_files", [partition])
        result = dg.materialize(
            [raw_readings], instance=instance, partition_key=partition, resources=resources
        )
        [mat] = result.asset_materializations_for_node("raw_readings")
    # The asset's own wall time (read, hash, cast, validate, count, write, publish), without the
    # Dagster process start-up that every run pays whatever it does.
    return int(mat.metadata["rows_in"].value), float(mat.metadata["seconds"].value)


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


MODES = {"duckdb_copy": duckdb_copy, "asset": asset, "pandas_naive": pandas_naive}

if __name__ == "__main__":
    mode, file, out = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = MODES[mode](file, out)
    seconds = time.perf_counter() - started
    rows, seconds = result if isinstance(result, tuple) else (result, seconds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb}))
