"""Silver chunks and gold aggregates of ranges of UTC days, computed with DuckDB.

A range is processed in passes of many days, each pass one set of set-based queries (grouped by
day and sensor) on one connection, so that the cost of a range follows its rows, not its days.
Every output file is written from its own rows only, so a day written within a range is
byte-identical to the same day written on its own. The classes work on local Parquet files; the
caller lists and fetches the inputs from the object store, passes at most a bounded batch of
days at a time (:func:`batch_days`) and publishes the outputs.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_platform.lib.sql import file_list, ident, literal
from ml_platform.lib.store import ObjectInfo

PREVIEW_ROWS = 5
#: A gap is an interval between two readings of a sensor longer than this many median intervals.
GAP_FACTOR = 5

STATISTICS = ("count", "missing_ratio", "mean", "std", "min", "max", "p05", "p50", "p95", "last",
              "slope_per_h")  # fmt: skip

#: A batch of days handed over at once: at most this many days and this many bytes of Parquet
#: input (a day larger than that is a batch of its own). DuckDB spills beyond its memory budget;
#: the bounds keep the local copies and the spill of one batch small.
BATCH_DAYS = 31
BATCH_BYTES = 64 << 20
#: Rows per Arrow batch streamed from DuckDB to the file writer, and files written at once.
STREAM_ROWS = 1 << 17
WRITE_THREADS = 2
#: What DuckDB names the hive partition of a NULL value; used for a NULL sensor_id.
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_EPOCH = date(1970, 1, 1)


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


def batch_days(
    sizes: dict[str, int], *, max_days: int = BATCH_DAYS, max_bytes: int = BATCH_BYTES
) -> list[list[str]]:
    """``sizes``' days (input bytes per day) cut, in their order, into consecutive batches of at
    most ``max_days`` days and ``max_bytes`` bytes; a larger day is a batch of its own."""
    batches: list[list[str]] = []
    current: list[str] = []
    total = 0
    for day, size in sizes.items():
        if current and (len(current) == max_days or total + size > max_bytes):
            batches.append(current)
            current, total = [], 0
        current.append(day)
        total += size
    return [*batches, current] if current else batches


def _footers(files: list[Path]) -> tuple[int, tuple[tuple[str, str], ...]]:
    """The rows of ``files`` and their distinct (column, type) pairs in order of appearance."""
    rows, seen = 0, {}
    for f in files:
        meta = pq.read_metadata(f)
        rows += meta.num_rows
        for column in meta.schema.to_arrow_schema():
            seen.setdefault((column.name, str(column.type)), None)
    return rows, tuple(seen)


def _footer_rows(file: Path) -> int:
    return pq.read_metadata(file).num_rows


def _same_columns_runs(columns: dict[str, tuple]) -> list[list[str]]:
    """Consecutive days (in order) whose inputs have the same columns: one pass each. Reading
    files of different columns together would give a day columns (or types) it does not have."""
    runs: list[list[str]] = []
    for day, cols in columns.items():
        if runs and columns[runs[-1][-1]] == cols:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _register_files(con: duckdb.DuckDBPyConnection, files: dict[str, list[Path]], **per_day):
    """``__files``: each file's name, its day (``__day``), its rank inside its day (``__rank``)
    and ``per_day`` columns (functions of the day)."""
    rows = [(str(f), day, rank) for day, fs in files.items() for rank, f in enumerate(fs)]
    table = {"filename": [r[0] for r in rows], "__rank": [r[2] for r in rows]}
    table |= {name: [fn(r[1]) for r in rows] for name, fn in {"__day": str, **per_day}.items()}
    con.register("__files", pa.table(table))


def _scan(files: dict[str, list[Path]]) -> str:
    """The rows of every file with the columns of ``__files`` (see :func:`_register_files`)."""
    every = [f for fs in files.values() for f in fs]
    return (
        f"(SELECT b.* EXCLUDE (filename), f.* EXCLUDE (filename) FROM read_parquet("
        f"{file_list(every)}, union_by_name=true, hive_partitioning=false, filename=true) b "
        "JOIN __files f USING (filename))"
    )


def _write_runs(
    con: duckdb.DuckDBPyConnection, query: str, key: str, path_of: Callable[[str], Path]
) -> dict[str, Path]:
    """One Parquet file per value of the column ``key`` of ``query``, which orders its rows so
    that each value's rows are consecutive; the files hold every column but ``key``.

    Each file is written from its own rows as one contiguous table, so its bytes depend on those
    rows only, not on the other rows of the query nor on how DuckDB batches them. Files are
    written :data:`WRITE_THREADS` at a time (Arrow encodes and compresses outside the GIL).
    """
    written: dict[str, Path] = {}
    pending: list[Future[None]] = []
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        for value, pieces in _runs(con.execute(query).to_arrow_reader(STREAM_ROWS), key):
            if value in written:
                raise ValueError(f"the rows of {value!r} are not consecutive in the query")
            written[value] = path_of(value)
            table = pa.Table.from_batches(pieces).drop_columns([key]).combine_chunks()
            pending.append(pool.submit(_write_file, table, written[value]))
            if len(pending) > 2 * WRITE_THREADS:  # bounds the tables held in memory
                pending.pop(0).result()
        for future in pending:
            future.result()
    return written


def _runs(reader: pa.RecordBatchReader, key: str) -> Iterator[tuple[str, list[pa.RecordBatch]]]:
    """The rows of ``reader`` in runs of one value of ``key``: ``(value, slices)``."""
    current: str | None = None
    pieces: list[pa.RecordBatch] = []
    for batch in reader:
        runs = pc.run_end_encode(batch.column(key))
        start = 0
        for end, value in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
            if value != current and pieces:
                yield current, pieces
                pieces = []
            current = value
            pieces.append(batch.slice(start, end - start))
            start = end
    if pieces:
        yield current, pieces


def _write_file(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def _part_order(part: ObjectInfo) -> tuple[str, str]:
    return part.last_modified.isoformat(), part.key


def oldest_first(parts: list[ObjectInfo]) -> list[ObjectInfo]:
    """A day's bronze parts in ingestion order: the newest part's row wins a repeated key."""
    return sorted(parts, key=_part_order)


def parts_fingerprint(parts: list[ObjectInfo]) -> dict[str, Any]:
    """What a later build of the day compares its listing with (``parts`` oldest first): how
    many parts, the newest one's position, and a digest of every part's identity."""
    digest = hashlib.sha256()
    for p in parts:
        digest.update(
            f"{p.key}\0{p.etag or ''}\0{p.size}\0{p.last_modified.isoformat()}\n".encode()
        )
    return {
        "count": len(parts),
        "newest": list(_part_order(parts[-1])) if parts else None,
        "digest": digest.hexdigest(),
    }


def parts_added_since(parts: list[ObjectInfo], recorded: dict[str, Any] | None) -> list | None:
    """The parts (oldest first) added after a build whose fingerprint is ``recorded``; None when
    that build's parts are not all still there unchanged (a part was removed or replaced, or
    nothing was recorded), so that the day must be built from all of its parts again."""
    if not recorded or not recorded.get("count") or recorded.get("newest") is None:
        return None
    newest = tuple(recorded["newest"])
    if parts_fingerprint([p for p in parts if _part_order(p) <= newest]) != recorded:
        return None
    return [p for p in parts if _part_order(p) > newest]


@dataclass
class ChunkReport:
    day: str
    rows_in: int = 0
    rows_out: int = 0
    rows_written: int = 0  # read back from the written files' footers
    duplicates_removed: int = 0
    input_keys: int = 0  # distinct (sensor_id, timestamp) of the parts, counted on its own
    rows_per_sensor: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # "sensor_id=S" -> local file
    preview: list[dict[str, Any]] = field(default_factory=list)


class ChunkMerger:
    """Merges bronze parts into silver chunks, many days per pass, on one DuckDB connection."""

    def __init__(self, memory_limit: str = "1GB", threads: int | None = None):
        self.con = _connect(memory_limit, threads)

    def __enter__(self) -> ChunkMerger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def merge(self, parts: dict[str, list[Path]], out_dir: Path) -> dict[str, ChunkReport]:
        """Each day's bronze parts merged into one sorted, de-duplicated file per sensor,
        written to ``out_dir/<day>/sensor_id=S.parquet``.

        ``parts`` are ordered oldest ingestion first within each day: for a repeated
        ``(sensor_id, timestamp)`` of a day the row of the most recently ingested part wins, so
        a corrected late file replaces earlier values. A day's rows stay in its day, whatever
        their timestamps.
        """
        reports = {day: ChunkReport(day=day) for day in parts}
        footers = {day: _footers(fs) for day, fs in parts.items() if fs}
        for run in _same_columns_runs({day: columns for day, (_, columns) in footers.items()}):
            self._merge_pass({day: parts[day] for day in run}, out_dir, reports)
        for day, report in reports.items():
            report.rows_in = footers[day][0] if day in footers else 0
            report.rows_out = sum(report.rows_per_sensor.values())
            report.duplicates_removed = report.rows_in - report.rows_out
            report.rows_written = sum(map(_footer_rows, report.files.values()))
        return reports

    def _merge_pass(
        self, parts: dict[str, list[Path]], out_dir: Path, reports: dict[str, ChunkReport]
    ) -> None:
        con = self.con
        _register_files(con, parts)
        # One scan of the files: the queries below read the table, not the files again.
        con.execute(f"CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM {_scan(parts)}")
        columns = [r[0] for r in con.execute("DESCRIBE raw").fetchall()]
        values = [c for c in columns if c not in ("timestamp", "sensor_id", "__day", "__rank")]
        # Ties inside one part (same key, different values) resolve by the values themselves,
        # so the result never depends on scan order and re-runs write identical objects.
        tie_break = "".join(f", {ident(c)} DESC NULLS LAST" for c in values)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE merged AS SELECT * EXCLUDE (__rank) FROM raw "
            "QUALIFY row_number() OVER (PARTITION BY __day, sensor_id, timestamp "
            f"ORDER BY __rank DESC{tie_break}) = 1"
        )
        for day, sensor, n in con.execute(
            "SELECT __day, sensor_id, count(*) FROM merged GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            reports[day].rows_per_sensor[sensor] = n
        # What the chunks must hold, counted on the parts themselves rather than on `merged`.
        for day, n in con.execute(
            "SELECT __day, count(*) FROM (SELECT DISTINCT __day, sensor_id, timestamp FROM raw) "
            "GROUP BY 1"
        ).fetchall():
            reports[day].input_keys = n
        for day, gaps in _gaps(con).items():
            reports[day].gaps = gaps
        ordered = ", ".join(ident(c) for c in ["timestamp", "sensor_id", *values])
        last = max(parts)
        reports[last].preview = (
            con.execute(
                f"SELECT {ordered} FROM merged WHERE __day = {literal(last)} "
                f"ORDER BY sensor_id, timestamp LIMIT {PREVIEW_ROWS}"
            )
            .to_arrow_table()
            .to_pylist()
        )
        name = f"coalesce(url_encode(CAST(sensor_id AS VARCHAR)), {literal(NULL_PARTITION)})"
        files = _write_runs(
            con,
            f"SELECT {ordered}, __day || '/sensor_id=' || {name} AS __file FROM merged "
            "ORDER BY __day, sensor_id, timestamp",
            "__file",
            lambda file: out_dir / f"{file}.parquet",
        )
        for file, path in files.items():
            day, sensor_file = file.split("/", 1)
            reports[day].files[sensor_file] = path


def _gaps(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, dict[str, float]]]:
    """Per day and sensor: median sampling interval, longest gap, and gaps longer than
    GAP_FACTOR x median."""
    rows = con.execute(
        f"""
        WITH steps AS (
            SELECT __day, sensor_id,
                   epoch(timestamp) - epoch(lag(timestamp) OVER (
                       PARTITION BY __day, sensor_id ORDER BY timestamp)) AS step
            FROM merged
        ), typical AS (
            SELECT __day, sensor_id, median(step) AS median_s FROM steps GROUP BY ALL
        )
        SELECT s.__day, s.sensor_id, t.median_s, max(s.step),
               count(*) FILTER (WHERE s.step > {GAP_FACTOR} * t.median_s)
        FROM steps s JOIN typical t USING (__day, sensor_id)
        GROUP BY ALL ORDER BY 1, 2
        """
    ).fetchall()
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    for day, sensor, median, longest, n in rows:
        gaps.setdefault(day, {})[sensor] = {
            "median_interval_s": median or 0.0, "max_gap_s": longest or 0.0, "gaps": int(n)
        }  # fmt: skip
    return gaps


def end_of_day(day: str) -> datetime:
    """The event time of a day's aggregates: the last microsecond of the UTC day."""
    return datetime.combine(date.fromisoformat(day), time.max, tzinfo=UTC)


