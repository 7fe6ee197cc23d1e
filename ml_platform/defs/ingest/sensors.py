"""Landing sensors: every new object version under a landing prefix becomes one partition and run.

Two modes, one sensor per dataset (``<dataset>_landing_sensor``) either way:

- **listing** (default): each tick lists the prefix and takes what is new since its cursor.
- **events** (``ML_PLATFORM_EVENTS_URL`` set): each tick reads only the MinIO notifications
  added to the events table since its cursor (an event id), HEADs each object named, and requests
  its run; no listing. Once per ``reconcile_interval_s`` (an hour) the same tick also lists the
  prefix, as the listing mode does, and requests what the events missed (lost notifications,
  a gap given up on, objects landed before the mode was switched on).

Both paths build the same partition key and run key from the object key and its current ETag (from
the listing or a HEAD, the same source), and they live in one sensor because Dagster scopes run
keys to the sensor that requested them: two sensors would each launch a run for the same key.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dagster as dg

from ml_platform.defs.resources import LakeResource
from ml_platform.lib import notifications, paths
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.notifications import EventCursor, EventTable
from ml_platform.lib.store import ObjectStore

#: Rows read per tick for each run request allowed: the three landing sensors share one table, so
#: most rows a sensor reads are another dataset's (or not uploads) and cost only a JSON parse.
ROWS_PER_REQUEST = 10

#: How long an id gap (an insert not committed yet) is waited for before it is given up on; new
#: events are handled meanwhile, only the cursor's low-water mark waits (lib/notifications.py).
GAP_TIMEOUT_S = 120.0


def build_landing_sensor(
    dataset: str,
    job: Any,  # what dg.define_asset_job returns
    partitions_def: dg.DynamicPartitionsDefinition,
    *,
    interval_s: int,
    max_requests_per_tick: int,
    events: EventTable | None = None,
    reconcile_interval_s: int = 3600,
) -> dg.SensorDefinition:
    """The listing sensor, or with ``events`` the event-following one (with its reconciler)."""
    if events is None:
        return _listing_sensor(dataset, job, partitions_def, interval_s, max_requests_per_tick)
    return _event_sensor(
        dataset,
        job,
        partitions_def,
        interval_s,
        max_requests_per_tick,
        events,
        reconcile_interval_s,
    )


#: The asset each landing sensor's job materializes, one partition per object version.
ASSETS = {"readings": "raw_readings", "labels": "raw_labels", "scoring": "scored_files"}


def _tick_result(
    context: dg.SensorEvaluationContext,
    dataset: str,
    partitions_def: dg.DynamicPartitionsDefinition,
    requests: list[dg.RunRequest],
    cursor: str,
    what: str,
) -> dg.SensorResult:
    """The tick's runs and partitions, both modes. Object versions already materialized by other
    means (``make demo``, a manual ``land --register`` + materialize) are left out: exactly once
    holds across sensors and people too. ``what`` says what the tick looked at."""
    if requests:
        built = context.instance.get_materialized_partitions(dg.AssetKey(ASSETS[dataset]))
        kept = [r for r in requests if r.partition_key not in built]
        if len(kept) < len(requests):
            context.log.info(f"{len(requests) - len(kept)} object version(s) already built")
        requests = kept
    if not requests:  # the cursor still moves past what was looked at
        return dg.SensorResult(skip_reason=f"nothing new to ingest: {what}", cursor=cursor)
    context.log.info(f"{len(requests)} new object(s): {what}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            partitions_def.build_add_request([r.partition_key for r in requests])
        ],
        cursor=cursor,
    )


def _run_request(store: ObjectStore, prefix: str, key: str, etag: str) -> dg.RunRequest:
    partition = paths.partition_key(key.removeprefix(prefix), etag)
    return dg.RunRequest(
        run_key=partition,  # the same object version never runs twice
        partition_key=partition,
        tags={"ml_platform/object": store.uri(key)},
    )


def _listing_sensor(
    dataset: str,
    job: Any,
    partitions_def: dg.DynamicPartitionsDefinition,
    interval_s: int,
    max_requests_per_tick: int,
) -> dg.SensorDefinition:
    prefix = paths.LANDING_PREFIXES[dataset]

    @dg.sensor(
        name=f"{dataset}_landing_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests one run per new object version under {prefix} "
        f"(at most {max_requests_per_tick} per tick).",
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
        store = lake.store()
        cursor = LandingCursor.from_json(_listing_part(context.cursor))
        # An unreachable store raises here: the tick fails with the reason, the cursor stays.
        new, next_cursor = select_new(store.list(prefix), cursor, max_requests_per_tick)
        if not new:
            return dg.SkipReason(f"no new objects under {store.uri(prefix)}")
        requests = []
        for obj in new:
            if obj.key.endswith("/"):  # a "folder" marker some S3 clients create: not a file
                continue
            try:
                etag = obj.etag or store.etag(obj.key)
            except FileNotFoundError:
                continue  # deleted between listing and now: nothing to do
            requests.append(_run_request(store, prefix, obj.key, etag))
        return _tick_result(
            context, dataset, partitions_def, requests, next_cursor.to_json(), store.uri(prefix)
        )

    return _sensor


def _listing_part(cursor: str | None) -> str | None:
    """The listing cursor, also from an event-mode cursor (switching the mode off keeps it)."""
    data = json.loads(cursor) if cursor else None
    if isinstance(data, dict) and "events" in data:
        return json.dumps(data["listing"]) if data.get("listing") else None
    return cursor


def _event_sensor(
    dataset: str,
    job: Any,
    partitions_def: dg.DynamicPartitionsDefinition,
    interval_s: int,
    max_requests_per_tick: int,
    events: EventTable,
    reconcile_interval_s: int,
) -> dg.SensorDefinition:
    prefix = paths.LANDING_PREFIXES[dataset]

    @dg.sensor(
        name=f"{dataset}_landing_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests one run per new object version under {prefix}, following MinIO's "
        f"bucket notifications in PostgreSQL table {events.table} (at most "
        f"{max_requests_per_tick} per tick); lists the prefix every "
        f"{reconcile_interval_s} s to catch what notifications missed.",
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
        store = lake.store()
        bucket, store_prefix = getattr(store, "bucket", None), getattr(store, "prefix", "")
        if bucket is None:
            raise ValueError(
                f"ML_PLATFORM_EVENTS_URL is set but the store {store.url} is not s3://: bucket "
                "notifications come from MinIO; unset it to list a local store"
            )
        state = _EventModeCursor.from_json(context.cursor)
        now = time.time()

        # 1. The new notifications only. A database or store that is down fails the tick with
        #    the reason, and the cursor stays.
        rows: list[notifications.EventRow] = []
        limit = ROWS_PER_REQUEST * max_requests_per_tick
        if state.events is None:
            # The first tick in event mode follows the table from its end, not through its whole
            # history; the reconciliation below (due now) requests what landed before.
            event_cursor = EventCursor(top=notifications.latest_id(events))
        else:
            event_cursor = state.events
            try:
                rows = notifications.read_events(events, event_cursor, limit)
            except notifications.TableResetError as exc:
                context.log.warning(f"{exc}: following it from its first row again")
                event_cursor = EventCursor()
                rows = notifications.read_events(events, event_cursor, limit)
        requests: dict[str, dg.RunRequest] = {}
        current: dict[str, str | None] = {}  # one HEAD per key per tick
        handled = 0
        for row in rows:
            if len(requests) >= max_requests_per_tick:
                break  # the rest is read again next tick (the cursor stops before it)
            handled += 1
            try:
                keys = notifications.created_keys(
                    row, bucket=bucket, store_prefix=store_prefix, prefix=prefix
                )
            except notifications.MalformedEventError as exc:
                context.log.warning(f"skipped a notification row: {exc}")
                continue
            for key in keys:
                if key not in current:
                    try:
                        # The current ETag, not the event's: a HEAD gives what the listing gives,
                        # so both paths build the same run key; an event for a version
                        # overwritten since runs the current one (whose event dedupes by run key).
                        current[key] = store.etag(key)
                    except FileNotFoundError:
                        current[key] = None  # deleted since: nothing to ingest
                if current[key] is not None:
                    request = _run_request(store, prefix, key, current[key])
                    requests.setdefault(request.run_key, request)
        event_cursor = event_cursor.advance([r.id for r in rows[:handled]], now, GAP_TIMEOUT_S)
        from_events = len(requests)

        # 2. The reconciler: a listing once per interval, in the budget the events left.
        listing, reconciled_at = state.listing, state.reconciled_at
        due = reconciled_at is None or now - reconciled_at >= reconcile_interval_s
        budget = max_requests_per_tick - len(requests)
        if due and budget > 0:
            missed, listing, complete = _reconcile(
                context, store, prefix, partitions_def, listing, budget, requests
            )
            for request in missed:
                requests.setdefault(request.run_key, request)
            if complete:  # else the next tick lists again until the backlog is done
                reconciled_at = now
            context.log.info(
                f"reconciled {store.uri(prefix)}: {len(missed)} object(s) no event announced"
            )

        return _tick_result(
            context,
            dataset,
            partitions_def,
            list(requests.values()),
            _EventModeCursor(event_cursor, listing, reconciled_at).to_json(),
            f"{store.uri(prefix)} ({from_events} from {handled} event(s), up to id "
            f"{event_cursor.top})",
        )

    return _sensor


def _reconcile(
    context: dg.SensorEvaluationContext,
    store: ObjectStore,
    prefix: str,
    partitions_def: dg.DynamicPartitionsDefinition,
    cursor: LandingCursor,
    budget: int,
    requested: dict[str, dg.RunRequest],
) -> tuple[list[dg.RunRequest], LandingCursor, bool]:
    """Objects the listing finds that no event announced: not requested in this tick and not a
    registered partition (every request registers its partition, so a registered one was
    requested before). Returns the requests, the listing cursor, and whether it caught up."""
    objects = list(store.list(prefix))
    fresh, _ = select_new(objects, cursor, max(len(objects), 1))
    # Checking a listed object is cheap (one indexed lookup), requesting one is not: look at up to
    # 20 times the budget per tick.
    checked, missed = 0, []
    for obj in fresh[: 20 * budget]:
        if len(missed) == budget:
            break
        checked += 1
        if obj.key.endswith("/"):
            continue
        try:
            etag = obj.etag or store.etag(obj.key)
        except FileNotFoundError:
            continue
        request = _run_request(store, prefix, obj.key, etag)
        if request.run_key in requested or context.instance.has_dynamic_partition(
            partitions_def.name, request.partition_key
        ):
            continue
        missed.append(request)
    if checked:
        _, cursor = select_new(objects, cursor, checked)
    return missed, cursor, checked == len(fresh)


class _EventModeCursor:
    """Event mode's cursor: the events position, the reconciler's listing cursor, and when the
    last reconciliation finished (epoch seconds)."""

    def __init__(
        self, events: EventCursor | None, listing: LandingCursor, reconciled_at: float | None
    ) -> None:
        self.events, self.listing, self.reconciled_at = events, listing, reconciled_at

    def to_json(self) -> str:
        return json.dumps(
            {
                "events": self.events.to_dict() if self.events else None,
                "listing": json.loads(self.listing.to_json()),
                "reconciled_at": self.reconciled_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> _EventModeCursor:
        """Also reads a listing-mode cursor (switching events on keeps its listing position).
        No events position yet: None (start at the table's end)."""
        data = json.loads(text) if text else {}
        if "events" not in data:
            return cls(None, LandingCursor.from_json(text), None)
        listing = data.get("listing")
        return cls(
            EventCursor.from_dict(data["events"]) if data["events"] is not None else None,
            LandingCursor.from_json(json.dumps(listing) if listing else None),
            data.get("reconciled_at"),
        )
