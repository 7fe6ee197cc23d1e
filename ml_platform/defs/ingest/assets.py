"""``raw_readings`` and ``raw_labels``: one partition per landing day, one run per batch of files.

A run ingests a batch of landed object versions (the landing sensor's micro-batch, or what a
person names in the run config, or every version that landed on the partition's day). Each
version is still the unit of exactly-once and of quarantine: its bronze parts and its quarantine
record are keyed by the version, and the ledger (``lake/_ledger/``) says what became of it, so a
version already handled is left alone by any later batch unless ``reingest`` is set. A rejected
file is quarantined with its reason and the rest of the batch goes on; the run's metadata lists
every file with its outcome.
"""

import contextlib
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from ml_platform.defs.metadata import table
from ml_platform.defs.partitions import landing_days
from ml_platform.defs.resources import IngestResource, LakeResource
from ml_platform.lib import paths
from ml_platform.lib.contract import Contract
from ml_platform.lib.ingest import IngestReport, RejectedFileError, batch_connection, ingest_file
from ml_platform.lib.quarantine import keep_rejected, release
from ml_platform.lib.store import ObjectChangedError, ObjectStore, sha256_file

#: Errors raised by the asset code (an unreachable object store and the like) are retried after
#: 10, 30 and 70 s, so an S3 outage of up to about 110 s costs no run; versions finished before
#: the error are in the ledger and are not ingested again by the retry.
TRANSIENT_RETRIES = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL)

#: Files at most this large share the batch's worker threads (one DuckDB thread each); larger
#: ones are ingested one at a time with the whole budget.
SMALL_FILE_BYTES = 16 << 20
#: Versions of a batch in flight at once: a small file's cost is mostly waiting on the store
#: (ledger, download, parts, ledger again), so more threads than cores keep both cores busy.
WORKERS = 8

_TYPE_NAMES = {"TIMESTAMP WITH TIME ZONE": "timestamp[UTC]", "VARCHAR": "string"}


class IngestConfig(dg.Config):
    """Which object versions a run ingests. All empty: every version that landed on the
    partition's day (its ``LastModified`` UTC date)."""

    versions: list[str] = []  # "<key below the prefix>@<etag>"
    files: list[str] = []  # keys below the prefix: their current version
    reingest: bool = False  # also versions the ledger records as done (replaces their outcome)


@dataclass
class Outcome:
    """What became of one object version in this run."""

    version: str
    object: str
    outcome: str  # ingested | quarantined | already_ingested | already_quarantined | gone
    rows: int = 0
    dates: list[str] = field(default_factory=list)
    rows_by_date: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    message: str = ""
    parts: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)


class _Batch:
    """What every version of one run shares: the store, the contract, the run's identity."""

    def __init__(self, context, dataset: str, store: ObjectStore, ingest: IngestResource):
        self.context, self.dataset, self.store, self.ingest = context, dataset, store, ingest
        self.contract: Contract = ingest.contract(dataset)
        self.run_id = context.run.run_id
        self.spill = Path(tempfile.mkdtemp(prefix="ingest-spill-"))
        self.large = threading.Lock()  # one large file at a time, with the whole budget
        self._local = threading.local()
        self._connections: list = []

    def connection(self):
        """One DuckDB connection per worker thread, reused for every small file it ingests."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = batch_connection(self.spill / threading.current_thread().name)
            self._connections.append(con)
        return con

    def close(self) -> None:
        for con in self._connections:
            con.close()
        shutil.rmtree(self.spill, ignore_errors=True)


def batch_versions(context, dataset: str, store: ObjectStore, config: IngestConfig) -> list[str]:
    """The run's versions: named in the config, or every version landed on the partition day."""
    prefix = paths.LANDING_PREFIXES[dataset]
    if config.versions or config.files:
        named = [paths.partition_key(f, _current_etag(store, prefix + f)) for f in config.files]
        return list(dict.fromkeys([*config.versions, *named]))
    day = context.partition_key
    return [
        paths.partition_key(o.key.removeprefix(prefix), o.etag or store.etag(o.key))
        for o in store.list(prefix)
        if not o.key.endswith("/") and paths.landing_day(o.last_modified) == day
    ]


def _current_etag(store: ObjectStore, key: str) -> str:
    try:
        return store.etag(key)
    except FileNotFoundError:
        raise dg.Failure(
            f"{store.uri(key)}: no such object to ingest", allow_retries=False
        ) from None


