"""Silver chunks and gold aggregates of one UTC day, computed with DuckDB.

Both functions work on local Parquet files and hold at most one day in memory; the caller lists
and fetches the inputs from the object store and publishes the outputs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from ml_platform.lib.sql import file_list, ident, literal

PREVIEW_ROWS = 5
#: A gap is an interval between two readings of a sensor longer than this many median intervals.
GAP_FACTOR = 5

STATISTICS = ("count", "missing_ratio", "mean", "std", "min", "max", "p05", "p50", "p95", "last",
              "slope_per_h")  # fmt: skip


def _connect(memory_limit: str, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit={literal(memory_limit)}")
    # Spill beyond the budget to the system temp folder, never to ./.tmp of the working directory.
    con.execute(
        f"SET temp_directory={literal(str(Path(tempfile.gettempdir(), 'ml-platform-duckdb')))}"
    )
    con.execute("SET TimeZone='UTC'")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    return con


@dataclass
class ChunkReport:
    day: str
    rows_in: int = 0
    rows_out: int = 0
    rows_written: int = 0  # read back from the written files' footers
    duplicates_removed: int = 0
    rows_per_sensor: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # "sensor_id=S" -> local file
    preview: list[dict[str, Any]] = field(default_factory=list)


def build_chunks(
    parts: list[Path],
    day: str,
    out_dir: Path,
    *,
    memory_limit: str = "1GB",
    threads: int | None = None,
) -> ChunkReport:
    """Merge one day's bronze parts into one sorted, de-duplicated file per sensor.

    ``parts`` are ordered oldest ingestion first: for a repeated ``(sensor_id, timestamp)`` the
    row of the most recently ingested part wins, so a corrected late file replaces earlier values.
    """
    report = ChunkReport(day=day)
    if not parts:
        return report
    con = _connect(memory_limit, threads)
    try:
        con.execute("CREATE TABLE ranks (filename VARCHAR, _rank INTEGER)")
        con.executemany(
            "INSERT INTO ranks VALUES (?, ?)", [(str(p), i) for i, p in enumerate(parts)]
        )
        columns = [
            r[0]
            for r in con.execute(
                f"DESCRIBE SELECT * FROM read_parquet({file_list(parts)}, union_by_name=true, hive_partitioning=false)"
            ).fetchall()
        ]
        values = [c for c in columns if c not in ("timestamp", "sensor_id")]
        # Ties inside one part (same key, different values) resolve by the values themselves,
        # so the result never depends on scan order and re-runs write identical objects.
        tie_break = "".join(f", {ident(c)} DESC NULLS LAST" for c in values)
        con.execute(
            "CREATE TABLE merged AS SELECT * EXCLUDE (filename, _rank) FROM ("
            f"SELECT b.*, r._rank FROM read_parquet({file_list(parts)}, union_by_name=true, hive_partitioning=false, "
            "filename=true) b JOIN ranks r USING (filename)) "
            f"QUALIFY row_number() OVER (PARTITION BY sensor_id, timestamp "
            f"ORDER BY _rank DESC{tie_break}) = 1"
        )
        report.rows_in = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        report.rows_per_sensor = dict(
            con.execute("SELECT sensor_id, count(*) FROM merged GROUP BY 1 ORDER BY 1").fetchall()
        )
        report.rows_out = sum(report.rows_per_sensor.values())
        report.duplicates_removed = report.rows_in - report.rows_out
        report.gaps = _gaps(con)
        ordered = ", ".join(ident(c) for c in ["timestamp", "sensor_id", *values])
        con.execute(
            f"COPY (SELECT {ordered} FROM merged ORDER BY sensor_id, timestamp) "
            f"TO {literal(str(out_dir))} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (sensor_id), "
            "WRITE_PARTITION_COLUMNS true, OVERWRITE_OR_IGNORE)"
        )
        report.preview = (
            con.execute(
                f"SELECT {ordered} FROM merged ORDER BY sensor_id, timestamp LIMIT {PREVIEW_ROWS}"
            )
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()
    for folder in sorted(out_dir.glob("sensor_id=*")):
        [data] = sorted(folder.glob("*.parquet"))  # one file per partition: no size rotation
        report.files[folder.name] = data
    report.rows_written = sum(pq.ParquetFile(f).metadata.num_rows for f in report.files.values())
    return report


def _gaps(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, float]]:
    """Per sensor: median sampling interval, longest gap, and gaps longer than GAP_FACTOR x median."""
    rows = con.execute(
        f"""
        WITH steps AS (
            SELECT sensor_id,
                   epoch(timestamp) - epoch(lag(timestamp) OVER (
                       PARTITION BY sensor_id ORDER BY timestamp)) AS step
            FROM merged
        ), typical AS (
            SELECT sensor_id, median(step) AS median_s FROM steps GROUP BY 1
        )
        SELECT s.sensor_id, t.median_s, max(s.step),
               count(*) FILTER (WHERE s.step > {GAP_FACTOR} * t.median_s)
        FROM steps s JOIN typical t USING (sensor_id)
        GROUP BY 1, 2 ORDER BY 1
        """
    ).fetchall()
    return {
        sensor: {"median_interval_s": median or 0.0, "max_gap_s": longest or 0.0, "gaps": int(n)}
        for sensor, median, longest, n in rows
    }


def end_of_day(day: str) -> datetime:
    """The event time of a day's aggregates: the last microsecond of the UTC day."""
    return datetime.combine(date.fromisoformat(day), time.max, tzinfo=UTC)


