"""The landing cursor: exactly-once hand-out of objects, with 1-second LastModified resolution."""

from datetime import UTC, datetime, timedelta

import pytest

from ml_platform.lib import paths
from ml_platform.lib.landing import LandingCursor, select_new
from ml_platform.lib.store import ObjectInfo

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def obj(key: str, second: int) -> ObjectInfo:
    return ObjectInfo(key=key, last_modified=T0 + timedelta(seconds=second), size=1, etag="e")


def drain(objects: list[ObjectInfo], limit: int, cursor: LandingCursor | None = None):
    cursor = cursor or LandingCursor()
    handed: list[str] = []
    for _ in range(len(objects) + 2):
        new, cursor = select_new(objects, LandingCursor.from_json(cursor.to_json()), limit)
        if not new:
            break
        handed += [o.key for o in new]
    return handed, cursor


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
def test_every_object_is_handed_out_exactly_once_whatever_the_cap(limit: int) -> None:
    # many keys share a second: the cap must not lose the rest of that second
    objects = [obj(f"k{i:02d}", i // 4) for i in range(17)]
    handed, _ = drain(objects, limit)
    assert sorted(handed) == sorted(o.key for o in objects)
    assert len(handed) == len(set(handed))


def test_objects_landing_later_in_the_same_second_are_still_seen() -> None:
    first, cursor = select_new([obj("a", 5)], LandingCursor(), 10)
    assert [o.key for o in first] == ["a"]
    second, cursor = select_new([obj("a", 5), obj("b", 5)], cursor, 10)
    assert [o.key for o in second] == ["b"]
    assert cursor.keys_at_hwm == {"a@e", "b@e"}


def test_cursor_stays_compact_when_time_moves_on() -> None:
    _, cursor = drain([obj(f"k{i}", i) for i in range(50)], 10)
    assert cursor.hwm == T0 + timedelta(seconds=49)
    assert cursor.keys_at_hwm == {"k49@e"}


def test_a_key_overwritten_within_the_same_second_is_a_new_version() -> None:
    first, cursor = select_new([obj("a", 5)], LandingCursor(), 10)
    rewritten = ObjectInfo(key="a", last_modified=first[0].last_modified, size=2, etag="other")
    again, _ = select_new([rewritten], cursor, 10)
    assert again == [rewritten]


def test_a_local_file_moved_in_with_an_old_mtime_is_seen(tmp_path) -> None:
    import os

    from ml_platform.lib.store import LocalStore

    store = LocalStore(tmp_path / "lake")
    store.put_bytes(b"new", "landing/readings/new.csv")
    _, cursor = select_new(store.list("landing/readings/"), LandingCursor(), 10)
    old = tmp_path / "old.csv"
    old.write_bytes(b"old")
    os.utime(old, (0, 0))  # mtime in 1970, as `mv` or `cp -p` of an old file keeps it
    old.rename(tmp_path / "lake/landing/readings/old.csv")
    new, _ = select_new(store.list("landing/readings/"), cursor, 10)
    assert [o.key for o in new] == ["landing/readings/old.csv"]


def test_nothing_new_keeps_the_cursor() -> None:
    cursor = LandingCursor(hwm=T0, keys_at_hwm=frozenset({"a@e"}))
    assert select_new([obj("a", 0)], cursor, 5) == ([], cursor)


def test_partition_key_round_trip_and_file_id_is_path_safe() -> None:
    key = paths.partition_key("plant 1/day 1/Readings (1).csv.gz", '"abc123"')
    assert key == "plant 1/day 1/Readings (1).csv.gz@abc123"
    assert paths.split_partition_key(key) == ("plant 1/day 1/Readings (1).csv.gz", "abc123")
    fid = paths.file_id(key)
    assert fid.startswith("Readings-1-") and "/" not in fid and " " not in fid
    assert fid != paths.file_id(paths.partition_key("plant 1/day 1/Readings (1).csv.gz", "other"))
    with pytest.raises(ValueError, match="not a landing partition key"):
        paths.split_partition_key("no-etag")


@pytest.mark.parametrize(
    "relative_key",
    ["a...b.csv", "....csv", "tab\there.csv", "100%/x%2E.csv", "ünïcødé/日本.csv", "a b/c@d.csv"],
)
def test_any_object_key_makes_a_valid_reversible_partition_key(relative_key: str) -> None:
    from dagster._core.definitions.partitions.utils.base import (
        raise_error_on_invalid_partition_key_substring,
    )

    key = paths.partition_key(relative_key, "etag1")
    raise_error_on_invalid_partition_key_substring([key])
    assert paths.split_partition_key(key) == (relative_key, "etag1")