def ingest_batch(
    context: dg.AssetExecutionContext,
    dataset: str,
    lake: LakeResource,
    ingest: IngestResource,
    config: IngestConfig,
) -> dg.MaterializeResult:
    """Ingest every version of the batch and report each one's outcome."""
    started = time.perf_counter()
    store = lake.store()
    versions = batch_versions(context, dataset, store, config)
    batch = _Batch(context, dataset, store, ingest)
    try:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="ingest") as pool:
            outcomes = list(pool.map(lambda v: _handle(batch, v, config.reingest), versions))
    finally:
        batch.close()
    # One event log entry per rejected file; the others are in the run's file_outcomes table
    # (an entry per file would cost a batch of 500 small files 500 event writes).
    for o in outcomes:
        if o.outcome == "quarantined":
            context.log.error(f"{o.object}: {o.outcome} {o.message}".rstrip())
    context.log.info(f"{len(outcomes)} files: {_count_outcomes(outcomes)}")
    return _batch_result(outcomes, time.perf_counter() - started)


def _count_outcomes(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    return counts


def _handle(batch: _Batch, version: str, reingest: bool) -> Outcome:
    """One version: skipped when the ledger has it, else ingested or quarantined."""
    store, dataset = batch.store, batch.dataset
    relative_key, etag = paths.split_partition_key(version)
    key = paths.landing_object(dataset, relative_key)
    previous = _ledger_entry(store, dataset, version)
    if previous and not reingest:
        return _already(store.uri(key), previous)
    try:
        outcome = _ingest_version(batch, version, key, etag)
    except ObjectChangedError:
        return Outcome(version, store.uri(key), "gone",
                       message="overwritten since it landed; the new version is its own")  # fmt: skip
    except _Gone:
        return Outcome(version, store.uri(key), "gone", message="no longer exists")
    _replace_previous(store, dataset, version, previous, outcome)
    if not _write_ledger(batch, version, outcome, replace=previous is not None):
        # Another run of the same version got there first (two daemons' ticks can both submit a
        # batch): it decided, with the same bytes, so this run reports its decision.
        return _already(store.uri(key), _ledger_entry(store, dataset, version))
    return outcome


def _already(uri: str, previous: dict) -> Outcome:
    """What a run reports for a version another run (or attempt) has already decided."""
    return Outcome(
        previous["version"], uri, f"already_{previous['outcome']}", rows=previous["rows"],
        dates=previous["dates"], rows_by_date=previous["rows_by_date"],
        reason=previous.get("reason", ""), message=f"by run {previous['run_id']}",
    )  # fmt: skip


class _Gone(Exception):
    """The landed object was deleted before its download."""


def _ingest_version(batch: _Batch, version: str, key: str, etag: str) -> Outcome:
    """Read the exact version, cast it, and publish its parts or quarantine it; raises
    ObjectChangedError when the object was overwritten since it landed (its new version has its
    own batch)."""
    store, dataset = batch.store, batch.dataset
    with contextlib.ExitStack() as scope:
        try:
            local = scope.enter_context(store.local_copy(key, if_match=etag))
        except FileNotFoundError:
            raise _Gone(key) from None
        out = scope.enter_context(tempfile.TemporaryDirectory(prefix="bronze-"))
        sha256 = sha256_file(local)
        size = local.stat().st_size
        try:
            report = _read_and_cast(batch, local, Path(out), size)
        except RejectedFileError as rejected:
            return _quarantine(batch, version, key, local, rejected, etag, sha256, size)
        parts = _publish(store, dataset, paths.file_id(version), report)
    return Outcome(
        version, store.uri(key), "ingested", rows=report.rows_out, dates=report.dates,
        rows_by_date=report.rows_by_date, parts=parts, sensors=report.sensors,
        report=_report_summary(report, etag, sha256, size),
    )  # fmt: skip


def _read_and_cast(batch: _Batch, local: Path, out: Path, size: int) -> IngestReport:
    """Small files on the worker's reused connection, one DuckDB thread; a large file alone,
    with every thread and the whole memory budget."""
    budget = batch.ingest.memory_limit
    if size <= SMALL_FILE_BYTES:
        return ingest_file(
            local, batch.contract, out, memory_limit=budget, threads=1, con=batch.connection()
        )
    with batch.large:
        return ingest_file(
            local, batch.contract, out, memory_limit=budget, threads=batch.ingest.threads or None
        )


def _report_summary(report: IngestReport, etag: str, sha256: str, size: int) -> dict:
    return {
        "etag": etag,
        "sha256": sha256,
        "bytes": size,
        "format": report.source_format,
        "rows_in": report.rows_in,
        "duplicate_rows_dropped": report.duplicate_rows,
        "rejected_rows": report.rejected_rows,
        "out_of_range_values": report.out_of_range,
        "extra_columns": report.extra_columns,
        "renamed_columns": report.renamed,
        "first_timestamp": report.timestamp_min,
        "last_timestamp": report.timestamp_max,
        "schema": report.schema,
        "preview": report.preview,
    }


def _quarantine(
    batch: _Batch,
    version: str,
    key: str,
    local: Path,
    rejected: RejectedFileError,
    etag: str,
    sha256: str,
    size: int,
) -> Outcome:
    """Quarantine the version with its reason (``lib/quarantine.py``)."""
    store = batch.store
    record = {
        "object": store.uri(key),
        "partition_key": version,
        "etag": etag,
        "sha256": sha256,
        "bytes": size,
        "reason": rejected.reason,
        "message": rejected.message,
        "details": rejected.details,
        "contract": batch.contract.source,
        "run_id": batch.run_id,
        "rejected_at": datetime.now(UTC).isoformat(),
    }
    copy_uri = keep_rejected(store, batch.dataset, version, local, record)
    return Outcome(version, store.uri(key), "quarantined", reason=rejected.reason,
                   message=f"{rejected.message} (quarantined at {copy_uri})",
                   report={"etag": etag, "sha256": sha256, "bytes": size})  # fmt: skip


def _publish(store: ObjectStore, dataset: str, file_id: str, report: IngestReport) -> list[str]:
    """Move the day parts into bronze: all of them or none (a half-published file would leak
    into the next rebuild of its days)."""
    published: list[str] = []
    try:
        for day, part in report.parts.items():
            part_key = paths.bronze_part(dataset, day, file_id)
            store.put_file(part, part_key, move=True)
            published.append(part_key)
    except BaseException:
        for part_key in published:
            store.delete(part_key)
        raise
    return published


def _ledger_entry(store: ObjectStore, dataset: str, version: str) -> dict | None:
    try:
        data = store.read_bytes(paths.ledger_object(dataset, paths.file_id(version)))
    except FileNotFoundError:
        return None
    return json.loads(data)


def _write_ledger(batch: _Batch, version: str, outcome: Outcome, replace: bool) -> bool:
    """The version's ledger entry: created only if it has none (False when another run's
    came first), or with ``replace`` (a re-ingest) written over the former one."""
    entry = {
        "version": version,
        "object": outcome.object,
        "outcome": outcome.outcome,
        "rows": outcome.rows,
        "dates": outcome.dates,
        "rows_by_date": outcome.rows_by_date,
        "parts": outcome.parts,
        "reason": outcome.reason,
        # What the file held (rejected and duplicate rows, drifted columns): the run's metadata
        # shows it for the first file of a batch only.
        "report": {k: v for k, v in outcome.report.items() if k not in ("schema", "preview")},
        "run_id": batch.run_id,
        "at": datetime.now(UTC).isoformat(),
    }
    data, key = (
        json.dumps(entry).encode(),
        paths.ledger_object(batch.dataset, paths.file_id(version)),
    )
    if replace:
        batch.store.put_bytes(data, key)
        return True
    return batch.store.create_bytes(data, key)


def _replace_previous(
    store: ObjectStore, dataset: str, version: str, previous: dict | None, outcome: Outcome
) -> None:
    """A re-ingested version keeps exactly one outcome: bronze parts or a quarantine record.
    The landed original stays, so nothing is lost by removing the former outcome."""
    if not previous:
        return
    if outcome.outcome == "ingested" and previous["outcome"] == "quarantined":
        release(store, dataset, version)
    stale = set(previous.get("parts", [])) - set(outcome.parts)
    for part in sorted(stale):
        store.delete(part)


def _batch_result(outcomes: list[Outcome], seconds: float) -> dg.MaterializeResult:
    """The run's metadata: every file and its outcome, the days touched, the totals."""
    done = [o for o in outcomes if o.outcome in ("ingested", "already_ingested")]
    rows_by_date: dict[str, int] = {}
    for o in done:
        for day, n in o.rows_by_date.items():
            rows_by_date[day] = rows_by_date.get(day, 0) + n
    counts = _count_outcomes(outcomes)
    quarantined = [o for o in outcomes if o.outcome == "quarantined"]
    first = next((o for o in outcomes if o.outcome == "ingested"), None)
    metadata = {
        "dagster/row_count": sum(o.rows for o in outcomes if o.outcome == "ingested"),
        "files": len(outcomes),
        "outcomes": dg.MetadataValue.json(counts),
        "file_outcomes": _outcome_table(outcomes),
        # Read by the lakehouse automation: which day partitions this batch's files touch
        # (also those of versions a failed attempt of this batch had already ingested).
        "dates": dg.MetadataValue.json(sorted(rows_by_date)),
        "rows_by_date": table(
            [{"date": day, "rows": rows_by_date[day]} for day in sorted(rows_by_date)],
            columns=("date", "rows"),
        ),
        "bronze_parts": sum(len(o.parts) for o in outcomes),
        "seconds": round(seconds, 3),
    }
    if first is not None:
        metadata |= _first_file_metadata(first)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="landed_files_pass_their_contract",
                passed=not quarantined,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "quarantined": table(
                        [
                            {"object": o.object, "reason": o.reason, "message": o.message}
                            for o in quarantined[:100]
                        ],
                        columns=("object", "reason", "message"),
                    ),
                    "quarantined_count": len(quarantined),
                },
            )
        ],
    )


