"""MinIO bucket notifications kept in PostgreSQL: parse them, filter them, follow them by id.

MinIO's PostgreSQL target in the ``access`` format appends one row per event,
``INSERT INTO <table> (event_time, event_data) VALUES ($1, $2)``, to a table that our deployment
creates with an ``id bigserial primary key`` in front. ``event_data`` is ``{"Records": [record]}``
where ``record`` is an S3 event notification record (``eventName``, ``s3.bucket.name``,
``s3.object.key``/``size``/``eTag``/``sequencer``). MinIO's other targets wrap the same record as
``{"EventName", "Key", "Records"}``; only ``Records`` is relied on here, so both parse.

Object keys in records are URL-encoded the way Go's ``url.QueryEscape`` does it (a space is
``+``, a ``+`` is ``%2B``, ``/`` is ``%2F``); AWS S3 does the same. :func:`unquote_plus` undoes it.

Following the table: ``bigserial`` ids are taken when a row is inserted but become visible when
its transaction commits, so a reader can see id 8 before id 7. :class:`EventCursor` therefore
remembers the highest id seen and the ids below it not yet visible ("gaps"), re-reads only the
gaps, and gives a gap up after a timeout (a rolled-back insert never fills its id). New events are
never held back by a gap; an event that commits after its gap was given up on is left to the
listing reconciler.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from ml_platform.lib import sql

DEFAULT_TABLE = "minio_events"

#: A plain SQL identifier (what MinIO accepts unquoted): the table name is put into SQL text.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class MalformedEventError(ValueError):
    """A notification row that is not an S3 event record."""


def table_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, after checking it is a plain one.

    MinIO writes the name unquoted, so PostgreSQL folds it to lower case: the quoted form is the
    lower-cased name.
    """
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"invalid events table name {name!r}: use letters, digits and _ "
            "(not starting with a digit, at most 63 characters)"
        )
    return sql.ident(name.lower())


@dataclass(frozen=True)
class EventTable:
    """Where MinIO writes its notifications: a SQLAlchemy URL and a table name."""

    url: str = field(repr=False)  # holds the password
    table: str = DEFAULT_TABLE

    def __post_init__(self) -> None:
        table_identifier(self.table)

    def sqlalchemy_url(self) -> str:
        """``postgresql://`` and ``postgres://`` mean psycopg2 here, like everywhere in the
        project (SQLAlchemy 2.1 maps bare ``postgresql://`` to psycopg 3)."""
        for bare in ("postgresql://", "postgres://"):
            if self.url.startswith(bare):
                return "postgresql+psycopg2://" + self.url.removeprefix(bare)
        return self.url

    def describe(self) -> str:
        """The table and database without the password, for logs and descriptions."""
        from sqlalchemy.engine import make_url

        return f"{self.table} in {make_url(self.sqlalchemy_url()).render_as_string(True)}"


@dataclass(frozen=True)
class ObjectEvent:
    """One S3 event record: what happened to which object version."""

    event_id: int
    name: str  # "s3:ObjectCreated:Put" (MinIO) or "ObjectCreated:Put" (AWS)
    bucket: str
    key: str  # URL-decoded, relative to the bucket
    etag: str | None
    size: int | None

    @property
    def is_created(self) -> bool:
        return self.name.removeprefix("s3:").startswith("ObjectCreated:")


