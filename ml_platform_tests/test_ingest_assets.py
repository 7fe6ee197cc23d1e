"""``raw_readings``/``raw_labels`` materialized against the real S3 API: bronze parts and quarantine."""

import json

import dagster as dg
import pytest

from ml_platform.defs.ingest.assets import raw_labels, raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform_tests.helpers import READINGS_HEADER as HEADER

pytestmark = pytest.mark.integration
THREE_DAYS = HEADER + (
    "2024-03-01T10:00:00Z,s1,50,2,5,20\n"
    "2024-03-02T10:00:00Z,s1,51,2,5,20\n"
    "2024-03-02T10:00:00Z,s2,52,2,5,20\n"
    "2024-03-03T23:59:59Z,s2,53,2,5,20\n"
)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def land(s3_server, s3_env, dataset: str, name: str, body: bytes) -> str:
    """Upload to the landing zone; return the partition key the sensor would give it."""
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    response = client.put_object(Bucket=bucket, Key=paths.landing_object(dataset, name), Body=body)
    return paths.partition_key(name, response["ETag"])


def materialize(instance, asset, partition_key: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(asset.partitions_def.name, [partition_key])
    return dg.materialize(
        [asset],
        instance=instance,
        partition_key=partition_key,
        resources=build_resources(),
        raise_on_error=False,
    )


def keys_under(s3_server, s3_env, prefix: str) -> list[str]:
    bucket = s3_env["ML_PLATFORM_STORE_URL"][5:]
    pages = (
        s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_a_three_day_file_writes_bronze_parts_for_exactly_those_days(s3_server, s3_env, instance):
    key = land(s3_server, s3_env, "readings", "plant-a/2024-03.csv", THREE_DAYS.encode())
    result = materialize(instance, raw_readings, key)
    assert result.success
    fid = paths.file_id(key)
    assert keys_under(s3_server, s3_env, "lake/bronze/readings/") == [
        paths.bronze_part("readings", day, fid)
        for day in ("2024-03-01", "2024-03-02", "2024-03-03")
    ]
    [mat] = result.asset_materializations_for_node("raw_readings")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["dates"] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert meta["rows_by_date"] == {"2024-03-01": 1, "2024-03-02": 2, "2024-03-03": 1}
    assert (meta["rows_in"], meta["rows_out"], meta["sensor_count"]) == (4, 4, 2)
    assert meta["object"].endswith("landing/readings/plant-a/2024-03.csv")
    assert len(meta["sha256"]) == 64 and meta["bytes"] == len(THREE_DAYS)
    # Re-running the partition overwrites the same objects: idempotent.
    assert materialize(instance, raw_readings, key).success
    assert len(keys_under(s3_server, s3_env, "lake/bronze/readings/")) == 3


BAD_FILES = {
    "corrupt.parquet": (b"PAR1 this is not parquet", "unreadable"),
    "empty.csv": (b"", "empty_file"),
    "header-only.csv": (HEADER.encode(), "no_rows"),
    "missing-column.csv": (
        b"timestamp,sensor_id,temperature\n2024-03-01T00:00:00Z,s1,4\n",
        "missing_columns",
    ),
    "wrong-type.csv": ((HEADER + "2024-03-01T00:00:00Z,s1,warm,2,5,20\n").encode(), "wrong_type"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_fail_their_run_and_are_quarantined_with_a_reason(
    name, s3_server, s3_env, instance
):
    body, reason = BAD_FILES[name]
    key = land(s3_server, s3_env, "readings", name, body)
    result = materialize(instance, raw_readings, key)
    assert not result.success
    failure = result.failure_data_for_node("raw_readings").error
    assert name in failure.message and reason in failure.message

    fid = paths.file_id(key)
    bucket = s3_env["ML_PLATFORM_STORE_URL"][5:]
    client = s3_server.client()
    copy = client.get_object(Bucket=bucket, Key=paths.quarantine_object("readings", fid, name))
    assert copy["Body"].read() == body
    record = json.loads(
        client.get_object(Bucket=bucket, Key=paths.quarantine_record("readings", fid, name))[
            "Body"
        ].read()
    )
    assert record["reason"] == reason and record["partition_key"] == key and record["message"]
    # The landed original is untouched and nothing reached bronze.
    landed = client.get_object(Bucket=bucket, Key=paths.landing_object("readings", name))
    assert landed["Body"].read() == body
    assert keys_under(s3_server, s3_env, "lake/bronze/") == []


def test_labels_are_ingested_with_their_own_contract(s3_server, s3_env, instance):
    body = b"sensor_id,timestamp,failure\ns1,2024-03-02T04:00:00Z,1\ns2,2024-03-05T00:00:00Z,1\n"
    key = land(s3_server, s3_env, "labels", "labels.csv", body)
    result = materialize(instance, raw_labels, key)
    assert result.success
    assert keys_under(s3_server, s3_env, "lake/bronze/labels/") == [
        paths.bronze_part("labels", d, paths.file_id(key)) for d in ("2024-03-02", "2024-03-05")
    ]


def test_an_overwritten_object_is_not_ingested_under_its_old_version(s3_server, s3_env, instance):
    old = land(s3_server, s3_env, "readings", "r.csv", THREE_DAYS.encode())
    land(
        s3_server,
        s3_env,
        "readings",
        "r.csv",
        (THREE_DAYS + "2024-03-04T00:00:00Z,s1,1,1,1,1\n").encode(),
    )
    result = materialize(instance, raw_readings, old)
    assert not result.success
    assert "was overwritten" in result.failure_data_for_node("raw_readings").error.message


def test_the_s3_download_only_accepts_the_expected_version(s3_server, s3_env):
    from ml_platform.lib.store import ObjectChangedError, open_store

    store = open_store(s3_env["ML_PLATFORM_STORE_URL"])
    store.put_bytes(b"v1", "landing/readings/v.csv")
    etag = store.etag("landing/readings/v.csv")
    with store.local_copy("landing/readings/v.csv", if_match=etag) as path:
        assert path.read_bytes() == b"v1"
    store.put_bytes(b"v2", "landing/readings/v.csv")
    with (
        pytest.raises(ObjectChangedError),
        store.local_copy("landing/readings/v.csv", if_match=etag),
    ):
        pass


def test_publishing_is_all_days_or_none(s3_server, s3_env, tmp_path):
    from ml_platform.defs.ingest.assets import _publish
    from ml_platform.lib.ingest import ingest_file
    from ml_platform.lib.store import StoreUnavailableError, open_store

    src = tmp_path / "r.csv"
    src.write_text(THREE_DAYS)
    report = ingest_file(src, build_resources()["ingest"].contract("readings"), tmp_path / "out")
    store = open_store(s3_env["ML_PLATFORM_STORE_URL"])
    real_put, calls = store.put_file, []

    def flaky_put(src, dst, *, move=False):
        calls.append(dst)
        if len(calls) == 2:
            raise StoreUnavailableError("store went away mid-publish")
        return real_put(src, dst, move=move)

    store.put_file = flaky_put
    with pytest.raises(StoreUnavailableError):
        _publish(store, "readings", "f-1", report)
    assert keys_under(s3_server, s3_env, "lake/bronze/") == []  # the first day was withdrawn
    store.put_file = real_put
    assert len(_publish(store, "readings", "f-1", report)) == 3