def _outcome_table(outcomes: list[Outcome]) -> dg.MetadataValue:
    shown = outcomes[:1000]
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "version": o.version,
                    "object": o.object,
                    "outcome": o.outcome,
                    "rows": o.rows,
                    "days": ",".join(o.dates),
                    "reason": o.reason or o.message[:200],
                }
            )
            for o in shown
        ],  # fmt: skip
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("version", "string"),
                dg.TableColumn("object", "string"),
                dg.TableColumn("outcome", "string"),
                dg.TableColumn("rows", "int"),
                dg.TableColumn("days", "string"),
                dg.TableColumn("reason", "string"),
            ]
        ),
    )


def _first_file_metadata(first: Outcome) -> dict:
    """Schema and preview of the first file ingested: what a batch's rows look like."""
    report = first.report
    return {
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name, _TYPE_NAMES.get(t, t.lower())) for name, t in report["schema"]
            ]
        ),
        "preview": table(report["preview"]),
        "first_file": dg.MetadataValue.json(
            {k: v for k, v in report.items() if k not in ("schema", "preview")}
        ),  # fmt: skip
    }


_RAW_ASSET = {
    "partitions_def": landing_days,
    "group_name": "ingest",
    "kinds": {"s3", "duckdb", "parquet"},
    "owners": ["team:data-platform"],
    "retry_policy": TRANSIENT_RETRIES,
}