def day_statistics(
    chunks: list[Path],
    day: str,
    measurements: list[str],
    out_file: Path,
    *,
    memory_limit: str = "1GB",
) -> None:
    """Write the day's own statistics, one row per sensor (no history: days can run in parallel)."""
    # One thread: floating-point sums then add up in one order, so re-runs write identical bytes.
    con = _connect(memory_limit, threads=1)
    midnight = (date.fromisoformat(day) - date(1970, 1, 1)).days * 86_400  # epoch seconds
    try:
        stats, unpacked = [], []
        for m in measurements:
            c = ident(m)
            stats += [
                f"count({c}) AS {ident(m + '_count')}",
                f"1 - count({c}) / count(*) AS {ident(m + '_missing_ratio')}",
                f"avg({c}) AS {ident(m + '_mean')}",
                f"stddev_samp({c}) AS {ident(m + '_std')}",
                f"min({c}) AS {ident(m + '_min')}",
                f"max({c}) AS {ident(m + '_max')}",
                # One sort per measurement for all three exact quantiles (unpacked below).
                f"quantile_cont({c}, [0.05, 0.5, 0.95]) AS {ident(m + '_q')}",
                f"arg_max({c}, timestamp) FILTER (WHERE {c} IS NOT NULL) AS {ident(m + '_last')}",
                # Hours since midnight: small x values keep the regression numerically exact.
                f"regr_slope({c}, (epoch(timestamp) - {midnight}) / 3600.0) "
                f"AS {ident(m + '_slope_per_h')}",
            ]
            for stat in STATISTICS:
                if stat in ("p05", "p50", "p95"):
                    i = {"p05": 1, "p50": 2, "p95": 3}[stat]
                    unpacked.append(f"{ident(m + '_q')}[{i}] AS {ident(f'{m}_{stat}')}")
                else:
                    unpacked.append(ident(f"{m}_{stat}"))
        con.execute(
            f"CREATE TABLE today AS SELECT sensor_id, count(*) AS rows, {', '.join(stats)} "
            f"FROM read_parquet({file_list(chunks)}, union_by_name=true, hive_partitioning=false) "
            "GROUP BY sensor_id"
        )
        con.execute(
            f"COPY (SELECT sensor_id, rows, {', '.join(unpacked)} FROM today ORDER BY sensor_id) "
            f"TO {literal(str(out_file))} (FORMAT parquet)"
        )
    finally:
        con.close()


def add_trailing(
    statistics: Path,
    day: str,
    measurements: list[str],
    out_file: Path,
    *,
    previous: list[Path] | None = None,
    created: datetime,
    memory_limit: str = "1GB",
) -> int:
    """Join the day's statistics with the trailing-week features and write the gold row set.

    ``previous`` are the aggregates of the (up to) seven days before ``day``; missing days are
    simply absent, so the trailing features use whatever history exists.
    Returns the number of rows written.
    """
    con = _connect(memory_limit, threads=1)
    try:
        trailing_cols = ["sensor_id"]
        for m in measurements:
            trailing_cols.append(f"avg({ident(m + '_mean')}) AS {ident(m + '_mean_7d')}")
        trailing_cols.append("count(*) FILTER (WHERE rows > 0) AS days_with_data_7d")
        if previous:
            source = (
                f"read_parquet({file_list(previous)}, union_by_name=true, hive_partitioning=false)"
            )
        else:  # an empty history with the right columns
            nulls = ", ".join(f"NULL::DOUBLE AS {ident(m + '_mean')}" for m in measurements)
            source = f"(SELECT NULL::VARCHAR AS sensor_id, 0 AS rows, {nulls} WHERE false)"
        con.execute(
            f"CREATE TABLE history AS SELECT {', '.join(trailing_cols)} FROM {source} GROUP BY 1"
        )
        features = []
        for m in measurements:
            features += [
                f"h.{ident(m + '_mean_7d')}",
                f"t.{ident(m + '_mean')} - h.{ident(m + '_mean_7d')} AS {ident(m + '_change_vs_7d')}",
            ]
        con.execute(
            f"COPY (SELECT t.sensor_id, DATE {literal(day)} AS day, t.* EXCLUDE (sensor_id), "
            f"{', '.join(features)}, coalesce(h.days_with_data_7d, 0) AS days_with_data_7d, "
            f"TIMESTAMPTZ {literal(end_of_day(day).isoformat())} AS event_timestamp, "
            f"TIMESTAMPTZ {literal(created.isoformat())} AS created_timestamp "
            f"FROM read_parquet({literal(str(statistics))}, hive_partitioning=false) t "
            "LEFT JOIN history h USING (sensor_id) ORDER BY t.sensor_id) "
            f"TO {literal(str(out_file))} (FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        con.close()
    return pq.ParquetFile(out_file).metadata.num_rows


def previous_days(day: str, n: int = 7) -> list[str]:
    first = date.fromisoformat(day)
    return [(first - timedelta(days=i)).isoformat() for i in range(n, 0, -1)]


def read_frame(files: list[Path]) -> Any:
    """The rows of ``files`` as one pandas DataFrame (for checks; one day at most)."""
    if not files:
        import pandas as pd

        return pd.DataFrame()
    with duckdb.connect() as con:
        con.execute("SET TimeZone='UTC'")
        return con.execute(
            f"SELECT * FROM read_parquet({file_list(files)}, union_by_name=true, hive_partitioning=false)"
        ).df()


def distinct_keys(files: list[Path]) -> int:
    """Distinct ``(sensor_id, timestamp)`` pairs across bronze parts: what the chunks must hold."""
    if not files:
        return 0
    with duckdb.connect() as con:
        return con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT sensor_id, timestamp FROM "
            f"read_parquet({file_list(files)}, union_by_name=true, hive_partitioning=false))"
        ).fetchone()[0]
