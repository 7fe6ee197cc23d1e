"""Read one landed file, cast it to its contract, and split it into per-day Parquet parts.

DuckDB does the work: it streams CSV (any delimiter, gzip too) and Parquet in parallel, spills to
disk under a memory limit, and writes day-partitioned Parquet, so memory stays flat however large
the file is (2-4x faster than pandas, docs/stack.md). The file is parsed once into an on-disk
staging table; the statistics and the partitioned write read that table.

Nothing here touches the object store: the caller hands in a local file and publishes the parts.
"""

from __future__ import annotations

import gzip
import re
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from ml_platform.lib.contract import Column, Contract
from ml_platform.lib.sql import ident, literal

PREVIEW_ROWS = 5
MAX_LISTED_SENSORS = 200
_US_PER_DAY = 86_400_000_000
_EPOCH = date(1970, 1, 1)
_TS_TYPES = {"TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE"}
_NUMERIC = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
)


class OutOfBudgetError(RuntimeError):
    """DuckDB ran out of its memory budget: a fault of the worker's sizing, not of the file, so
    the file is not quarantined; the run fails (and is retried) with this message."""


class RejectedFileError(Exception):
    """The file as a whole cannot be accepted. ``reason`` is a short code, the message says why."""

    def __init__(self, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}


@dataclass
class IngestReport:
    source_format: str
    rows_in: int
    rows_out: int
    duplicate_rows: int
    rejected_rows: dict[str, int]
    out_of_range: dict[str, int]
    extra_columns: list[str]
    renamed: dict[str, str]
    rows_by_date: dict[str, int]
    sensors: list[str]
    sensor_count: int
    timestamp_min: str | None
    timestamp_max: str | None
    schema: list[tuple[str, str]]
    preview: list[dict[str, Any]]
    parts: dict[str, Path] = field(default_factory=dict)

    @property
    def dates(self) -> list[str]:
        return sorted(self.rows_by_date)


def detect_format(path: Path) -> tuple[str, str]:
    """``(format, compression)`` from the first bytes, so a misnamed file is still read right."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return "parquet", "none"
    if head[:2] == b"\x1f\x8b":
        return "csv", "gzip"
    return "csv", "none"


#: Bounds on a CSV's first line, checked before DuckDB sniffs it: one 10 MB line of numbers makes
#: the sniffer plan 2.6 million columns and run out of a 1 GB budget after 5 s.
MAX_FIRST_LINE_BYTES = 1 << 20
MAX_COLUMNS = 10_000


def _check_first_line(path: Path, compression: str, delimiter: str) -> None:
    """Reject a CSV whose first line has no end within 1 MiB or too many columns to be a table."""
    try:
        with gzip.open(path) if compression == "gzip" else path.open("rb") as fh:
            head = fh.read(MAX_FIRST_LINE_BYTES + 1)
    except (OSError, EOFError, zlib.error):
        return  # a broken gzip stream: DuckDB's read rejects it with its own message
    line, newline, _ = head.partition(b"\n")
    if not newline and len(head) > MAX_FIRST_LINE_BYTES:
        raise RejectedFileError(
            "line_too_long",
            f"the first line does not end within {MAX_FIRST_LINE_BYTES} bytes",
            {"limit_bytes": MAX_FIRST_LINE_BYTES},
        )
    columns = line.count(delimiter.encode()) + 1
    if columns > MAX_COLUMNS:
        raise RejectedFileError(
            "too_many_columns",
            f"the first line has {columns} columns (at most {MAX_COLUMNS})",
            {"columns": columns, "limit": MAX_COLUMNS},
        )


def _short(exc: BaseException, path: Path | None = None, limit: int = 600) -> str:
    """One line; the worker's temporary copy named by its file name only, so the message (kept
    in the quarantine record) is the same on every run."""
    text = str(exc).replace(str(path), path.name) if path else str(exc)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _out_of_budget(exc: BaseException, path: Path, memory_limit: str) -> OutOfBudgetError:
    return OutOfBudgetError(
        f"DuckDB ran out of its {memory_limit} memory budget reading {path.name} "
        f"(ML_PLATFORM_INGEST_MEMORY): {_short(exc, path)}"
    )


class _Plan:
    """How each contract column is produced from the source's columns."""

    def __init__(self, contract: Contract, source_columns: dict[str, str]):
        self.contract = contract
        wanted = set(contract.column_names)
        self.source_of: dict[str, str] = {}
        self.extra: list[str] = []
        for src in source_columns:
            target = contract.target_name(src)
            if target in wanted:
                if target in self.source_of:
                    raise RejectedFileError(
                        "ambiguous_columns",
                        f"columns {self.source_of[target]!r} and {src!r} both map to {target!r}",
                    )
                self.source_of[target] = src
            else:
                self.extra.append(src)
        required = [contract.timestamp_column, contract.key_column]
        required += [c.name for c in contract.columns if c.required]
        missing = [c for c in required if c not in self.source_of]
        if missing:
            raise RejectedFileError(
                "missing_columns",
                f"missing required column(s) {missing}; the file has {list(source_columns)}"
                + (f" (renames tried: {contract.renames})" if contract.renames else ""),
                {"missing": missing, "found": list(source_columns)},
            )
        if self.extra and contract.extra_columns == "reject":
            raise RejectedFileError(
                "extra_columns",
                f"columns not in the contract: {self.extra} (contract sets extra_columns: reject)",
                {"extra": self.extra},
            )
        self.renamed = {s: t for t, s in self.source_of.items() if s != t}


