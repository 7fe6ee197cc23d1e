"""``raw_readings`` and ``raw_labels``: one partition per landed object version."""

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from ml_platform.defs.partitions import label_files, reading_files
from ml_platform.defs.resources import IngestResource, LakeResource
from ml_platform.lib import paths
from ml_platform.lib.ingest import IngestReport, RejectedFileError, ingest_file
from ml_platform.lib.store import ObjectChangedError, ObjectStore, content_etag, sha256_file
from ml_platform.lib.tables import markdown_table

#: Errors raised by the asset code (an unreachable object store and the like) are retried after
#: 10, 30 and 70 s, so an S3 outage of up to about 110 s costs no run; rejected files raise
#: Failure(allow_retries=False).
TRANSIENT_RETRIES = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL)

_TYPE_NAMES = {"TIMESTAMP WITH TIME ZONE": "timestamp[UTC]", "VARCHAR": "string"}


def quarantine(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    dataset: str,
    relative_key: str,
    local: Path,
    record: dict,
) -> str:
    """Keep the rejected bytes beside an ``.error.json`` record; the original stays untouched.

    The copy is made from the file that was read, so it is exactly the rejected version even if
    the landed key has been overwritten since.
    """
    file_id = paths.file_id(context.partition_key)
    copy_key = paths.quarantine_object(dataset, file_id, relative_key)
    store.put_file(local, copy_key)
    record = {**record, "quarantined_copy": store.uri(copy_key)}
    store.put_bytes(
        json.dumps(record, indent=2, default=str).encode(),
        paths.quarantine_record(dataset, file_id, relative_key),
    )
    return store.uri(copy_key)


def ingest_landed_object(
    context: dg.AssetExecutionContext, dataset: str, lake: LakeResource, ingest: IngestResource
) -> dg.MaterializeResult:
    """Validate one landed object against its contract and publish its bronze parts by day.

    Rejected files fail the run with the reason and are quarantined; bronze is only written after
    the whole file was read and typed, all days or none.
    """
    started = time.perf_counter()
    store = lake.store()
    contract = ingest.contract(dataset)
    relative_key, etag = paths.split_partition_key(context.partition_key)
    key = paths.landing_object(dataset, relative_key)
    file_id = paths.file_id(context.partition_key)

    def overwritten(current: str) -> dg.Failure:
        return dg.Failure(
            f"{store.uri(key)} was overwritten since it landed (ETag {etag} -> {current}); "
            "the new version has its own partition",
            allow_retries=False,
        )

    if not store.exists(key):
        raise dg.Failure(
            f"{store.uri(key)} no longer exists: nothing to ingest", allow_retries=False
        )
    if not store.etag_is_content_hash and (current := store.etag(key)) != etag:
        raise overwritten(current)
    # S3: the download asks for exactly this ETag. Local: the content hash is compared below.
    if_match = None if store.etag_is_content_hash else etag
    try:
        with (
            store.local_copy(key, if_match) as local,
            tempfile.TemporaryDirectory(prefix="bronze-") as out,
            ThreadPoolExecutor(1) as hasher,
        ):
            size, sha256_future = local.stat().st_size, hasher.submit(sha256_file, local)
            try:
                report = ingest_file(
                    local,
                    contract,
                    Path(out),
                    memory_limit=ingest.memory_limit,
                    threads=ingest.threads or None,
                )
            except RejectedFileError as rejected:
                sha256 = sha256_future.result()
                if store.etag_is_content_hash and content_etag(sha256) != etag:
                    raise overwritten(content_etag(sha256)) from rejected
                record = {
                    "object": store.uri(key),
                    "partition_key": context.partition_key,
                    "etag": etag,
                    "sha256": sha256,
                    "bytes": size,
                    "reason": rejected.reason,
                    "message": rejected.message,
                    "details": rejected.details,
                    "contract": contract.source,
                    "run_id": context.run.run_id,
                    "rejected_at": datetime.now(UTC).isoformat(),
                }
                copy_uri = quarantine(context, store, dataset, relative_key, local, record)
                context.log.error(f"rejected {store.uri(key)}: {rejected.message}")
                raise dg.Failure(
                    description=f"{store.uri(key)} rejected ({rejected.reason}): "
                    f"{rejected.message}. Quarantined at {copy_uri}",
                    metadata={"reason": rejected.reason, "quarantined": copy_uri, "sha256": sha256},
                    allow_retries=False,
                ) from rejected
            sha256 = sha256_future.result()
            if store.etag_is_content_hash and content_etag(sha256) != etag:
                raise overwritten(content_etag(sha256))
            written = _publish(store, dataset, file_id, report)
    except ObjectChangedError as exc:
        raise overwritten("a newer version") from exc

    return dg.MaterializeResult(
        metadata=_metadata(
            report, store.uri(key), etag, sha256, size, written, time.perf_counter() - started
        )
    )


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
    return [store.uri(k) for k in published]


