"""Which landed objects are new since the last sensor tick: a compact, exact cursor.

S3 ``LastModified`` has one-second resolution and listings come in key order, so the cursor keeps
a high-water mark (the newest ``LastModified`` handed out) plus the object versions (key and
ETag) handed out *at* that instant, so a key overwritten within the same second is still new. Objects are taken oldest first, capped per tick; whatever is left at the high-water
second is still "not seen" and is taken next tick. The cursor never grows beyond the keys that
share one timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ml_platform.lib.store import ObjectInfo


@dataclass(frozen=True)
class LandingCursor:
    hwm: datetime | None = None
    keys_at_hwm: frozenset[str] = field(default_factory=frozenset)

    def is_new(self, obj: ObjectInfo) -> bool:
        if self.hwm is None or obj.last_modified > self.hwm:
            return True
        return obj.last_modified == self.hwm and version(obj) not in self.keys_at_hwm

    def to_json(self) -> str:
        return json.dumps(
            {
                "hwm": self.hwm.isoformat() if self.hwm else None,
                "keys_at_hwm": sorted(self.keys_at_hwm),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> LandingCursor:
        if not text:
            return cls()
        data = json.loads(text)
        hwm = datetime.fromisoformat(data["hwm"]) if data.get("hwm") else None
        return cls(hwm=hwm, keys_at_hwm=frozenset(data.get("keys_at_hwm", ())))


def version(obj: ObjectInfo) -> str:
    """One object version: its key and ETag (or, where the listing has none, its size)."""
    return f"{obj.key}@{obj.etag or obj.size}"


def select_new(
    objects: Iterable[ObjectInfo], cursor: LandingCursor, limit: int
) -> tuple[list[ObjectInfo], LandingCursor]:
    """The oldest ``limit`` objects not yet handed out, and the cursor that records them."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    fresh = sorted((o for o in objects if cursor.is_new(o)), key=lambda o: (o.last_modified, o.key))
    taken = fresh[:limit]
    if not taken:
        return [], cursor
    hwm = taken[-1].last_modified
    at_hwm = {version(o) for o in taken if o.last_modified == hwm}
    if hwm == cursor.hwm:
        at_hwm |= cursor.keys_at_hwm
    return taken, LandingCursor(hwm=hwm, keys_at_hwm=frozenset(at_hwm))