#: DuckDB's CSV reader allocates ~32 MiB buffers ("could not allocate block of size 30.5 MiB"),
#: so under a small budget (64 MB) a good file would be quarantined as "unreadable". Below 256 MiB of budget the buffers are an eighth of it, at least 4 MiB (above
#: DuckDB's default 2 MiB line limit): 6.5M rows (340 MB) at 64 MB in 7 s, 280 MB peak RSS.
_CSV_BUFFER_DEFAULT = 32 << 20
_CSV_BUFFER_MIN = 4 << 20
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _budget_bytes(limit: str) -> int | None:
    """``"64MB"``, ``"1GB"``, ``"512MiB"`` as bytes (None if DuckDB's syntax is not recognised)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", limit.upper().replace("IB", "iB"))
    if not match:
        return None
    number, unit, binary = match.groups()
    scale = 1024 ** " KMGT".index(unit) if binary and unit else _UNITS[unit]
    return int(float(number) * scale)


def _csv_buffer_size(memory_limit: str) -> int | None:
    budget = _budget_bytes(memory_limit)
    if budget is None or budget >= 8 * _CSV_BUFFER_DEFAULT:
        return None
    return max(_CSV_BUFFER_MIN, budget // 8)


def _csv_options(contract: Contract, compression: str, buffer_size: int | None = None) -> str:
    options = [
        f"header={'true' if contract.header else 'false'}",
        f"delim={literal(contract.delimiter)}",
        f"compression={literal(compression)}",
    ]
    if buffer_size:
        options.append(f"buffer_size={int(buffer_size)}")
    return ", ".join(options)


def _epoch_expr(number: str, fmt: str) -> str:
    """SQL turning an epoch number into a TIMESTAMPTZ; ``auto`` picks s, ms or us by magnitude."""
    seconds = {
        "epoch_s": number,
        "epoch_ms": f"{number} / 1e3",
        "epoch_us": f"{number} / 1e6",
    }.get(
        fmt,
        # 1e11 s is the year 5138 and 1e11 ms is 1973: no overlap in practice.
        f"CASE WHEN abs({number}) >= 1e14 THEN {number} / 1e6 "
        f"WHEN abs({number}) >= 1e11 THEN {number} / 1e3 ELSE {number} END",
    )
    return f"to_timestamp(CAST({seconds} AS DOUBLE))"


def _timestamp_expr(contract: Contract, column: str, source_type: str) -> str:
    col = ident(column)
    fmt = contract.timestamp_format
    base = source_type.split("(")[0]
    if base == "TIMESTAMP WITH TIME ZONE":
        return col
    if base in _TS_TYPES:
        return f"CAST({col} AS TIMESTAMPTZ)"  # naive: read in the contract's time zone
    if base.startswith(_NUMERIC):
        return _epoch_expr(col, fmt)
    text = f"CAST({col} AS VARCHAR)"
    if "%" in fmt:
        return f"CAST(TRY_STRPTIME({text}, {literal(fmt)}) AS TIMESTAMPTZ)"
    return f"TRY_CAST({text} AS TIMESTAMPTZ)"


def _check_parquet_types(contract: Contract, plan: _Plan, types: dict[str, str]) -> None:
    for column in contract.columns:
        src = plan.source_of.get(column.name)
        if src is None or column.type == "varchar":
            continue
        actual = types[src]
        ok = actual.startswith(_NUMERIC) or (column.type == "boolean" and actual == "BOOLEAN")
        if not ok:
            raise RejectedFileError(
                "wrong_type",
                f"column {src!r} has type {actual}; the contract says {column.type}",
                {"column": src, "type": actual, "expected": column.type},
            )


@dataclass
class BatchConnection:
    """A DuckDB connection spilling past its budget into one folder: a batch's, reused for its
    small files, or one file's own. ``settings`` remembers the budget last applied, so that the
    files after the first skip the ``SET`` statements (about 3 ms a file)."""

    con: duckdb.DuckDBPyConnection
    settings: tuple | None = None

    def close(self) -> None:
        self.con.close()


def batch_connection(spill_dir: Path) -> BatchConnection:
    """A connection spilling past its budget into ``spill_dir``."""
    con = duckdb.connect(":memory:")
    con.execute(f"SET temp_directory={literal(str(spill_dir))}")
    return BatchConnection(con)


@dataclass(frozen=True)
class _Source:
    """The landed file and its encoding, as :func:`detect_format` found it."""

    path: Path
    fmt: str  # "csv" | "parquet"
    compression: str  # "none" | "gzip"

    @property
    def label(self) -> str:
        """The report's ``source_format``: ``csv``, ``csv+gzip`` or ``parquet``."""
        return self.fmt if self.compression == "none" else f"{self.fmt}+{self.compression}"