def _metadata(
    report: IngestReport,
    uri: str,
    etag: str,
    sha256: str,
    size: int,
    parts: list[str],
    seconds: float,
) -> dict:
    return {
        "dagster/row_count": report.rows_out,
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name, _TYPE_NAMES.get(t, t.lower())) for name, t in report.schema
            ]
        ),
        "object": uri,
        "etag": etag,
        "sha256": sha256,
        "bytes": size,
        "format": report.source_format,
        "rows_in": report.rows_in,
        "rows_out": report.rows_out,
        "duplicate_rows_dropped": report.duplicate_rows,
        "rejected_rows": dg.MetadataValue.json(report.rejected_rows),
        "rejected_rows_total": sum(report.rejected_rows.values()),
        "out_of_range_values": dg.MetadataValue.json(report.out_of_range),
        "extra_columns": dg.MetadataValue.json(report.extra_columns),
        "renamed_columns": dg.MetadataValue.json(report.renamed),
        # Read by the lakehouse automation: which day partitions this file touched.
        "dates": dg.MetadataValue.json(report.dates),
        "rows_by_date": dg.MetadataValue.json(report.rows_by_date),
        "first_timestamp": report.timestamp_min or "",
        "last_timestamp": report.timestamp_max or "",
        "sensor_count": report.sensor_count,
        "sensors": dg.MetadataValue.json(report.sensors),
        "bronze_parts": dg.MetadataValue.json(parts),
        "preview": dg.MetadataValue.md(markdown_table(report.preview)),
        "seconds": round(seconds, 3),
    }


@dg.asset(
    partitions_def=reading_files,
    group_name="ingest",
    kinds={"s3", "duckdb", "parquet"},
    owners=["team:data-platform"],
    retry_policy=TRANSIENT_RETRIES,
)
def raw_readings(
    context: dg.AssetExecutionContext, lake: LakeResource, ingest: IngestResource
) -> dg.MaterializeResult:
    """One landed readings file, typed to the contract and split into bronze parts by UTC day."""
    return ingest_landed_object(context, "readings", lake, ingest)


@dg.asset(
    partitions_def=label_files,
    group_name="ingest",
    kinds={"s3", "duckdb", "parquet"},
    owners=["team:data-platform"],
    retry_policy=TRANSIENT_RETRIES,
)
def raw_labels(
    context: dg.AssetExecutionContext, lake: LakeResource, ingest: IngestResource
) -> dg.MaterializeResult:
    """One landed labels file (failure events), typed and split into bronze parts by UTC day."""
    return ingest_landed_object(context, "labels", lake, ingest)


#: Run tag that the instance's run queue limits (dagster.yaml: ingest runs two at a time).
INGEST_TAGS = {"ml_platform/kind": "ingest"}
ingest_readings_job = dg.define_asset_job(
    "ingest_readings_job", selection=[raw_readings], tags=INGEST_TAGS
)
ingest_labels_job = dg.define_asset_job(
    "ingest_labels_job", selection=[raw_labels], tags=INGEST_TAGS
)
