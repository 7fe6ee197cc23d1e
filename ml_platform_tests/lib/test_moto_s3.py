"""The devstack's moto launcher (``ml_platform.devstack.moto_s3``): what it changes in moto's S3
server leaves the answers as they were."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from botocore.utils import parse_to_aware_datetime as botocore_parse

from ml_platform.devstack import moto_s3

TIMESTAMPS = [
    "2026-12-07T10:11:12.123Z",
    "2026-12-07T10:11:12Z",
    "2026-12-07T10:11:12.123456",
    "2026-12-07T10:11:12+02:00",
    "2026-12-07T23:59:59.999-05:30",
    "2026-12-07 10:11:12",
    "Mon, 07 Dec 2026 10:11:12 GMT",  # not ISO: botocore's parser
    1_765_100_000,
    1_765_100_000.5,
    datetime(2026, 12, 7, 10, 11, 12, tzinfo=UTC),
]


@pytest.mark.unit
@pytest.mark.parametrize("value", TIMESTAMPS, ids=str)
def test_timestamps_parse_as_botocore_parses_them(value):
    ours, theirs = moto_s3.parse_to_aware_datetime(value), botocore_parse(value)
    assert ours == theirs
    # moto formats the parsed value with strftime: the same instant must print the same.
    assert ours.strftime("%Y-%m-%dT%H:%M:%S.%f%z") == theirs.strftime("%Y-%m-%dT%H:%M:%S.%f%z")


@pytest.mark.unit
def test_the_backend_listing_is_moto_s_own_and_read_once(monkeypatch):
    import moto.backends

    monkeypatch.setattr(moto.backends, "list_of_moto_modules", moto.backends.list_of_moto_modules)
    listed = list(moto.backends.list_of_moto_modules())
    moto_s3._cache_backend_listing()
    monkeypatch.setattr(os, "listdir", lambda path: pytest.fail(f"listed {path} again"))
    assert list(moto.backends.list_of_moto_modules()) == listed
    assert "s3" in listed


@pytest.mark.integration
def test_a_listing_of_the_launched_server_gives_the_objects_own_times(s3_server):
    client = s3_server.client()
    client.create_bucket(Bucket="moto-launcher")
    client.put_object(Bucket="moto-launcher", Key="a/b.csv", Body=b"x,y\n1,2\n")
    head = client.head_object(Bucket="moto-launcher", Key="a/b.csv")
    [listed] = client.list_objects_v2(Bucket="moto-launcher", Prefix="a/")["Contents"]
    assert listed["Key"] == "a/b.csv"
    assert listed["ETag"] == head["ETag"]
    assert listed["Size"] == head["ContentLength"] == 8
    # HEAD's Last-Modified has whole seconds; the listing's ISO time is the same instant.
    assert listed["LastModified"].replace(microsecond=0) == head["LastModified"]
    assert abs(listed["LastModified"] - datetime.now(UTC)).total_seconds() < 60


@pytest.mark.integration
def test_a_fetch_is_one_get_per_object_and_a_small_file_one_put(s3_server, tmp_path):
    from ml_platform.lib.store import S3Store

    client = s3_server.client()
    client.create_bucket(Bucket="one-request")
    calls: list[str] = []
    client.meta.events.register("before-call.s3.*", lambda model, **kw: calls.append(model.name))
    store = S3Store("one-request", "lake", client)
    for i in range(3):
        (tmp_path / f"{i}.parquet").write_bytes(b"part %d" % i)
        store.put_file(tmp_path / f"{i}.parquet", f"bronze/{i}.parquet")
    assert calls == ["PutObject"] * 3
    calls.clear()
    fetched = store.fetch([f"bronze/{i}.parquet" for i in range(3)], tmp_path / "into")
    assert sorted(calls) == ["GetObject"] * 3
    assert [f.read_bytes() for f in fetched] == [b"part 0", b"part 1", b"part 2"]