@dataclass(frozen=True)
class _Budget:
    """What DuckDB may use of the worker: memory and threads."""

    memory_limit: str
    threads: int | None


def ingest_file(
    path: Path,
    contract: Contract,
    out_dir: Path,
    *,
    now: datetime | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
    con: BatchConnection | None = None,
) -> IngestReport:
    """Cast ``path`` to ``contract`` and write ``out_dir/<YYYY-MM-DD>.parquet`` per UTC day.

    Raises :class:`RejectedFileError` for a file that cannot be accepted; ``out_dir`` then holds
    nothing the caller should publish. ``con``: a connection to reuse (a batch of small files
    saves a connection per file, about 20 ms); its staging table is dropped after the file.
    """
    path = Path(path)
    now = now or datetime.now(UTC)
    size = path.stat().st_size
    if size == 0:
        raise RejectedFileError("empty_file", "file is empty (0 bytes)")
    fmt, compression = detect_format(path)
    if fmt == "csv":
        _check_first_line(path, compression, contract.delimiter)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ingest-", dir=out_dir) as work:
        # In-memory staging that DuckDB's buffer manager spills to ``work`` past memory_limit:
        # measured ~25% faster than an on-disk database file, with the same bounded memory.
        own = con is None
        batch = batch_connection(Path(work) / "spill") if own else con
        try:
            return _ingest(
                batch,
                _Source(path, fmt, compression),
                contract,
                _Budget(memory_limit, threads),
                out_dir,
                now,
            )
        finally:
            if own:
                batch.close()
            else:
                batch.con.execute("DROP TABLE IF EXISTS staged")


def _ingest(
    batch: BatchConnection,
    source: _Source,
    contract: Contract,
    budget: _Budget,
    out_dir: Path,
    now: datetime,
) -> IngestReport:
    """Parse the file once into the staging table, count it, and write its valid rows."""
    _configure_connection(batch, budget, contract.timezone)
    con = batch.con
    read = _plan_read(con, source, contract, budget.memory_limit)
    _stage(con, source, contract, read, now, budget.memory_limit)
    counts = _count_rows(con, contract)
    parts = _write_day_parts(con, contract, counts.days, out_dir)
    return _report(con, source, contract, read.plan, counts, parts)


def _configure_connection(batch: BatchConnection, budget: _Budget, timezone: str) -> None:
    """Bound DuckDB to the budget; naive timestamps are read in the contract's time zone. A
    reused connection keeps what it was set to."""
    settings = (budget.memory_limit, budget.threads, timezone)
    if batch.settings == settings:
        return
    con = batch.con
    con.execute(f"SET memory_limit={literal(budget.memory_limit)}")
    con.execute(f"SET TimeZone={literal(timezone)}")
    con.execute("SET preserve_insertion_order=false")  # lets DuckDB stream without reordering
    if budget.threads:
        con.execute(f"SET threads={int(budget.threads)}")
    batch.settings = settings


@dataclass(frozen=True)
class _Read:
    """How the staging table reads the file: the DuckDB table function that reads it, how its
    columns map onto the contract, and the type its timestamp column is read as."""

    reader: str
    plan: _Plan
    ts_type: str

    @property
    def ts_source(self) -> str:
        return self.plan.source_of[self.plan.contract.timestamp_column]

    @property
    def key_source(self) -> str:
        return self.plan.source_of[self.plan.contract.key_column]