@dataclass
class DayAggregates:
    day: str
    rows: int = 0  # rows of the written file, from its footer
    history_days: int = 0  # days of the trailing week that have aggregates
    rows_per_sensor: dict[str, int] = field(default_factory=dict)  # of the chunks, on their own
    file: Path | None = None


def _statistics(measurements: list[str]) -> tuple[list[str], list[str]]:
    """The aggregates of each measurement over a (day, sensor) group, and the output columns."""
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
            # Hours since the day's midnight: small x values keep the regression exact.
            f"regr_slope({c}, (epoch(timestamp) - __midnight) / 3600.0) "
            f"AS {ident(m + '_slope_per_h')}",
        ]
        for stat in STATISTICS:
            if stat in ("p05", "p50", "p95"):
                i = {"p05": 1, "p50": 2, "p95": 3}[stat]
                unpacked.append(f"{ident(m + '_q')}[{i}] AS {ident(f'{m}_{stat}')}")
            else:
                unpacked.append(ident(f"{m}_{stat}"))
    return stats, unpacked


class DailyAggregator:
    """Turns silver chunks into gold rows, many days per pass, on one DuckDB connection.

    Days must come in day order (over all calls): the trailing-week features of a day read the
    days aggregated before it, kept in the connection, and ``history``, the aggregates files of
    earlier days that exist (``{day: file}``, at least the seven days before the first day).
    One thread: floating-point sums then add up in one order, so re-runs write identical bytes.
    """

    def __init__(
        self, measurements: list[str], history: dict[str, Path], memory_limit: str = "1GB"
    ):
        self.measurements = measurements
        self.con = _connect(memory_limit, threads=1)
        self.with_aggregates = set(history)
        means = ", ".join(f"{ident(m + '_mean')} DOUBLE" for m in measurements)
        self.con.execute(
            f"CREATE TEMP TABLE history (__day DATE, sensor_id VARCHAR, rows BIGINT, {means})"
        )
        if history:
            files = {day: [path] for day, path in history.items()}
            _register_files(self.con, files, __day=date.fromisoformat)
            self.con.execute(f"INSERT INTO history BY NAME SELECT {self._history_columns} "
                             f"FROM {_scan(files)}")  # fmt: skip

    @property
    def _history_columns(self) -> str:
        means = "".join(f", {ident(m + '_mean')}" for m in self.measurements)
        return f"__day, sensor_id, rows{means}"

    def __enter__(self) -> DailyAggregator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def aggregate(
        self, chunks: dict[str, list[Path]], created: dict[str, datetime], out_dir: Path
    ) -> dict[str, DayAggregates]:
        """One gold file per day that has chunks, ``out_dir/<day>.parquet``: one row per sensor,
        the day's statistics per measurement and the trailing-week features. ``created`` is
        each day's ``created_timestamp`` (when its newest input was ingested)."""
        reports = {day: DayAggregates(day=day) for day in chunks}
        # A day's chunk objects are written together: the first one tells the day's columns.
        present = {day: fs for day, fs in chunks.items() if fs}
        columns = {day: _footers(fs[:1])[1] for day, fs in present.items()}
        for run in _same_columns_runs(columns):
            self._aggregate_pass({day: present[day] for day in run}, created, out_dir, reports)
        for day, report in reports.items():
            if report.file is not None:
                report.rows = _footer_rows(report.file)
                self.with_aggregates.add(day)
            report.history_days = sum(d in self.with_aggregates for d in previous_days(day))
        return reports

    def _aggregate_pass(
        self,
        chunks: dict[str, list[Path]],
        created: dict[str, datetime],
        out_dir: Path,
        reports: dict[str, DayAggregates],
    ) -> None:
        con = self.con
        _register_files(con, chunks, __day=date.fromisoformat, __midnight=_midnight)
        # One scan of the files, in file order (one thread): both queries below read the table.
        con.execute(f"CREATE OR REPLACE TEMP TABLE chunks AS SELECT * FROM {_scan(chunks)}")
        # What the checks judge the day's rows against: counted on the chunks, on their own.
        for day, sensor, n in con.execute(
            "SELECT __day, sensor_id, count(*) FROM chunks GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            reports[day.isoformat()].rows_per_sensor[sensor] = n
        stats, unpacked = _statistics(self.measurements)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE stats AS SELECT __day, sensor_id, rows, "
            f"{', '.join(unpacked)} FROM (SELECT __day, sensor_id, count(*) AS rows, "
            f"{', '.join(stats)} FROM chunks GROUP BY __day, sensor_id)"
        )
        first = min(chunks)
        con.execute(f"DELETE FROM history WHERE __day < DATE {literal(first)} - 7")
        con.execute(f"INSERT INTO history BY NAME SELECT {self._history_columns} FROM stats")
        con.execute(_trailing_query(self.measurements))
        _register_days(con, {day: created[day] for day in chunks})
        features = []
        for m in self.measurements:
            mean, mean_7d = ident(m + "_mean"), ident(m + "_mean_7d")
            features += [f"h.{mean_7d}", f"t.{mean} - h.{mean_7d} AS {ident(m + '_change_vs_7d')}"]
        files = _write_runs(
            con,
            "SELECT t.sensor_id, t.__day AS day, t.* EXCLUDE (sensor_id, __day), "
            f"{', '.join(features)}, coalesce(h.days_with_data_7d, 0) AS days_with_data_7d, "
            "d.event_timestamp, d.created_timestamp, CAST(t.__day AS VARCHAR) AS __file "
            "FROM stats t LEFT JOIN trailing_week h USING (__day, sensor_id) "
            "JOIN __days d USING (__day) ORDER BY t.__day, t.sensor_id",
            "__file",
            lambda day: out_dir / f"{day}.parquet",
        )
        for day, path in files.items():
            reports[day].file = path


