"""Landing sensor against the real S3 HTTP API (moto server)."""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from ml_platform.defs.ingest.assets import ingest_readings_job
from ml_platform.defs.ingest.sensors import build_landing_sensor
from ml_platform.defs.partitions import reading_files
from ml_platform.defs.resources import LakeResource, build_resources
from ml_platform.lib.landing import LandingCursor
from ml_platform.lib.store import StoreUnavailableError

pytestmark = pytest.mark.integration
PREFIX = "landing/readings/"


def make_sensor(cap: int = 100) -> dg.SensorDefinition:
    return build_landing_sensor(
        "readings", ingest_readings_job, reading_files, interval_s=1, max_requests_per_tick=cap
    )


def tick(sensor, instance, cursor, resources):
    """One evaluation, applying the dynamic-partition requests as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result.run_requests, result.cursor, result


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_2500_objects_are_each_requested_exactly_once_across_capped_ticks(
    s3_env, s3_server, instance
):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    keys = [f"{PREFIX}batch/{i:04d}.csv" for i in range(2500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    client.put_object(Bucket=bucket, Key="landing/labels/not-mine.csv", Body=b"x")

    sensor, resources, cursor = make_sensor(cap=300), build_resources(), None
    seen: list[str] = []
    ticks = 0
    while True:
        requests, cursor, result = tick(sensor, instance, cursor, resources)
        if not requests:
            assert isinstance(result, dg.SkipReason) and "no new objects" in result.skip_message
            break
        assert len(requests) <= 300
        seen += [r.run_key for r in requests]
        ticks += 1
    assert ticks == 9  # ceil(2500 / 300)
    assert len(seen) == len(set(seen)) == 2500
    assert {s.rsplit("@", 1)[0] for s in seen} == {k.removeprefix(PREFIX) for k in keys}
    partitions = instance.get_dynamic_partitions("reading_files")
    assert sorted(partitions) == sorted(seen)
    # Compact: only the keys of the high-water second are remembered, not every key seen.
    state = LandingCursor.from_json(cursor)
    at_hwm = {
        f"{o['Key']}@{o['ETag'].strip(chr(34))}"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
        for o in page["Contents"]
        if o["LastModified"] == state.hwm
    }
    assert state.keys_at_hwm == at_hwm and len(at_hwm) < 2500


def test_objects_in_the_same_second_reuploads_and_deletes(s3_env, s3_server, instance):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    sensor, resources = make_sensor(), build_resources()

    # Two objects in the same LastModified second, the second one landing after a tick.
    for _ in range(20):
        client.put_object(Bucket=bucket, Key=f"{PREFIX}a.csv", Body=b"a1")
        first, cursor, _ = tick(sensor, instance, None, resources)
        client.put_object(Bucket=bucket, Key=f"{PREFIX}b.csv", Body=b"b1")
        listed = client.list_objects_v2(Bucket=bucket, Prefix=PREFIX)["Contents"]
        if len({o["LastModified"] for o in listed}) == 1:
            break
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}b.csv")
        time.sleep(0.1)
    else:
        pytest.fail("could not land two objects within one second")
    assert [r.partition_key.split("@")[0] for r in first] == ["a.csv"]
    second, cursor, _ = tick(sensor, instance, cursor, resources)
    assert [r.partition_key.split("@")[0] for r in second] == ["b.csv"]
    original_run_key = first[0].run_key

    # Changed content under the same key: a new partition and run key.
    time.sleep(1.1)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}a.csv", Body=b"a2")
    changed, cursor, _ = tick(sensor, instance, cursor, resources)
    assert len(changed) == 1 and changed[0].run_key != original_run_key
    assert changed[0].partition_key.startswith("a.csv@")

    # The same bytes re-put: the same run key, so Dagster launches nothing new.
    time.sleep(1.1)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}a.csv", Body=b"a2")
    same, cursor, _ = tick(sensor, instance, cursor, resources)
    assert [r.run_key for r in same] == [changed[0].run_key]

    # A deleted object changes nothing: no request, cursor unchanged.
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}b.csv")
    nothing, after_delete, result = tick(sensor, instance, cursor, resources)
    assert nothing == [] and after_delete == cursor and isinstance(result, dg.SkipReason)


def test_unreachable_store_fails_the_tick_and_keeps_the_cursor(instance):
    from ml_platform_tests.servers import free_port

    lake = LakeResource(
        url="s3://nowhere",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="x",
        secret_access_key="y",
    )
    context = dg.build_sensor_context(
        instance=instance, cursor='{"hwm":null,"keys_at_hwm":[]}', resources={"lake": lake}
    )
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        make_sensor()(context)
    assert context.cursor == '{"hwm":null,"keys_at_hwm":[]}'