def _plan_read(
    con: duckdb.DuckDBPyConnection, source: _Source, contract: Contract, memory_limit: str
) -> _Read:
    """Sniff the file's columns, map them onto the contract and fix the types they are read as."""
    buffer = _csv_buffer_size(memory_limit)
    source_types = _sniff_columns(
        con, source, contract, _reader(source, contract, buffer), memory_limit
    )
    plan = _Plan(contract, source_types)
    ts_src = plan.source_of[contract.timestamp_column]
    if source.fmt != "csv":
        _check_parquet_types(contract, plan, source_types)
        return _Read(_reader(source, contract, buffer), plan, source_types[ts_src])
    forced = _csv_read_types(contract, plan, source_types)
    return _Read(_reader(source, contract, buffer, forced), plan, forced[ts_src])


def _reader(
    source: _Source, contract: Contract, buffer: int | None, types: dict[str, str] | None = None
) -> str:
    """The DuckDB table function reading ``source``; ``types`` forces the CSV columns' types."""
    path = literal(str(source.path))
    if source.fmt == "parquet":
        return f"read_parquet({path}, hive_partitioning=false)"
    options = _csv_options(contract, source.compression, buffer)
    if types is None:
        return f"read_csv({path}, {options})"
    types_sql = "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in types.items()) + "}"
    return f"read_csv({path}, {options}, types={types_sql})"


def _sniff_columns(
    con: duckdb.DuckDBPyConnection,
    source: _Source,
    contract: Contract,
    reader: str,
    memory_limit: str,
) -> dict[str, str]:
    """The file's column names and the types DuckDB's sniffer gives them."""
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    except duckdb.OutOfMemoryException as exc:
        raise _out_of_budget(exc, source.path, memory_limit) from exc
    except duckdb.Error as exc:
        raise RejectedFileError(
            "unreadable", f"cannot read the file as {source.fmt}: {_short(exc, source.path)}"
        ) from exc
    source_types = {row[0]: row[1] for row in described}
    if source.fmt == "csv" and list(source_types) == ["column0"] and contract.header:
        raise RejectedFileError(
            "unreadable",
            f"cannot read the file as {source.fmt}: no header line with delimiter "
            f"{contract.delimiter!r}",
        )
    return source_types


def _csv_read_types(
    contract: Contract, plan: _Plan, source_types: dict[str, str]
) -> dict[str, str]:
    """The types a CSV's contract columns are read as, in place of the sniffer's guesses."""
    ts_src = plan.source_of[contract.timestamp_column]
    forced = {plan.source_of[contract.key_column]: "VARCHAR"}  # ids such as 007 keep their zeros
    for column in contract.columns:
        if column.name in plan.source_of:
            forced[plan.source_of[column.name]] = column.sql_type
    # Timestamps are read as text and parsed with TRY_CAST: a value the sniffer's sample did not
    # foresee becomes a counted bad row (DuckDB's typed CSV reader would silently turn it into
    # NULL). Measured no slower than the typed read.
    # Epoch numbers are recognised by the sniffer's type for the column (per file, not per row).
    epoch = contract.timestamp_format.startswith("epoch") or (
        contract.timestamp_format == "auto" and source_types[ts_src].startswith(_NUMERIC)
    )
    forced[ts_src] = "DOUBLE" if epoch else "VARCHAR"
    return forced


def _ranged(contract: Contract) -> list[Column]:
    """The contract's columns with a lower or upper bound."""
    return [c for c in contract.columns if c.min is not None or c.max is not None]


def _outside(column: Column) -> str:
    """SQL that is true where ``column`` (in the staging table) is outside its bounds."""
    value = ident(column.name)
    parts = []
    if column.min is not None:
        parts.append(f"{value} < {column.min}")
    if column.max is not None:
        parts.append(f"{value} > {column.max}")
    return "(" + " OR ".join(parts) + ")"


def _reject_reasons(contract: Contract, now: datetime) -> list[str]:
    """``WHEN`` clauses naming why a staged row is rejected; the first that holds wins."""
    T, K = ident(contract.timestamp_column), ident(contract.key_column)
    horizon = now + timedelta(minutes=contract.future_tolerance_minutes)
    reasons = [
        "WHEN _ts_null THEN 'null_timestamp'",
        f"WHEN {T} IS NULL THEN 'unparseable_timestamp'",
        f"WHEN {K} IS NULL THEN 'null_sensor_id'",
        f"WHEN {T} > TIMESTAMPTZ {literal(horizon.isoformat())} THEN 'future_timestamp'",
    ]
    ranged = _ranged(contract)
    if contract.out_of_range == "reject_row" and ranged:
        reasons.append(f"WHEN {' OR '.join(_outside(c) for c in ranged)} THEN 'out_of_range'")
    return reasons


