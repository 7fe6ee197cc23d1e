"""``sensor_chunks[day]`` and ``daily_aggregates[day]``: ranges of days run in one run."""

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from ml_platform.defs.ingest.assets import TRANSIENT_RETRIES, raw_readings
from ml_platform.defs.partitions import daily
from ml_platform.defs.resources import IngestResource, LakeResource
from ml_platform.lib import paths
from ml_platform.lib.lakehouse import (
    ChunkReport,
    add_trailing,
    build_chunks,
    day_statistics,
    previous_days,
)
from ml_platform.lib.tables import markdown_table

#: Runs of the lakehouse are serialised by this tag (dagster.yaml: tag_concurrency_limits), so two
#: files touching the same day cannot race: the later run always sees both bronze parts.
LAKEHOUSE_TAGS = {"ml_platform/lakehouse": "serial"}


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
    """One day's readings: every bronze part merged, de-duplicated, one sorted object per sensor."""
    store = lake.store()
    per_day, rows_per_sensor, gaps, problems = {}, {}, {}, []
    preview: list[dict] = []
    started = time.perf_counter()

    def rebuild(day: str) -> tuple[str, int, ChunkReport, int]:
        parts = sorted(
            store.list(paths.bronze_day_prefix("readings", day)),
            key=lambda o: (o.last_modified, o.key),  # oldest ingestion first: newest wins
        )
        with tempfile.TemporaryDirectory(prefix="chunks-") as tmp:
            local = store.fetch([p.key for p in parts], Path(tmp, "in"))
            report = build_chunks(
                local, day, Path(tmp, "out"), memory_limit=ingest.memory_limit, threads=1
            )
            written = set()
            for name, file in report.files.items():
                key = paths.chunk_object(day, name)
                store.put_file(file, key, move=True)
                written.add(key)
        # Sensors that vanished from a re-run day are removed: the day equals its bronze parts.
        stale = [o.key for o in store.list(paths.chunks_day_prefix(day)) if o.key not in written]
        for key in stale:
            store.delete(key)
        return day, len(parts), report, len(stale)

    # Two days at a time, one DuckDB thread each: a day is too small to keep two threads busy.
    # Memory stays bounded by two days' data.
    with ThreadPoolExecutor(2) as pool:
        for day, n_parts, report, n_stale in pool.map(rebuild, context.partition_keys):
            # What was written (file footers) must be what was computed, one object per sensor.
            if report.rows_written != report.rows_out or len(report.files) != len(
                report.rows_per_sensor
            ):
                problems.append(day)
            per_day[day] = {
                "bronze_parts": n_parts,
                "rows_in": report.rows_in,
                "rows": report.rows_out,
                "duplicates_removed": report.duplicates_removed,
                "sensors": len(report.rows_per_sensor),
                "stale_sensors_removed": n_stale,
            }
            rows_per_sensor[day] = report.rows_per_sensor
            gaps[day] = {s: g for s, g in report.gaps.items() if g["gaps"]}
            preview = report.preview or preview
            context.log.info(f"{day}: {per_day[day]}")
    total = sum(d["rows"] for d in per_day.values())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total,
            "days": dg.MetadataValue.json(per_day),
            "rows_per_sensor": dg.MetadataValue.json(rows_per_sensor),
            "gaps": dg.MetadataValue.json(gaps),
            "preview": dg.MetadataValue.md(markdown_table(preview)),
            "location": store.uri(paths.SILVER_CHUNKS),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[_invariant("sensor_chunks_conserve_rows", per_day, problems)],
    )


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
    per_day = {}
    preview: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aggregates-") as tmp:

        def statistics(day: str) -> tuple[str, int, Path | None]:
            chunk_keys = [o.key for o in store.list(paths.chunks_day_prefix(day))]
            if not chunk_keys:
                return day, 0, None
            out = Path(tmp, f"{day}.stats.parquet")
            chunks = store.fetch(chunk_keys, Path(tmp, f"{day}.chunks"))
            day_statistics(chunks, day, measurements, out, memory_limit=ingest.memory_limit)
            return day, len(chunk_keys), out

        # The day's own statistics do not depend on other days: two at a time. The trailing-week
        # join then runs in day order, so each day sees the history just written.
        with ThreadPoolExecutor(2) as pool:
            computed = list(pool.map(statistics, context.partition_keys))
        for day, sensors, stats_file in computed:
            target = paths.aggregates_object(day)
            if stats_file is None:
                store.delete(target)
                per_day[day] = {"rows": 0, "sensors": 0, "history_days": 0}
                continue
            history = [
                k for k in map(paths.aggregates_object, previous_days(day)) if store.exists(k)
            ]
            created = max(
                o.last_modified for o in store.list(paths.bronze_day_prefix("readings", day))
            )
            out = Path(tmp, f"{day}.parquet")
            rows = add_trailing(
                stats_file,
                day,
                measurements,
                out,
                previous=store.fetch(history, Path(tmp, f"{day}.history")),
                created=created,
                memory_limit=ingest.memory_limit,
            )
            if not preview:
                preview = pq.read_table(out).slice(0, 5).to_pylist()
            store.put_file(out, target, move=True)
            per_day[day] = {"rows": rows, "sensors": sensors, "history_days": len(history)}
    mismatched = [d for d, v in per_day.items() if v["rows"] != v.get("sensors", 0)]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(d["rows"] for d in per_day.values()),
            "days": dg.MetadataValue.json(per_day),
            "measurements": dg.MetadataValue.json(measurements),
            "preview": dg.MetadataValue.md(markdown_table(preview, columns=10)),
            "location": store.uri(paths.GOLD_AGGREGATES),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
            _invariant("daily_aggregates_one_row_per_sensor_object", per_day, mismatched)
        ],
    )


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