def parse_row(event_id: int, event_data: Mapping[str, Any] | str | bytes) -> list[ObjectEvent]:
    """The records of one notification row (JSONB arrives as a dict, or as text)."""
    data = json.loads(event_data) if isinstance(event_data, str | bytes) else event_data
    records = data.get("Records") if isinstance(data, Mapping) else None
    if not isinstance(records, list):
        raise MalformedEventError(f"event {event_id}: no 'Records' list")
    events = []
    for record in records:
        try:
            s3 = record["s3"]
            obj = s3["object"]
            etag = obj.get("eTag") or None
            size = obj.get("size")
            events.append(
                ObjectEvent(
                    event_id=event_id,
                    name=str(record["eventName"]),
                    bucket=str(s3["bucket"]["name"]),
                    key=unquote_plus(str(obj["key"])),
                    etag=etag.strip('"') if etag else None,
                    size=int(size) if size is not None else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedEventError(
                f"event {event_id}: not an S3 event record ({exc!r})"
            ) from exc
    return events


def landing_key(event: ObjectEvent, *, bucket: str, store_prefix: str, prefix: str) -> str | None:
    """The store-relative key of an object created under ``prefix`` of this store, else None.

    ``store_prefix`` is the folder of ``s3://bucket/folder/`` (``""`` or ending in ``/``);
    a "folder" marker (a key ending in ``/``) is not a file.
    """
    if not event.is_created or event.bucket != bucket or not event.key.startswith(store_prefix):
        return None
    key = event.key.removeprefix(store_prefix)
    return key if key.startswith(prefix) and not key.endswith("/") else None


# --- Following the table by id ----------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """Ids ``first..last`` not visible yet, first noticed at ``since`` (epoch seconds)."""

    first: int
    last: int
    since: float


@dataclass(frozen=True)
class EventCursor:
    """The highest event id seen (``top``) and the open gaps below it.

    Every id up to ``top`` that is not in a gap has been handled. A new cursor starts at 0 and
    reads the whole table; ids below its first row are one gap like any other (in flight, or
    pruned), so an insert still in flight at the first read is not lost either.
    """

    top: int = 0
    gaps: tuple[Gap, ...] = ()

    @property
    def settled(self) -> int:
        """Every id up to this one has been handled or given up on."""
        return self.gaps[0].first - 1 if self.gaps else self.top

    def advance(
        self, ids: Iterable[int], now: float, gap_timeout_s: float, max_gaps: int = 100
    ) -> EventCursor:
        """The cursor after handling rows ``ids`` (one read: the lowest unread ids, ascending)."""
        got = sorted(set(ids))
        if not got:
            return self._expire(now, gap_timeout_s, max_gaps)
        gaps: list[Gap] = []
        for gap in self.gaps:  # ids that became visible close (or split) their gap
            start = gap.first
            for i in (i for i in got if gap.first <= i <= gap.last):
                if i > start:
                    gaps.append(Gap(start, i - 1, gap.since))
                start = i + 1
            if start <= gap.last:
                gaps.append(Gap(start, gap.last, gap.since))
        # Ids above the old top that the read skipped over are new gaps.
        previous = self.top
        for i in (i for i in got if i > self.top):
            if i > previous + 1:
                gaps.append(Gap(previous + 1, i - 1, now))
            previous = i
        top = max(got[-1], self.top)
        return EventCursor(top, tuple(sorted(gaps, key=lambda g: g.first)))._expire(
            now, gap_timeout_s, max_gaps
        )

    def _expire(self, now: float, gap_timeout_s: float, max_gaps: int) -> EventCursor:
        """Give up on gaps older than the timeout (a rolled-back insert never fills its id), and
        on the oldest ones beyond ``max_gaps`` so the cursor stays small."""
        alive = [g for g in self.gaps if now - g.since < gap_timeout_s]
        alive = sorted(sorted(alive, key=lambda g: g.since)[-max_gaps:], key=lambda g: g.first)
        return EventCursor(self.top, tuple(alive)) if len(alive) != len(self.gaps) else self

    def to_dict(self) -> dict[str, Any]:
        return {"top": self.top, "gaps": [[g.first, g.last, round(g.since, 3)] for g in self.gaps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EventCursor:
        if not data:
            return cls()
        return cls(
            top=int(data.get("top") or 0),
            gaps=tuple(Gap(int(a), int(b), float(t)) for a, b, t in data.get("gaps", ())),
        )


@dataclass(frozen=True)
class EventRow:
    id: int
    event_time: datetime
    event_data: Any


@contextlib.contextmanager
def _connect(source: EventTable) -> Iterator[Any]:
    """One short connection (nothing held between ticks); an unreachable database fails fast."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        source.sqlalchemy_url(),
        poolclass=NullPool,
        connect_args={"connect_timeout": 5, "options": "-c statement_timeout=30000"},
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def read_events(source: EventTable, cursor: EventCursor, limit: int) -> list[EventRow]:
    """The ``limit`` lowest-id rows the cursor has not handled: its gaps, then rows above ``top``.

    The primary-key index serves the query, so a tick reads only the new rows. If the table was
    recreated or emptied (its highest id is below ``top``), this raises :class:`TableResetError`.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    from sqlalchemy import text

    table = table_identifier(source.table)
    params: dict[str, Any] = {"top": cursor.top, "limit": limit}
    where = ["id > :top"]
    for n, gap in enumerate(cursor.gaps):
        where.append(f"id BETWEEN :g{n}a AND :g{n}b")
        params[f"g{n}a"], params[f"g{n}b"] = gap.first, gap.last
    query = text(
        f"SELECT id, event_time, event_data FROM {table} "
        f"WHERE {' OR '.join(where)} ORDER BY id LIMIT :limit"
    )
    with _connect(source) as conn:
        rows = [EventRow(r.id, r.event_time, r.event_data) for r in conn.execute(query, params)]
        if not rows and cursor.top > 0:
            highest = conn.execute(text(f"SELECT max(id) FROM {table}")).scalar()
            if highest is None or highest < cursor.top:
                raise TableResetError(
                    f"{source.describe()}: highest id {highest} is below the cursor's "
                    f"{cursor.top} (table recreated or emptied)"
                )
        return rows


def latest_id(source: EventTable) -> int:
    """The highest event id in the table now (0 when empty): where a new cursor starts."""
    from sqlalchemy import text

    with _connect(source) as conn:
        table = table_identifier(source.table)
        return int(conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar())


class TableResetError(RuntimeError):
    """The events table no longer holds the ids the cursor points at."""


def created_keys(row: EventRow, *, bucket: str, store_prefix: str, prefix: str) -> list[str]:
    """Store-relative keys of the objects one row says were created under ``prefix``.

    Raises :class:`MalformedEventError` for a row that is not an S3 event; the caller skips it
    (one bad row must not stop every later tick).
    """
    events = parse_row(row.id, row.event_data)
    keys = (landing_key(e, bucket=bucket, store_prefix=store_prefix, prefix=prefix) for e in events)
    return [key for key in keys if key is not None]