def _staging_sql(contract: Contract, read: _Read, now: datetime) -> str:
    """The statement parsing the file once into ``staged``: typed columns, the reject reason and
    the UTC day of each row."""
    T, K = ident(contract.timestamp_column), ident(contract.key_column)
    ts = _timestamp_expr(contract, read.ts_source, read.ts_type)
    key = f"NULLIF(CAST({ident(read.key_source)} AS VARCHAR), '')"
    measures = []
    for column in contract.columns:
        src = read.plan.source_of.get(column.name)
        value = f"CAST({ident(src)} AS {column.sql_type})" if src else f"NULL::{column.sql_type}"
        measures.append(f"{value} AS {ident(column.name)}")
    typed = [
        f"{ts} AS {T}",
        f"{key} AS {K}",
        *measures,
        f"{ident(read.ts_source)} IS NULL AS _ts_null",
    ]
    return (
        "CREATE OR REPLACE TABLE staged AS SELECT *, "
        f"CASE {' '.join(_reject_reasons(contract, now))} END AS _reject, "
        # The UTC day as an integer: pure arithmetic, ~0.8 s cheaper per 10M rows than a
        # time-zone-aware CAST to DATE.
        f"epoch_us({T}) // {_US_PER_DAY} AS _day FROM (SELECT {', '.join(typed)} FROM {read.reader})"
    )


def _stage(
    con: duckdb.DuckDBPyConnection,
    source: _Source,
    contract: Contract,
    read: _Read,
    now: datetime,
    memory_limit: str,
) -> None:
    """Parse the file into the staging table, turning DuckDB's errors into the file's verdict."""
    try:
        con.execute(_staging_sql(contract, read, now))
    except duckdb.OutOfMemoryException as exc:
        raise _out_of_budget(exc, source.path, memory_limit) from exc
    except duckdb.ConversionException as exc:
        raise RejectedFileError(
            "wrong_type", f"a value does not fit the contract: {_short(exc, source.path)}"
        ) from exc
    except duckdb.Error as exc:
        raise RejectedFileError(
            "unreadable", f"cannot read the file as {source.fmt}: {_short(exc, source.path)}"
        ) from exc


@dataclass(frozen=True)
class _Counts:
    """What came in, counted on the staging table."""

    rows_in: int
    timestamp_min: datetime | None  # of the valid rows
    timestamp_max: datetime | None
    out_of_range: dict[str, int]  # per bounded column with any value outside its bounds
    rejected: dict[str, int]  # per reject reason
    sensors: list[str]  # every sensor with a valid row, sorted
    days: list[int]  # every UTC day (days since 1970-01-01) with a valid row, in order


def _count_rows(con: duckdb.DuckDBPyConnection, contract: Contract) -> _Counts:
    """Count the staged rows in one scan; reject a file with no rows or no valid row."""
    totals, valid_days, sensors = _scan_staged(con, contract)
    rows_in = sum(t[1] for t in totals)
    if rows_in == 0:
        raise RejectedFileError("no_rows", "the file has a header but no data rows")
    rejected = {t[0]: t[1] for t in sorted(totals, key=lambda t: t[0] or "") if t[0] is not None}
    if sum(rejected.values()) == rows_in:
        raise RejectedFileError(
            "no_valid_rows", f"all {rows_in} rows were rejected: {rejected}", {"rejected": rejected}
        )
    [valid] = [t for t in totals if t[0] is None]
    ranged = _ranged(contract)
    outside = [sum(int(t[4 + i] or 0) for t in totals) for i in range(len(ranged))]
    out_of_range = {c.name: n for c, n in zip(ranged, outside, strict=True) if n}
    return _Counts(rows_in, valid[2], valid[3], out_of_range, rejected, sorted(sensors),
                   sorted(valid_days))  # fmt: skip


#: ``GROUPING(_day, key)`` of each grouping set of :func:`_scan_staged`.
_BY_REASON, _BY_DAY, _BY_SENSOR = 3, 1, 2


