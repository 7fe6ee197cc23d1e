"""From landed files to their days: coalesced lakehouse runs, at most one waiting at a time.

Each tick reads every ``raw_readings`` materialization after its cursor and unions the days they
touched (metadata ``dates``; a quarantined file brings none). While a lakehouse run is waiting
to start, the tick requests nothing and keeps its cursor: the next run, requested once that one
has started, covers everything that landed meanwhile. While readings batches wait to start, it
also waits (at most MAX_DEFER_S after the oldest new materialization), so that a burst of
batches becomes a few lakehouse runs. Nor does it while the running lakehouse run started after
the new files landed and covers their days. Otherwise the tick requests one run over
the oldest group of nearby touched days and keeps the other days pending in its cursor for the
following ticks, so a late file for an old day does not rebuild every day up to today.
"""

import json
import time
from datetime import date

import dagster as dg

from ml_platform.defs.ingest.assets import ingest_tags
from ml_platform.defs.lakehouse.assets import LAKEHOUSE_TAGS, lakehouse_job
from ml_platform.defs.partitions import daily
from ml_platform.defs.runs import run_waiting

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"

#: Two groups of touched days with at most this many untouched days between them run as one
#: range: the later group's daily_aggregates reads those days anyway (its trailing week).
MERGE_GAP_DAYS = 7
#: While readings batches wait to start, a tick requests nothing, so that their days join the
#: next run (a burst of batches becomes a few lakehouse runs, which also leave the cores to the
#: batches), for at most this long after the oldest materialization not in a run yet: a steady
#: stream still reaches gold.
MAX_DEFER_S = 30
#: Bounds of one tick's read of new raw_readings materializations.
PAGE_SIZE = 1000
MAX_RECORDS_PER_TICK = 10_000
#: Statuses of a lakehouse run that has not started yet.
RAW_READINGS = dg.AssetKey("raw_readings")
DAILY_AGGREGATES = dg.AssetKey("daily_aggregates")


def _read_cursor(cursor: str | None) -> tuple[int | None, dict[str, int]]:
    """``(after, pending)``: the last storage id read, and each pending day's newest record.

    Also accepts a plain storage id (``"123"``), the form of cursor without pending days.
    """
    state = json.loads(cursor) if cursor else None
    if state is None or isinstance(state, int):
        return state, {}
    return state["after"], state["pending"]


def _write_cursor(after: int | None, pending: dict[str, int]) -> str:
    return json.dumps({"after": after, "pending": pending}, separators=(",", ":"), sort_keys=True)


def _new_raw_readings(instance: dg.DagsterInstance, after: int | None) -> list[dg.EventLogRecord]:
    """The raw_readings materializations after storage id ``after``, oldest first (bounded)."""
    records: list[dg.EventLogRecord] = []
    cursor = None
    while len(records) < MAX_RECORDS_PER_TICK:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=RAW_READINGS, after_storage_id=after),
            limit=min(PAGE_SIZE, MAX_RECORDS_PER_TICK - len(records)),
            ascending=True,
            cursor=cursor,
        )
        records.extend(page.records)
        if not page.has_more:
            break
        cursor = page.cursor
    return records


def _touched_days(records: list[dg.EventLogRecord], known: set[str]) -> dict[str, int]:
    """Each known day the records touched (metadata ``dates``), with its newest record's id."""
    newest: dict[str, int] = {}
    for record in records:
        materialization = record.asset_materialization
        entry = materialization.metadata.get("dates") if materialization else None
        for day in set(entry.value if entry else []) & known:
            newest[day] = max(newest.get(day, -1), record.storage_id)
    return newest