def _midnight(day: str) -> int:
    """Epoch seconds of the day's first instant."""
    return (date.fromisoformat(day) - _EPOCH).days * 86_400


def _register_days(con: duckdb.DuckDBPyConnection, created: dict[str, datetime]) -> None:
    """``__days``: each day with the event and created timestamps of its aggregates."""
    stamp = pa.timestamp("us", "UTC")
    table = {
        "__day": [date.fromisoformat(day) for day in created],
        "event_timestamp": pa.array([end_of_day(day) for day in created], stamp),
        "created_timestamp": pa.array(list(created.values()), stamp),
    }
    con.register("__days", pa.table(table))


def _trailing_query(measurements: list[str]) -> str:
    """``trailing_week``: per day of ``stats`` and sensor, the mean of each measurement's daily
    means over the seven days before (the days of ``history``), and how many of them have data.

    A join and an ordered ``avg``, not a window frame: the sum then adds the days in day order
    whatever else the pass holds, so a day computed in a range has the bytes it has on its own.
    """
    means = "".join(
        f", avg(h.{ident(m + '_mean')} ORDER BY h.__day) AS {ident(m + '_mean_7d')}"
        for m in measurements
    )
    return (
        f"CREATE OR REPLACE TEMP TABLE trailing_week AS SELECT d.__day, h.sensor_id{means}, "
        "count(*) FILTER (WHERE h.rows > 0) AS days_with_data_7d "
        "FROM (SELECT DISTINCT __day FROM stats) d JOIN history h "
        "ON h.__day BETWEEN d.__day - 7 AND d.__day - 1 GROUP BY d.__day, h.sensor_id"
    )


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


