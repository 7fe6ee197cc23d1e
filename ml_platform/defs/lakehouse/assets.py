"""``sensor_chunks[day]`` and ``daily_aggregates[day]``: ranges of days run in one run.

A range is built in batches of days (:func:`lakehouse.batch_days`), each batch in one pass of
set-based queries on the asset's one DuckDB connection, so that its cost follows its rows: a
year of small days costs little more than its data. Listings, downloads and uploads of a range
go out together, :data:`IO_THREADS` at a time.
"""

import json
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from ml_platform.defs.ingest.assets import TRANSIENT_RETRIES, raw_readings
from ml_platform.defs.metadata import object_uri, row_counts, table
from ml_platform.defs.partitions import daily
from ml_platform.defs.resources import IngestResource, LakeResource
from ml_platform.defs.runs import latest_runs_of
from ml_platform.lib import paths
from ml_platform.lib.lakehouse import (
    ChunkMerger,
    ChunkReport,
    DailyAggregator,
    DayAggregates,
    batch_days,
    oldest_first,
    parts_added_since,
    parts_fingerprint,
    previous_days,
)
from ml_platform.lib.store import ObjectInfo, ObjectStore

#: Runs of the lakehouse are serialised by this tag (dagster.yaml: tag_concurrency_limits), so two
#: files touching the same day cannot race: the later run always sees both bronze parts.
LAKEHOUSE_TAGS = {"ml_platform/lakehouse": "serial"}

#: Listings, downloads and uploads in flight at once: each waits on the store, not on the CPU.
IO_THREADS = 8


#: What both lakehouse assets share: daily partitions whose ranges run as one run.
_DAILY_LAKEHOUSE_ASSET = {
    "partitions_def": daily,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "group_name": "lakehouse",
    "kinds": {"duckdb", "parquet", "s3"},
    "owners": ["team:data-platform"],
    "retry_policy": TRANSIENT_RETRIES,
}


def _invariant(check: str, per_day: dict, failing: list[str]) -> dg.AssetCheckResult:
    """A cheap invariant checked over every day of the run, reported with the materialization."""
    return dg.AssetCheckResult(
        check_name=check,
        passed=not failing,
        metadata={"days_checked": len(per_day), "days_failing": dg.MetadataValue.json(failing)},
    )


def _list_each(store: ObjectStore, prefixes: list[str]) -> list[list[ObjectInfo]]:
    """The objects under each of ``prefixes``, in their order."""
    with ThreadPoolExecutor(IO_THREADS) as pool:
        return list(pool.map(lambda prefix: list(store.list(prefix)), prefixes))


def _fetch_by_day(store: ObjectStore, keys: dict[str, list[str]], into: Path) -> dict:
    """Every day's objects in one fetch (parallel downloads): ``{day: [local file]}``."""
    files = iter(store.fetch([k for day_keys in keys.values() for k in day_keys], into))
    return {day: [next(files) for _ in day_keys] for day, day_keys in keys.items()}


def _publish(store: ObjectStore, files: dict[str, Path]) -> None:
    """Move the local files in to their keys (``{key: file}``)."""
    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(lambda item: store.put_file(item[1], item[0], move=True), files.items()))


def _delete_all(store: ObjectStore, keys: Iterable[str]) -> None:
    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(store.delete, keys))


