"""Landing sensors: new object versions under a landing prefix become ingest runs.

Readings and labels land in micro-batches: a tick turns every new version it sees into runs of
up to ``max_files`` files and ``max_bytes`` bytes each, one landing day per run (the raw assets'
partition), with the versions in the run config and a run key per batch. Scoring requests keep
one partition and run per version. Exactly once per version is the ingest run's ledger's: a
version already ingested or quarantined is left alone by any later batch.

Two modes, one sensor per dataset (``<dataset>_landing_sensor``) either way:

- **listing** (default): each tick lists the prefix and takes what is new since its cursor.
- **events** (``ML_PLATFORM_EVENTS_URL`` set): each tick reads only the MinIO notifications
  added to the events table since its cursor (an event id), HEADs each object named, and requests
  its run; no listing. Once per ``reconcile_interval_s`` (an hour) the same tick also lists the
  prefix, as the listing mode does, and requests what the events missed (lost notifications,
  a gap given up on, objects landed before the mode was switched on).

Both paths build the same version id from the object key and its current ETag (from the listing
or a HEAD, the same source), and they live in one sensor because Dagster scopes run keys to the
sensor that requested them: two sensors would each launch a run for the same key.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg

from ml_platform.defs.ingest.assets import ingest_tags
from ml_platform.defs.resources import LakeResource
from ml_platform.defs.runs import run_waiting
from ml_platform.lib import notifications, paths
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.notifications import EventCursor, EventTable
from ml_platform.lib.store import ObjectInfo, ObjectStore

#: Rows read per tick for each run request allowed: the three landing sensors share one table, so
#: most rows a sensor reads are another dataset's (or not uploads) and cost only a JSON parse.
ROWS_PER_REQUEST = 10

#: How long an id gap (an insert not committed yet) is waited for before it is given up on; new
#: events are handled meanwhile, only the cursor's low-water mark waits (lib/notifications.py).
GAP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BatchLimits:
    """How large one ingest run may be, and how many runs one tick may request."""

    max_files: int = 1000
    max_bytes: int = 1 << 30
    runs_per_tick: int = 4


@dataclass(frozen=True)
class Landed:
    """One new object version seen by a tick."""

    key: str
    etag: str
    last_modified: datetime
    size: int


def build_landing_sensor(
    dataset: str,
    job: Any,  # what dg.define_asset_job returns
    partitions_def: dg.PartitionsDefinition,
    *,
    interval_s: int,
    max_requests_per_tick: int,
    events: EventTable | None = None,
    reconcile_interval_s: int = 3600,
    batch: BatchLimits | None = None,
) -> dg.SensorDefinition:
    """The listing sensor, or with ``events`` the event-following one (with its reconciler).
    With a dynamic ``partitions_def`` each version is its own run (at most
    ``max_requests_per_tick``); else versions are batched by ``batch`` per landing day."""
    per_file = isinstance(partitions_def, dg.DynamicPartitionsDefinition)
    batch = None if per_file else (batch or BatchLimits())
    per_tick = max_requests_per_tick if batch is None else batch.max_files * batch.runs_per_tick
    spec = _SensorSpec(dataset, job, partitions_def, interval_s, per_tick, batch)
    if events is None:
        return _listing_sensor(spec)
    return _event_sensor(spec, events, reconcile_interval_s)


@dataclass(frozen=True)
class _SensorSpec:
    dataset: str
    job: Any
    partitions_def: dg.PartitionsDefinition
    interval_s: int
    versions_per_tick: int
    batch: BatchLimits | None

    @property
    def prefix(self) -> str:
        return paths.LANDING_PREFIXES[self.dataset]

    def describe(self) -> str:
        if self.batch is None:
            return f"one run per new object version (at most {self.versions_per_tick} per tick)"
        b = self.batch
        return (f"runs of up to {b.max_files} new object versions and {b.max_bytes} bytes, one "
                f"landing day each (at most {b.runs_per_tick} runs per tick)")  # fmt: skip


#: The asset each landing sensor's job materializes, one partition per object version.
ASSETS = {"readings": "raw_readings", "labels": "raw_labels", "scoring": "scored_files"}


def _tick_result(
    context: dg.SensorEvaluationContext,
    spec: _SensorSpec,
    store: ObjectStore,
    landed: list[Landed],
    cursor: str,
    what: str,
) -> dg.SensorResult:
    """The tick's runs, both modes; the cursor moves past what was looked at even when nothing
    is requested. ``what`` says what the tick looked at."""
    if spec.batch is None:
        return _per_file_result(context, spec, store, landed, cursor, what)
    fresh = _not_in_ledger(spec, store, landed)
    if len(fresh) < len(landed):
        context.log.info(f"{len(landed) - len(fresh)} object version(s) already handled")
    requests = _batch_requests(spec, store, fresh)
    if not requests:
        return dg.SensorResult(skip_reason=f"nothing new to ingest: {what}", cursor=cursor)
    context.log.info(f"{len(landed)} new object(s) in {len(requests)} run(s): {what}")
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def _not_in_ledger(spec: _SensorSpec, store: ObjectStore, landed: list[Landed]) -> list[Landed]:
    """The versions no run has handled yet: one handled by other means (``make demo``, a
    manual run) needs no batch. The lookups wait on the store, so they go eight at a time."""

    def handled(item: Landed) -> bool:
        return _handled_before_in_ledger(spec, store, _version(spec, item))

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(handled, landed))
    return [item for item, d in zip(landed, done, strict=True) if not d]


def _batch_requests(spec: _SensorSpec, store: ObjectStore, landed: list[Landed]) -> list:
    """One run request per batch; the run key names the day and the exact versions."""
    return [_batch_request(spec, store, day, items) for day, items in _batches(spec, landed)]


def _batches(spec: _SensorSpec, landed: list[Landed]) -> list[tuple[str, list[Landed]]]:
    """Batches of at most ``max_files`` versions and ``max_bytes`` bytes (a larger file alone),
    one landing day each, oldest first."""
    assert spec.batch is not None
    batches: list[tuple[str, list[Landed]]] = []
    for item in sorted(landed, key=lambda o: (o.last_modified, o.key)):
        day = paths.landing_day(item.last_modified)
        if batches and batches[-1][0] == day and _fits(spec.batch, batches[-1][1], item):
            batches[-1][1].append(item)
        else:
            batches.append((day, [item]))
    return batches


def _within_run_cap(spec: _SensorSpec, landed: list[Landed]) -> int:
    """How many of ``landed`` (oldest first) the first ``runs_per_tick`` batches hold: byte caps
    and landing days can cut more runs than ``max_files`` alone would."""
    if spec.batch is None:
        return len(landed)
    kept = _batches(spec, landed)[: spec.batch.runs_per_tick]
    return sum(len(items) for _, items in kept)


def _fits(limits: BatchLimits, batch: list[Landed], item: Landed) -> bool:
    return (
        len(batch) < limits.max_files and sum(o.size for o in batch) + item.size <= limits.max_bytes
    )


def _batch_request(
    spec: _SensorSpec, store: ObjectStore, day: str, items: list[Landed]
) -> dg.RunRequest:
    versions = [paths.partition_key(o.key.removeprefix(spec.prefix), o.etag) for o in items]
    digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]
    asset = ASSETS[spec.dataset]
    return dg.RunRequest(
        run_key=f"{spec.dataset}:{day}:{len(versions)}:{digest}",  # a batch never runs twice
        partition_key=day,
        run_config={"ops": {asset: {"config": {"versions": versions}}}},
        tags={
            "ml_platform/batch_files": str(len(versions)),
            "ml_platform/first_object": store.uri(items[0].key)[:200],
        },  # fmt: skip
    )


def _per_file_result(
    context: dg.SensorEvaluationContext,
    spec: _SensorSpec,
    store: ObjectStore,
    landed: list[Landed],
    cursor: str,
    what: str,
) -> dg.SensorResult:
    """One run per version. Versions already materialized by other means (a manual run) are
    left out: exactly once holds across sensors and people too."""
    requests = [_run_request(store, spec.prefix, o.key, o.etag) for o in landed]
    if requests:
        built = context.instance.get_materialized_partitions(dg.AssetKey(ASSETS[spec.dataset]))
        kept = [r for r in requests if r.partition_key not in built]
        if len(kept) < len(requests):
            context.log.info(f"{len(requests) - len(kept)} object version(s) already built")
        requests = kept
    if not requests:
        return dg.SensorResult(skip_reason=f"nothing new to ingest: {what}", cursor=cursor)
    context.log.info(f"{len(requests)} new object(s): {what}")
    assert isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            spec.partitions_def.build_add_request([r.partition_key for r in requests])
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


def _listing_sensor(spec: _SensorSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.dataset}_landing_sensor",
        job=spec.job,
        minimum_interval_seconds=spec.interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Lists {spec.prefix} and requests {spec.describe()}.",
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
        if waiting := _batch_waiting(context, spec):
            return waiting
        store = lake.store()
        cursor = LandingCursor.from_json(_listing_part(context.cursor))
        # An unreachable store raises here: the tick fails with the reason, the cursor stays.
        objects = list(store.list(spec.prefix))
        new, next_cursor = select_new(objects, cursor, spec.versions_per_tick)
        if not new:
            return dg.SkipReason(f"no new objects under {store.uri(spec.prefix)}")
        landed = [item for obj in new if (item := _landed(store, obj)) is not None]
        kept = _within_run_cap(spec, landed)
        if kept < len(landed):  # the rest waits for the next tick: the cursor stops before it
            last = next(i for i, o in enumerate(new) if o.key == landed[kept - 1].key)
            landed = landed[:kept]
            _, next_cursor = select_new(objects, cursor, last + 1)
        return _tick_result(
            context, spec, store, landed, next_cursor.to_json(), store.uri(spec.prefix)
        )

    return _sensor


def _batch_waiting(context: dg.SensorEvaluationContext, spec: _SensorSpec) -> dg.SkipReason | None:
    """While a batch of the dataset waits to start, the tick requests nothing and keeps its
    cursor: what lands meanwhile joins the next batch instead of queueing small runs."""
    if spec.batch is None or not run_waiting(context.instance, ingest_tags(spec.dataset)):
        return None
    return dg.SkipReason(f"an ingest run of {spec.dataset} is waiting to start")


def _landed(store: ObjectStore, obj: ObjectInfo) -> Landed | None:
    """A listed object as a version; None for a "folder" marker (some S3 clients create them)
    or an object deleted between listing and now."""
    if obj.key.endswith("/"):
        return None
    try:
        etag = obj.etag or store.etag(obj.key)
    except FileNotFoundError:
        return None
    return Landed(obj.key, etag, obj.last_modified, obj.size)


def _listing_part(cursor: str | None) -> str | None:
    """The listing cursor, also from an event-mode cursor (switching the mode off keeps it)."""
    data = json.loads(cursor) if cursor else None
    if isinstance(data, dict) and "events" in data:
        return json.dumps(data["listing"]) if data.get("listing") else None
    return cursor


def _event_sensor(
    spec: _SensorSpec, events: EventTable, reconcile_interval_s: int
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.dataset}_landing_sensor",
        job=spec.job,
        minimum_interval_seconds=spec.interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Follows MinIO's bucket notifications in PostgreSQL table {events.table} "
        f"and requests {spec.describe()} under {spec.prefix}; lists the prefix every "
        f"{reconcile_interval_s} s to catch what notifications missed.",
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
        if waiting := _batch_waiting(context, spec):
            return waiting
        store = lake.store()
        location = store.bucket_and_prefix()
        if location is None:
            raise ValueError(
                f"ML_PLATFORM_EVENTS_URL is set but the store {store.url} is not s3://: bucket "
                "notifications come from MinIO; unset it to list a local store"
            )
        bucket, store_prefix = location
        state = _EventModeCursor.from_json(context.cursor)
        now = time.time()
        # A database or store that is down fails the tick with the reason; the cursor stays.
        event_cursor, rows = _new_events(context, state, events, spec.versions_per_tick)
        landed, handled = _announced(context, spec, store, rows, bucket, store_prefix)
        event_cursor = event_cursor.advance([r.id for r in rows[:handled]], now, GAP_TIMEOUT_S)
        from_events = len(landed)

        # The reconciler: a listing once per interval, in the budget the events left.
        listing, reconciled_at = state.listing, state.reconciled_at
        due = reconciled_at is None or now - reconciled_at >= reconcile_interval_s
        budget = spec.versions_per_tick - len(landed)
        if due and budget > 0:
            missed, listing, complete = _reconcile(context, spec, store, listing, budget, landed)
            landed.update(missed)
            if complete:  # else the next tick lists again until the backlog is done
                reconciled_at = now
            context.log.info(
                f"reconciled {store.uri(spec.prefix)}: {len(missed)} object(s) no event announced"
            )
        return _tick_result(
            context,
            spec,
            store,
            list(landed.values()),
            _EventModeCursor(event_cursor, listing, reconciled_at).to_json(),
            f"{store.uri(spec.prefix)} ({from_events} from {handled} event(s), up to id "
            f"{event_cursor.top})",
        )

    return _sensor


def _new_events(
    context: dg.SensorEvaluationContext, state: _EventModeCursor, events: EventTable, per_tick: int
) -> tuple[EventCursor, list[notifications.EventRow]]:
    """The notifications added since the cursor. The first tick in event mode follows the table
    from its end, not through its whole history; the reconciliation (due then) requests what
    landed before."""
    if state.events is None:
        return EventCursor(top=notifications.latest_id(events)), []
    limit = ROWS_PER_REQUEST * per_tick
    try:
        return state.events, notifications.read_events(events, state.events, limit)
    except notifications.TableResetError as exc:
        context.log.warning(f"{exc}: following it from its first row again")
        return EventCursor(), notifications.read_events(events, EventCursor(), limit)


def _announced(
    context: dg.SensorEvaluationContext,
    spec: _SensorSpec,
    store: ObjectStore,
    rows: list[notifications.EventRow],
    bucket: str,
    store_prefix: str,
) -> tuple[dict[str, Landed], int]:
    """The versions the rows announce (by version id), and how many rows were handled: the
    rest is read again next tick (the cursor stops before it)."""
    landed: dict[str, Landed] = {}
    current: dict[str, Landed | None] = {}  # one HEAD per key per tick
    handled = 0
    for row in rows:
        if len(landed) >= spec.versions_per_tick:
            break
        handled += 1
        try:
            keys = notifications.created_keys(
                row, bucket=bucket, store_prefix=store_prefix, prefix=spec.prefix
            )
        except notifications.MalformedEventError as exc:
            context.log.warning(f"skipped a notification row: {exc}")
            continue
        for key in keys:
            if key not in current:
                current[key] = _head(store, key)
            if current[key] is not None:
                landed.setdefault(_version(spec, current[key]), current[key])
    return landed, handled


def _head(store: ObjectStore, key: str) -> Landed | None:
    """The current version, not the event's: a HEAD gives what the listing gives, so both paths
    build the same version id; an event for a version overwritten since runs the current one
    (whose own event dedupes by run key). None: deleted since."""
    try:
        info = store.head(key)
    except FileNotFoundError:
        return None
    return Landed(key, info.etag or store.etag(key), info.last_modified, info.size)


def _version(spec: _SensorSpec, item: Landed) -> str:
    return paths.partition_key(item.key.removeprefix(spec.prefix), item.etag)


def _reconcile(
    context: dg.SensorEvaluationContext,
    spec: _SensorSpec,
    store: ObjectStore,
    cursor: LandingCursor,
    budget: int,
    requested: dict[str, Landed],
) -> tuple[dict[str, Landed], LandingCursor, bool]:
    """Objects the listing finds that no event announced: not requested in this tick and not
    handled before (in the ledger, or a registered per-file partition). Returns them by
    version id, the listing cursor, and whether it caught up."""
    objects = list(store.list(spec.prefix))
    fresh, _ = select_new(objects, cursor, max(len(objects), 1))
    # Checking a listed object is cheap (one lookup), requesting one is not: look at up to
    # 20 times the budget per tick.
    checked, missed = 0, {}
    for obj in fresh[: 20 * budget]:
        if len(missed) == budget:
            break
        checked += 1
        item = _landed(store, obj)
        if item is None:
            continue
        version = _version(spec, item)
        if version in requested or _handled_before(context, spec, store, version):
            continue
        missed[version] = item
    if checked:
        _, cursor = select_new(objects, cursor, checked)
    return missed, cursor, checked == len(fresh)


def _handled_before(
    context: dg.SensorEvaluationContext, spec: _SensorSpec, store: ObjectStore, version: str
) -> bool:
    if isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition):
        return context.instance.has_dynamic_partition(spec.partitions_def.name, version)
    return _handled_before_in_ledger(spec, store, version)


def _handled_before_in_ledger(spec: _SensorSpec, store: ObjectStore, version: str) -> bool:
    return store.exists(paths.ledger_object(spec.dataset, paths.file_id(version)))


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