def _records_by_id(
    instance: dg.DagsterInstance, asset: dg.AssetKey, storage_ids: set[int]
) -> dict[int, dg.EventLogRecord]:
    """The asset's materialization records with these ids, in one query."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, storage_ids=sorted(storage_ids)),
        limit=max(len(storage_ids), 1),
    ).records
    return {r.storage_id: r for r in records}


def _start_times(instance: dg.DagsterInstance, run_ids: set[str]) -> dict[str, float]:
    """When each run started (epoch seconds; -1 if it never did)."""
    records = instance.get_run_records(dg.RunsFilter(run_ids=sorted(run_ids))) if run_ids else []
    return {r.dagster_run.run_id: r.start_time or -1.0 for r in records}


def _not_rebuilt_since(instance: dg.DagsterInstance, newest: dict[str, int]) -> dict[str, int]:
    """The days whose daily_aggregates no run started after their newest record has rebuilt.

    A run that started after the record read the file's bronze part (written before the record);
    one that merely finished after it may have read before. Run start times are compared with
    record times, not storage ids: a run's own events are not comparable with asset records on
    every storage (SQLite keeps one file per run).
    """
    latest = instance.get_latest_storage_id_by_partition(
        DAILY_AGGREGATES, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(newest)
    )
    later = {day: latest[day] for day, sid in newest.items() if latest.get(day, -1) > sid}
    if not later:
        return newest
    raw = _records_by_id(instance, RAW_READINGS, {newest[day] for day in later})
    built = _records_by_id(instance, DAILY_AGGREGATES, set(later.values()))
    starts = _start_times(instance, {r.run_id for r in built.values() if r.run_id})
    return {
        day: sid
        for day, sid in newest.items()
        if day not in later
        or sid not in raw
        or later[day] not in built
        or starts.get(built[later[day]].run_id, -1.0) <= raw[sid].timestamp
    }


def _days_to_rebuild(
    instance: dg.DagsterInstance, records: list[dg.EventLogRecord], pending: dict[str, int]
) -> dict[str, int]:
    """The days the new records touched and the pending ones, less those rebuilt since."""
    known = set(daily.get_partition_keys(dynamic_partitions_store=instance))
    touched = _touched_days(records, known)
    for day, sid in pending.items():
        touched[day] = max(touched.get(day, -1), sid)
    return _not_rebuilt_since(instance, touched)


def _nearby_groups(days: list[str]) -> list[list[str]]:
    """Sorted days split where more than MERGE_GAP_DAYS untouched days separate two of them."""
    groups: list[list[str]] = []
    for day in days:
        if groups:
            between = (date.fromisoformat(day) - date.fromisoformat(groups[-1][-1])).days - 1
            if between <= MERGE_GAP_DAYS:
                groups[-1].append(day)
                continue
        groups.append([day])
    return groups


def _lakehouse_selection(instance: dg.DagsterInstance) -> list[dg.AssetKey]:
    # Publishing needs the Feast registry; before it is applied, automation publishes the days
    # once feature_views has run.
    selection = [dg.AssetKey("sensor_chunks"), DAILY_AGGREGATES]
    if instance.get_latest_materialization_event(dg.AssetKey("feature_views")):
        selection.append(dg.AssetKey("online_features"))
    return selection


def _batches_waiting(instance: dg.DagsterInstance, oldest: dg.EventLogRecord) -> bool:
    """Whether readings batches wait to start while the oldest new materialization is younger
    than MAX_DEFER_S."""
    young = time.time() - oldest.timestamp < MAX_DEFER_S
    return young and run_waiting(instance, ingest_tags("readings"))


def _running_run_covers(
    instance: dg.DagsterInstance, newest: dg.EventLogRecord, days: dict[str, int]
) -> bool:
    """Whether the running lakehouse run started after ``newest`` (so it lists those files'
    parts) and its range holds every day to rebuild: the next tick then finds them rebuilt."""
    [running] = instance.get_run_records(
        dg.RunsFilter(tags=LAKEHOUSE_TAGS, statuses=[dg.DagsterRunStatus.STARTED]), limit=1
    ) or [None]
    if running is None or not running.start_time or running.start_time <= newest.timestamp:
        return False
    tags = running.dagster_run.tags
    first, last = tags.get(RANGE_START), tags.get(RANGE_END)
    return bool(first and last) and all(first <= day <= last for day in days)


def build_lakehouse_sensor(*, interval_s: int, max_requests_per_tick: int) -> dg.SensorDefinition:
    """The lakehouse sensor; it requests at most one run per tick (``max_requests_per_tick`` is
    not used: a tick reads up to MAX_RECORDS_PER_TICK materializations in pages of PAGE_SIZE).
    """

    @dg.sensor(
        name="lakehouse_on_new_readings_sensor",
        job=lakehouse_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Coalesces new raw_readings materializations into one run that rebuilds "
        "sensor_chunks and daily_aggregates (and publishes online_features) over the days they "
        "touched, the oldest group of nearby days first; requests nothing while a lakehouse run "
        "is waiting to start, nor (for up to 30 s) while readings batches are.",
    )
    def lakehouse_on_new_readings_sensor(context: dg.SensorEvaluationContext):
        instance = context.instance
        if run_waiting(instance, LAKEHOUSE_TAGS):
            return dg.SkipReason("a lakehouse run is waiting to start; the next one follows it")
        after, pending = _read_cursor(context.cursor)
        records = _new_raw_readings(instance, after)
        if not records and not pending:
            return dg.SkipReason("no new raw_readings materializations")
        if records and _batches_waiting(instance, records[0]):
            return dg.SkipReason("readings batches are waiting to start; their days join the run")
        if records:
            after = records[-1].storage_id
        todo = _days_to_rebuild(instance, records, pending)
        if not todo:
            return dg.SensorResult(
                cursor=_write_cursor(after, {}),
                skip_reason="no day to rebuild: outside the partitions or rebuilt since",
            )
        if records and _running_run_covers(instance, records[-1], todo):
            return dg.SkipReason("the running lakehouse run started after these files and "
                                 "rebuilds their days")  # fmt: skip
        first, *rest = _nearby_groups(sorted(todo))
        pending = {day: todo[day] for group in rest for day in group}
        context.log.info(
            f"{len(records)} new raw_readings materializations; days {first[0]}..{first[-1]} now, "
            f"{len(pending)} days pending"
        )
        request = dg.RunRequest(
            run_key=f"lakehouse:{after}:{first[0]}:{first[-1]}",
            asset_selection=_lakehouse_selection(instance),
            tags={
                RANGE_START: first[0],
                RANGE_END: first[-1],
                "ml_platform/coalesced_materializations": str(len(records)),
                "ml_platform/pending_days": str(len(pending)),
            },
        )
        return dg.SensorResult(run_requests=[request], cursor=_write_cursor(after, pending))

    return lakehouse_on_new_readings_sensor