def _scan_staged(
    con: duckdb.DuckDBPyConnection, contract: Contract
) -> tuple[list[tuple], list[int], list[str]]:
    """One scan of the staging table, grouped three ways: per reject reason (NULL: valid) the
    rows, their time span and out-of-range counts; the valid rows' days; their sensors."""
    T, K = ident(contract.timestamp_column), ident(contract.key_column)
    range_counts = "".join(f", sum(CAST({_outside(c)} AS INTEGER))" for c in _ranged(contract))
    rows = con.execute(
        f"SELECT GROUPING(_day, {K}), _reject, _day, {K}, count(*), min({T}), max({T})"
        f"{range_counts} FROM staged "
        f"GROUP BY GROUPING SETS ((_reject), (_reject, _day), (_reject, {K}))"
    ).fetchall()
    totals = [(r[1], *r[4:]) for r in rows if r[0] == _BY_REASON]
    days = [r[2] for r in rows if r[0] == _BY_DAY and r[1] is None]
    sensors = [r[3] for r in rows if r[0] == _BY_SENSOR and r[1] is None]
    return totals, days, sensors


def _output_columns(contract: Contract) -> str:
    """The select list of the day parts: bounded values nulled when the contract says so."""
    values = []
    ranged = _ranged(contract)
    for column in contract.columns:
        name = ident(column.name)
        if contract.out_of_range == "null" and column in ranged:
            values.append(f"CASE WHEN {_outside(column)} THEN NULL ELSE {name} END AS {name}")
        else:
            values.append(name)
    return ", ".join([ident(contract.timestamp_column), ident(contract.key_column), *values])


def _write_day_parts(
    con: duckdb.DuckDBPyConnection, contract: Contract, days: list[int], out_dir: Path
) -> dict[str, Path]:
    """Write the valid rows, exact duplicates dropped, one Parquet file per UTC day of
    ``days``."""
    cols = _output_columns(contract)
    # One COPY per day rather than one COPY ... PARTITION_BY: rows arrive roughly in time order,
    # so zone maps skip most of the table for each day; measured ~2x faster, and the
    # de-duplication hash table only ever holds one day.
    parts: dict[str, Path] = {}
    for day in days:
        name = (_EPOCH + timedelta(days=day)).isoformat()
        parts[name] = out_dir / f"{name}.parquet"
    for day, target in zip(days, parts.values(), strict=True):
        con.execute(
            # Sorted by every column: parallel hash de-duplication leaves the order open, and a
            # re-run must give byte-identical parts (idempotent overwrite), not only the same
            # rows: unsorted 100k-row days differ (test_faults_uploads.py).
            f"COPY (SELECT DISTINCT {cols} FROM staged WHERE _reject IS NULL AND _day = {day} "
            "ORDER BY ALL) "
            # zstd level 1: 6% larger than the default level 3, 7% faster to write.
            f"TO {literal(str(target))} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
        )
    return parts


def _report(
    con: duckdb.DuckDBPyConnection,
    source: _Source,
    contract: Contract,
    plan: _Plan,
    counts: _Counts,
    parts: dict[str, Path],
) -> IngestReport:
    """The report on the written parts, read back from their Parquet footers."""
    rows_by_date = {name: pq.ParquetFile(p).metadata.num_rows for name, p in parts.items()}
    first = pq.ParquetFile(next(iter(parts.values())))
    preview = first.read_row_group(0).slice(0, PREVIEW_ROWS).to_pylist()  # no pandas import
    described = con.execute(f"DESCRIBE SELECT {_output_columns(contract)} FROM staged").fetchall()
    schema = [(d[0], str(d[1])) for d in described]
    rows_out = sum(rows_by_date.values())
    valid = counts.rows_in - sum(counts.rejected.values())
    ts_min, ts_max = counts.timestamp_min, counts.timestamp_max
    return IngestReport(
        source_format=source.label,
        rows_in=int(counts.rows_in),
        rows_out=int(rows_out),
        duplicate_rows=int(valid - rows_out),
        rejected_rows={k: int(v) for k, v in counts.rejected.items()},
        out_of_range=counts.out_of_range,
        extra_columns=plan.extra,
        renamed=plan.renamed,
        rows_by_date=rows_by_date,
        sensors=counts.sensors[:MAX_LISTED_SENSORS],
        sensor_count=len(counts.sensors),
        timestamp_min=ts_min.astimezone(UTC).isoformat() if ts_min else None,
        timestamp_max=ts_max.astimezone(UTC).isoformat() if ts_max else None,
        schema=schema,
        preview=preview,
        parts=parts,
    )