@dg.asset(
    deps=[dg.AssetDep(raw_readings, partition_mapping=dg.AllPartitionMapping())],
    **_DAILY_LAKEHOUSE_ASSET,
    check_specs=[
        dg.AssetCheckSpec(
            "sensor_chunks_conserve_rows",
            asset="sensor_chunks",
            description="The objects written hold every de-duplicated row, one object per sensor.",
        )
    ],
)
def sensor_chunks(context: dg.AssetExecutionContext, lake: LakeResource, ingest: IngestResource):
    """One day's readings: every bronze part merged, de-duplicated, one sorted object per sensor.

    A day built before is built again from its chunks and the parts added since, when every
    part that build read is still there unchanged; otherwise from all of its parts.
    """
    store = lake.store()
    started = time.perf_counter()
    days = list(context.partition_keys)
    bronze = _list_each(store, [paths.bronze_day_prefix("readings", day) for day in days])
    silver = dict(
        zip(days, _list_each(store, [paths.chunks_day_prefix(d) for d in days]), strict=True)
    )
    parts = {day: oldest_first(objects) for day, objects in zip(days, bronze, strict=True)}
    reads, reused = _what_to_read(context, store, parts, silver)
    reports = _build_chunks(store, reads, ingest.memory_limit)
    written = {
        day: {paths.chunk_object(day, name) for name in r.files} for day, r in reports.items()
    }
    # Sensors that vanished from a re-run day are removed: the day equals its bronze parts.
    stale = {day: [o.key for o in silver[day] if o.key not in written[day]] for day in days}
    _delete_all(store, [key for keys in stale.values() for key in keys])
    per_day, details, problems, preview = _chunk_summary(parts, reads, reused, reports, stale)
    inputs = {  # what the checks judge the day's objects against: counted on what was read
        day: {"bronze_parts": len(parts[day]), "parts": parts_fingerprint(parts[day]),
              "chunks_reused": reused[day], "input_keys": r.input_keys,
              "objects": sorted(written[day])}
        for day, r in reports.items()
    }  # fmt: skip
    inputs_uri = record_inputs(context, store, "sensor_chunks", inputs)
    context.log.info(f"{len(per_day)} days built, {len(problems)} failing: {problems[:10]}")
    return dg.MaterializeResult(
        metadata={
            **_range_metadata(per_day, details, inputs_uri),
            "preview": table(preview),
            **object_uri(store, paths.SILVER_CHUNKS),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[_invariant("sensor_chunks_conserve_rows", per_day, problems)],
    )


def _what_to_read(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    parts: dict[str, list[ObjectInfo]],
    silver: dict[str, list[ObjectInfo]],
) -> tuple[dict[str, list[ObjectInfo]], dict[str, int]]:
    """Each day's inputs, oldest first, and how many of them are the day's previous chunks:
    those chunks and the parts added since they were built, or every part of the day."""
    previous = _previous_builds(context, store, list(parts))
    reads, reused = {}, {}
    for day, day_parts in parts.items():
        record, written = previous.get(day, ({}, None))
        base = _reusable_chunks(record, written, silver[day])
        added = parts_added_since(day_parts, record.get("parts")) if base else None
        if added:
            reads[day], reused[day] = [*base, *added], len(base)
        else:
            reads[day], reused[day] = day_parts, 0
    return reads, reused


def _previous_builds(
    context: dg.AssetExecutionContext, store: ObjectStore, days: list[str]
) -> dict[str, tuple[dict, datetime]]:
    """Each day's input record from the run that last built it, with when it was written."""
    runs = latest_runs_of(context.instance, context.asset_key, days)
    records: dict[str, tuple[dict, datetime]] = {}
    for run_id in set(runs.values()):
        key = paths.run_inputs_object("sensor_chunks", run_id)
        try:
            records[run_id] = (
                json.loads(store.read_bytes(key))["days"],
                store.head(key).last_modified,
            )
        except FileNotFoundError:
            continue
    return {
        day: (records[run][0][day], records[run][1])
        for day, run in runs.items()
        if run in records and day in records[run][0]
    }


def _reusable_chunks(
    record: dict, written: datetime | None, silver: list[ObjectInfo]
) -> list[ObjectInfo] | None:
    """The day's chunk objects, if they are exactly those the recorded build wrote: the same
    keys, none written after the record (as a later build that failed before its own would)."""
    if not silver or written is None or {o.key for o in silver} != set(record.get("objects", [])):
        return None
    if any(o.last_modified > written for o in silver):
        return None
    return sorted(silver, key=lambda o: o.key)


def _build_chunks(
    store: ObjectStore, parts: dict[str, list[ObjectInfo]], memory_limit: str
) -> dict[str, ChunkReport]:
    """Every day's chunks built from its parts and published, one batch of days at a time (the
    local copies of one batch at most)."""
    reports: dict[str, ChunkReport] = {}
    sizes = {day: sum(o.size for o in objects) for day, objects in parts.items()}
    with ChunkMerger(memory_limit) as merger:
        for batch in batch_days(sizes):
            with tempfile.TemporaryDirectory(prefix="chunks-") as tmp:
                keys = {day: [o.key for o in parts[day]] for day in batch}
                built = merger.merge(_fetch_by_day(store, keys, Path(tmp, "in")), Path(tmp, "out"))
                _publish(store, {
                    paths.chunk_object(day, name): file
                    for day, report in built.items() for name, file in report.files.items()
                })  # fmt: skip
            reports |= built
    return reports


def _chunk_summary(
    parts: dict[str, list[ObjectInfo]],
    reads: dict[str, list[ObjectInfo]],
    reused: dict[str, int],
    reports: dict[str, ChunkReport],
    stale: dict,
) -> tuple[dict, dict, list[str], list[dict]]:
    """Per-day figures, details, days failing the conservation invariant, and a preview."""
    per_day, rows_per_sensor, gaps, problems = {}, {}, {}, []
    preview: list[dict] = []
    for day, report in reports.items():
        # What was written (file footers) must be what was computed, one object per sensor.
        if report.rows_written != report.rows_out or len(report.files) != len(
            report.rows_per_sensor
        ):
            problems.append(day)
        per_day[day] = {
            "bronze_parts": len(parts[day]),
            "bronze_parts_read": len(reads[day]) - reused[day],
            "chunks_reused": reused[day],
            "rows_in": report.rows_in,
            "rows": report.rows_out,
            "duplicates_removed": report.duplicates_removed,
            "sensors": len(report.rows_per_sensor),
            "stale_sensors_removed": len(stale[day]),
        }
        rows_per_sensor[day] = report.rows_per_sensor
        gaps[day] = {s: g for s, g in report.gaps.items() if g["gaps"]}
        preview = report.preview or preview
    return per_day, {"rows_per_sensor": rows_per_sensor, "gaps": gaps}, problems, preview


#: Ranges up to this many days carry their per-day details in the metadata. Dagster copies a
#: range run's metadata to every partition's event, so longer ranges show totals and link to
#: the input record, which holds the details of every day once.
DETAILED_DAYS = 7


def _range_metadata(per_day: dict, details: dict, inputs_uri: str) -> dict:
    totals = {k: sum(d.get(k, 0) for d in per_day.values()) for k in next(iter(per_day.values()))}
    metadata = {
        **row_counts({day: d["rows"] for day, d in per_day.items()}),
        "days_built": len(per_day),
        "totals": dg.MetadataValue.json(totals),
        "inputs": dg.MetadataValue.path(inputs_uri),
    }
    if len(per_day) <= DETAILED_DAYS:
        metadata["days"] = table([{"day": day, **figures} for day, figures in per_day.items()])
        metadata |= {k: dg.MetadataValue.json(v) for k, v in details.items()}
    return metadata


def record_inputs(
    context: dg.AssetExecutionContext, store: ObjectStore, asset: str, days: dict[str, dict]
) -> str:
    """Write what this run read for each day (see :func:`paths.run_inputs_object`)."""
    key = paths.run_inputs_object(asset, context.run.run_id)
    store.put_bytes(json.dumps({"run_id": context.run.run_id, "days": days}).encode(), key)
    return store.uri(key)


@dg.asset(
    deps=[
        # A day's aggregates depend on its own chunks and, through the trailing-week features, on
        # the seven days before it; missing earlier days are tolerated. (Mapped on sensor_chunks
        # rather than on daily_aggregates itself: a self-dependency makes the backfill daemon
        # split a range into one run per asset.)
        dg.AssetDep(
            sensor_chunks,
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-7, end_offset=0, allow_nonexistent_upstream_partitions=True
            ),
        ),
    ],
    **_DAILY_LAKEHOUSE_ASSET,
    check_specs=[
        dg.AssetCheckSpec(
            "daily_aggregates_one_row_per_sensor_object",
            asset="daily_aggregates",
            description="Each day has as many aggregate rows as it has sensor chunk objects.",
        )
    ],
    # The newest day's aggregates are expected by 06:00 UTC the next morning.
    freshness_policy=dg.FreshnessPolicy.cron(
        deadline_cron="0 6 * * *", lower_bound_delta=timedelta(hours=24)
    ),
)
def daily_aggregates(context: dg.AssetExecutionContext, lake: LakeResource, ingest: IngestResource):
    """One row per sensor and day: daily statistics per measurement and trailing-week features.

    ``event_timestamp`` (end of the UTC day) and ``created_timestamp`` (when the newest input was
    ingested) make it a ready Feast source.
    """
    store = lake.store()
    measurements = [c.name for c in ingest.contract("readings").columns]
    started = time.perf_counter()
    days = list(context.partition_keys)
    chunks, history, created = _aggregate_inputs(store, days)
    reports, preview = _build_aggregates(store, chunks, history, created, measurements,
                                         ingest.memory_limit)  # fmt: skip
    # Days without chunks have no aggregates: an earlier object of the day is removed.
    _delete_all(store, [paths.aggregates_object(day) for day, r in reports.items() if not r.file])
    per_day = {
        day: {"rows": r.rows, "sensors": len(chunks[day]),
              "history_days": r.history_days if r.file else 0}
        for day, r in reports.items()
    }  # fmt: skip
    inputs = {  # what the check judges the day's rows against: counted on the chunks read
        day: {"chunk_objects": len(chunks[day]), "rows_per_sensor": r.rows_per_sensor}
        for day, r in reports.items()
    }
    mismatched = [d for d, v in per_day.items() if v["rows"] != v.get("sensors", 0)]
    inputs_uri = record_inputs(context, store, "daily_aggregates", inputs)
    context.log.info(f"{len(per_day)} days aggregated, {len(mismatched)} mismatched")
    return dg.MaterializeResult(
        metadata={
            **_range_metadata(per_day, {}, inputs_uri),
            "measurements": dg.MetadataValue.json(measurements),
            "preview": table(preview, columns=10),
            **object_uri(store, paths.GOLD_AGGREGATES),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
            _invariant("daily_aggregates_one_row_per_sensor_object", per_day, mismatched)
        ],
    )