def rows_per_sensor(files: list[Path]) -> dict[str, int]:
    """Rows of each sensor across ``files`` (a day's chunk objects), counted on their own."""
    if not files:
        return {}
    with duckdb.connect() as con:
        return dict(
            con.execute(
                "SELECT sensor_id, count(*) FROM "
                f"read_parquet({file_list(files)}, union_by_name=true, hive_partitioning=false) "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        )


def read_partitions(files: dict[str, list[Path]], column: str = "_partition") -> Any:
    """The rows of every partition's files as one pandas DataFrame, each row carrying the
    partition its file belongs to in ``column`` (not derived from the row's own values)."""
    import pandas as pd

    owner = [(str(f), partition) for partition, fs in files.items() for f in fs]
    if not owner:
        return pd.DataFrame({column: pd.Series(dtype=str)})
    names, partitions = zip(*owner, strict=True)
    owners = pa.table({"filename": list(names), column: list(partitions)})
    with duckdb.connect() as con:
        con.execute("SET TimeZone='UTC'")
        con.register("owner", owners)
        source = file_list([Path(f) for f, _ in owner])
        return con.execute(
            f"SELECT b.* EXCLUDE (filename), o.{ident(column)} FROM read_parquet({source}, "
            "union_by_name=true, hive_partitioning=false, filename=true) b "
            "JOIN owner o USING (filename)"
        ).df()