def _accepted_check(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "landed_files_pass_their_contract",
        asset=asset,
        description="Warns when a file of the batch was rejected and quarantined (with reasons).",
    )


@dg.asset(**_RAW_ASSET, check_specs=[_accepted_check("raw_readings")])
def raw_readings(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    lake: LakeResource,
    ingest: IngestResource,
) -> dg.MaterializeResult:
    """Readings files landed on one day, typed to the contract, split into bronze parts by UTC
    day of their rows; each run ingests one batch of them."""
    return ingest_batch(context, "readings", lake, ingest, config)


@dg.asset(**_RAW_ASSET, check_specs=[_accepted_check("raw_labels")])
def raw_labels(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    lake: LakeResource,
    ingest: IngestResource,
) -> dg.MaterializeResult:
    """Labels files (failure events) landed on one day, typed and split into bronze parts by
    UTC day; each run ingests one batch of them."""
    return ingest_batch(context, "labels", lake, ingest, config)


#: Run tags that the instance's run queue limits (dagster.yaml): one ingest run per dataset at a
#: time, so two sensor batches never handle the same version at once.
def ingest_tags(dataset: str) -> dict[str, str]:
    return {"ml_platform/kind": "ingest", "ml_platform/ingest": dataset}


ingest_readings_job = dg.define_asset_job(
    "ingest_readings_job", selection=[raw_readings], tags=ingest_tags("readings")
)
ingest_labels_job = dg.define_asset_job(
    "ingest_labels_job", selection=[raw_labels], tags=ingest_tags("labels")
)