def _aggregate_inputs(
    store: ObjectStore, days: list[str]
) -> tuple[dict[str, list[ObjectInfo]], list[str], dict[str, datetime]]:
    """Each day's chunk objects; the days before the range (up to seven before each day) that
    have aggregates; and each day's ``created_timestamp``, the newest of its bronze parts."""
    earlier = sorted({d for day in days for d in previous_days(day)} - set(days))
    listed = _list_each(
        store,
        [paths.chunks_day_prefix(d) for d in days]
        + [paths.aggregates_day_prefix(d) for d in earlier],
    )
    chunks = dict(zip(days, listed[: len(days)], strict=True))
    history = [
        day for day, objects in zip(earlier, listed[len(days) :], strict=True)
        if any(o.key == paths.aggregates_object(day) for o in objects)
    ]  # fmt: skip
    with_chunks = [day for day in days if chunks[day]]
    bronze = _list_each(store, [paths.bronze_day_prefix("readings", d) for d in with_chunks])
    created = {}
    for day, parts in zip(with_chunks, bronze, strict=True):
        if not parts:
            raise ValueError(f"{day} has sensor chunks but no bronze parts: rebuild its chunks")
        created[day] = max(o.last_modified for o in parts)
    return chunks, history, created


def _build_aggregates(
    store: ObjectStore,
    chunks: dict[str, list[ObjectInfo]],
    history: list[str],
    created: dict[str, datetime],
    measurements: list[str],
    memory_limit: str,
) -> tuple[dict[str, DayAggregates], list[dict]]:
    """Every day's aggregates built and published, one batch of days at a time in day order, and
    a preview of the first day's rows."""
    reports: dict[str, DayAggregates] = {}
    preview: list[dict] = []
    sizes = {day: sum(o.size for o in objects) for day, objects in chunks.items()}
    with tempfile.TemporaryDirectory(prefix="aggregates-") as tmp:
        keys = {day: [paths.aggregates_object(day)] for day in history}
        earlier = {day: files[0] for day, files in _fetch_by_day(store, keys, Path(tmp)).items()}
        aggregator = DailyAggregator(measurements, earlier, memory_limit)
    with aggregator:
        for batch in batch_days(sizes):
            with tempfile.TemporaryDirectory(prefix="aggregates-") as tmp:
                keys = {day: [o.key for o in chunks[day]] for day in batch}
                local = _fetch_by_day(store, keys, Path(tmp, "in"))
                built = aggregator.aggregate(local, created, Path(tmp, "out"))
                gold = {paths.aggregates_object(d): r.file for d, r in built.items() if r.file}
                if gold and not preview:
                    preview = pq.read_table(next(iter(gold.values()))).slice(0, 5).to_pylist()
                _publish(store, gold)
            reports |= built
    return reports, preview


lakehouse_job = dg.define_asset_job(
    "lakehouse_job",
    # online_features (defs/features) by key: the features layer imports this one. The lakehouse
    # sensor includes it once the registry is applied, so a new file's days reach the online
    # store in the same run instead of one automation tick and run later.
    selection=dg.AssetSelection.assets(sensor_chunks, daily_aggregates)
    | dg.AssetSelection.assets("online_features"),
    tags=LAKEHOUSE_TAGS,
    description="Chunks, aggregates and online features of a range of days, in one run.",
)
