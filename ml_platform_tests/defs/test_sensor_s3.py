"""Landing sensor against the real S3 HTTP API (moto server).

Readings land in micro-batches: one tick turns the new object versions into runs of at most
``max_files`` files and ``max_bytes`` bytes, one landing day (the UTC date of ``LastModified``)
each, at most ``runs_per_tick`` runs. Scoring requests stay one run and one dynamic partition per
version. Expected batches are worked out by hand from the put order and the sizes.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

import dagster as dg
import pytest

from ml_platform.defs.ingest.assets import ingest_readings_job
from ml_platform.defs.ingest.sensors import BatchLimits, build_landing_sensor
from ml_platform.defs.partitions import landing_days, scoring_files
from ml_platform.defs.predictions.assets import scoring_job
from ml_platform.defs.resources import LakeResource, build_resources
from ml_platform.lib.landing import LandingCursor
from ml_platform.lib.store import StoreUnavailableError

pytestmark = pytest.mark.integration
PREFIX = "landing/readings/"
SCORING = "landing/scoring/"


def make_sensor(limits: BatchLimits | None = None) -> dg.SensorDefinition:
    return build_landing_sensor(
        "readings", ingest_readings_job, landing_days, interval_s=1, max_requests_per_tick=100,
        batch=limits or BatchLimits(),
    )  # fmt: skip


def tick(sensor, instance, cursor, resources):
    """One evaluation, applying the dynamic-partition requests as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result.run_requests, result.cursor, result


def batch(request: dg.RunRequest) -> list[str]:
    """The versions one batch run ingests."""
    return request.run_config["ops"]["raw_readings"]["config"]["versions"]


def versions(requests: list[dg.RunRequest]) -> list[str]:
    """The versions of a tick's requests, flattened in request order."""
    return [v for r in requests for v in batch(r)]


def listed(client, bucket: str, prefix: str) -> list[dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o for page in pages for o in page.get("Contents", [])]


def day_of(obj: dict) -> str:
    """The landing day of a listed object: the UTC date of its LastModified."""
    return obj["LastModified"].astimezone(UTC).date().isoformat()


def one_landing_day(client, bucket: str, prefix: str = PREFIX) -> str:
    """The one UTC day everything under ``prefix`` landed on (the hand-worked batches assume
    it; a test landing across midnight UTC cannot check them and is skipped)."""
    days = {day_of(o) for o in listed(client, bucket, prefix)}
    if len(days) != 1:
        pytest.skip(f"objects landed on both sides of midnight UTC: {sorted(days)}")
    return days.pop()


def put_in_order(client, bucket: str, names: list[str], bodies: list[bytes]) -> list[str]:
    """Put one object after the other, so LastModified follows the order of ``names`` (whose
    keys sort in that order too); their versions ``<name>@<etag>`` in that order."""
    out = []
    for name, body in zip(names, bodies, strict=True):
        etag = client.put_object(Bucket=bucket, Key=PREFIX + name, Body=body)["ETag"]
        out.append(f"{name}@{etag.strip(chr(34))}")
    return out


def test_2500_objects_are_each_requested_exactly_once_across_capped_ticks(
    s3_env, s3_server, instance
):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    keys = [f"{PREFIX}batch/{i:04d}.csv" for i in range(2500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    client.put_object(Bucket=bucket, Key="landing/labels/not-mine.csv", Body=b"x")
    objects = listed(client, bucket, PREFIX)
    day = {o["Key"].removeprefix(PREFIX): day_of(o) for o in objects}
    expected = {f"{o['Key'].removeprefix(PREFIX)}@{o['ETag'].strip(chr(34))}" for o in objects}
    single_day = len(set(day.values())) == 1

    # 100 files a run, 3 runs a tick: 300 versions a tick.
    sensor = make_sensor(BatchLimits(max_files=100, max_bytes=1 << 30, runs_per_tick=3))
    resources, cursor = build_resources(), None
    seen: list[str] = []
    runs_per_tick: list[int] = []
    run_keys: list[str] = []
    while True:
        requests, cursor, result = tick(sensor, instance, cursor, resources)
        if not requests:
            assert isinstance(result, dg.SkipReason) and "no new objects" in result.skip_message
            break
        assert result.dynamic_partitions_requests == []  # one partition per day, not per file
        assert len(requests) <= 3 and all(1 <= len(batch(r)) <= 100 for r in requests)
        for r in requests:  # each run is one landing day, the day its objects landed
            assert {day[v.rsplit("@", 1)[0]] for v in batch(r)} == {r.partition_key}
            assert r.tags["ml_platform/batch_files"] == str(len(batch(r)))
        seen += versions(requests)
        run_keys += [r.run_key for r in requests]
        runs_per_tick.append(len(requests))
    assert len(runs_per_tick) == 9  # ceil(2500 / 300)
    assert len(seen) == len(set(seen)) == 2500 and set(seen) == expected
    assert {s.rsplit("@", 1)[0] for s in seen} == {k.removeprefix(PREFIX) for k in keys}
    assert len(set(run_keys)) == len(run_keys)  # one run key per batch
    if single_day:
        assert runs_per_tick == [3] * 8 + [1]  # 8 x 300, then the last 100
    # Compact: only the keys of the high-water second are remembered, not every key seen.
    state = LandingCursor.from_json(cursor)
    at_hwm = {
        f"{o['Key']}@{o['ETag'].strip(chr(34))}" for o in objects if o["LastModified"] == state.hwm
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
        objects = listed(client, bucket, PREFIX)
        if len({o["LastModified"] for o in objects}) == 1:
            break
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}b.csv")
        time.sleep(0.1)
    else:
        pytest.fail("could not land two objects within one second")
    etag = {o["Key"].removeprefix(PREFIX): o["ETag"].strip('"') for o in objects}
    assert [batch(r) for r in first] == [[f"a.csv@{etag['a.csv']}"]]
    assert [r.partition_key for r in first] == [day_of(objects[0])]
    second, cursor, _ = tick(sensor, instance, cursor, resources)
    assert [batch(r) for r in second] == [[f"b.csv@{etag['b.csv']}"]]
    assert second[0].run_key != first[0].run_key
    original_run_key = first[0].run_key

    # Changed content under the same key: a new version and run key.
    time.sleep(1.1)
    etag_a2 = client.put_object(Bucket=bucket, Key=f"{PREFIX}a.csv", Body=b"a2")["ETag"]
    changed, cursor, _ = tick(sensor, instance, cursor, resources)
    assert versions(changed) == [f"a.csv@{etag_a2.strip(chr(34))}"] != [f"a.csv@{etag['a.csv']}"]
    assert len(changed) == 1 and changed[0].run_key != original_run_key
    head = client.head_object(Bucket=bucket, Key=f"{PREFIX}a.csv")
    assert changed[0].partition_key == head["LastModified"].astimezone(UTC).date().isoformat()

    # The same bytes re-put: the same batch, so the same run key and Dagster launches nothing new.
    time.sleep(1.1)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}a.csv", Body=b"a2")
    same, cursor, _ = tick(sensor, instance, cursor, resources)
    assert versions(same) == versions(changed)
    assert [r.run_key for r in same] == [changed[0].run_key]

    # A deleted object changes nothing: no request, cursor unchanged.
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}b.csv")
    nothing, after_delete, result = tick(sensor, instance, cursor, resources)
    assert nothing == [] and after_delete == cursor and isinstance(result, dg.SkipReason)


def test_300_files_landed_at_once_are_three_runs_of_120_120_60_in_one_tick(
    s3_env, s3_server, instance
):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    names = [f"burst/{i:03d}.csv" for i in range(300)]
    landed = put_in_order(client, bucket, names, [n.encode() for n in names])
    day = one_landing_day(client, bucket)
    sensor = make_sensor(BatchLimits(max_files=120, max_bytes=1 << 30, runs_per_tick=4))
    resources = build_resources()

    requests, cursor, result = tick(sensor, instance, None, resources)
    # Oldest first, 120 a run: 300 = 120 + 120 + 60, three of the four runs a tick may have.
    assert [batch(r) for r in requests] == [landed[:120], landed[120:240], landed[240:]]
    assert sorted(versions(requests)) == sorted(landed)  # each version exactly once
    assert [r.partition_key for r in requests] == [day, day, day]
    assert [r.tags["ml_platform/batch_files"] for r in requests] == ["120", "120", "60"]
    assert [r.tags["ml_platform/first_object"] for r in requests] == [
        f"s3://{bucket}/{PREFIX}{names[i]}" for i in (0, 120, 240)
    ]
    assert result.dynamic_partitions_requests == []
    run_keys = [r.run_key for r in requests]
    assert len(set(run_keys)) == 3 and all(day in k for k in run_keys)

    # Deterministic: the same tick evaluated again (a tick the daemon retries) names the same
    # runs, so Dagster would launch none of them twice.
    again, again_cursor, _ = tick(sensor, instance, None, resources)
    assert [r.run_key for r in again] == run_keys and [batch(r) for r in again] == [
        batch(r) for r in requests
    ]
    assert again_cursor == cursor

    # The cursor has all 300: the next tick requests nothing.
    nothing, after, result = tick(sensor, instance, cursor, resources)
    assert nothing == [] and after == cursor and isinstance(result, dg.SkipReason)


def test_a_byte_cap_splits_batches_and_a_file_over_it_runs_alone(s3_env, s3_server, instance):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    sizes = [400, 300, 300, 500, 100, 1500, 50, 50]
    names = [f"sized/{i}.csv" for i in range(len(sizes))]
    landed = put_in_order(client, bucket, names, [b"x" * n for n in sizes])
    assert [o["Size"] for o in listed(client, bucket, PREFIX)] == sizes
    day = one_landing_day(client, bucket)
    sensor = make_sensor(BatchLimits(max_files=100, max_bytes=1000, runs_per_tick=4))

    requests, cursor, _ = tick(sensor, instance, None, build_resources())
    # By hand, in landing order with at most 1000 bytes a run:
    #   400 + 300 + 300 = 1000 (exactly the cap: it fits);
    #   500 + 100 = 600 (+ 1500 would be 2100);
    #   1500 alone (over the cap, but a file is never split or left behind);
    #   50 + 50 = 100 (1500 + 50 would be over the cap).
    assert [batch(r) for r in requests] == [landed[0:3], landed[3:5], landed[5:6], landed[6:8]]
    assert [r.tags["ml_platform/batch_files"] for r in requests] == ["3", "2", "1", "2"]
    assert {r.partition_key for r in requests} == {day}
    assert len({r.run_key for r in requests}) == 4

    nothing, _, result = tick(sensor, instance, cursor, build_resources())
    assert nothing == [] and isinstance(result, dg.SkipReason)


def test_runs_per_tick_are_capped_and_the_rest_comes_next_tick(s3_env, s3_server, instance):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    names = [f"backlog/{i:02d}.csv" for i in range(45)]
    landed = put_in_order(client, bucket, names, [n.encode() for n in names])
    day = one_landing_day(client, bucket)
    sensor = make_sensor(BatchLimits(max_files=10, max_bytes=1 << 30, runs_per_tick=2))
    resources, cursor = build_resources(), None

    per_tick: list[list[list[str]]] = []
    run_keys: list[str] = []
    for _ in range(4):
        requests, cursor, result = tick(sensor, instance, cursor, resources)
        per_tick.append([batch(r) for r in requests])
        run_keys += [r.run_key for r in requests]
        assert {r.partition_key for r in requests} <= {day}
    # 2 runs of 10 a tick, oldest first: 20, 20, then the last 5, then nothing.
    assert per_tick == [
        [landed[0:10], landed[10:20]],
        [landed[20:30], landed[30:40]],
        [landed[40:45]],
        [],
    ]
    assert isinstance(result, dg.SkipReason)
    seen = [v for runs in per_tick for run in runs for v in run]
    assert len(seen) == len(set(seen)) == 45 and set(seen) == set(landed)  # none lost or repeated
    assert len(set(run_keys)) == len(run_keys) == 5


def test_the_runs_per_tick_cap_holds_when_the_byte_cap_splits_batches(s3_env, s3_server, instance):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    names = [f"big/{i}.csv" for i in range(6)]
    landed = put_in_order(client, bucket, names, [b"x" * 600] * 6)  # 2 never fit in 1000 bytes
    sensor = make_sensor(BatchLimits(max_files=10, max_bytes=1000, runs_per_tick=2))
    resources, cursor = build_resources(), None
    per_tick = []
    for _ in range(4):
        requests, cursor, _ = tick(sensor, instance, cursor, resources)
        per_tick.append([batch(r) for r in requests])
    assert per_tick == [
        [landed[0:1], landed[1:2]],
        [landed[2:3], landed[3:4]],
        [landed[4:5], landed[5:6]],
        [],
    ]


def test_scoring_requests_stay_one_run_and_one_dynamic_partition_per_version(
    s3_env, s3_server, instance
):
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    keys = [f"{SCORING}req/{i:03d}.csv" for i in range(250)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    expected = {
        f"{o['Key'].removeprefix(SCORING)}@{o['ETag'].strip(chr(34))}": f"s3://{bucket}/{o['Key']}"
        for o in listed(client, bucket, SCORING)
    }
    sensor = build_landing_sensor(
        "scoring", scoring_job, scoring_files, interval_s=1, max_requests_per_tick=100
    )
    resources, cursor = build_resources(), None
    seen: dict[str, str] = {}
    sizes = []
    while True:
        requests, cursor, result = tick(sensor, instance, cursor, resources)
        if not requests:
            assert isinstance(result, dg.SkipReason)
            break
        assert all(r.run_key == r.partition_key for r in requests)  # one run per version
        assert [list(d.partition_keys) for d in result.dynamic_partitions_requests] == [
            [r.partition_key for r in requests]
        ]
        seen |= {r.partition_key: r.tags["ml_platform/object"] for r in requests}
        sizes.append(len(requests))
    assert sizes == [100, 100, 50]
    assert seen == expected
    assert sorted(instance.get_dynamic_partitions("scoring_files")) == sorted(expected)


def daemon_tick(sensor, instance, cursor, resources):
    """One tick as the daemon evaluates it (``evaluate_tick``, which also sees a cursor set with
    ``context.update_cursor``): the cursor it stores afterwards (the evaluation's; the one it had
    when the evaluation raised), what the evaluation produced (None if it raised) and the error.
    For ticks that fail or skip: one with partitioned run requests needs a repository."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    try:
        produced = sensor.evaluate_tick(context)
    except Exception as exc:
        return cursor, None, exc
    return produced.cursor, produced, None


def test_unreachable_store_fails_the_tick_and_keeps_the_cursor(s3_env, s3_server, instance):
    from ml_platform_tests.servers import free_port

    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    sensor, resources = make_sensor(), build_resources()
    first = put_in_order(client, bucket, ["down/0.csv"], [b"a"])
    requests, cursor, _ = tick(sensor, instance, None, resources)
    assert versions(requests) == first
    pending = put_in_order(client, bucket, ["down/1.csv", "down/2.csv"], [b"b", b"c"])

    unreachable = LakeResource(
        url=f"s3://{bucket}",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="x",
        secret_access_key="y",
    )
    kept, produced, error = daemon_tick(sensor, instance, cursor, {"lake": unreachable})
    # The tick fails: it produces no result, so no cursor, and the daemon keeps the one it had.
    assert produced is None and kept == cursor, produced
    assert isinstance(error, StoreUnavailableError) and "unreachable" in str(error)
    # The store answers again: the next tick requests exactly the versions that were pending.
    recovered, after, _ = tick(sensor, instance, kept, resources)
    assert versions(recovered) == pending
    nothing, _, result = tick(sensor, instance, after, resources)
    assert nothing == [] and isinstance(result, dg.SkipReason)


def test_a_tick_waits_while_a_batch_of_its_dataset_is_queued(s3_env, s3_server, instance):
    """While a batch waits to start, ticks request nothing and keep their cursor; once it has
    started, one tick takes everything landed meanwhile as one batch."""
    from ml_platform_tests.defs.test_lakehouse_sensor import lakehouse_run

    def ingest_run(dataset: str):  # a queued run needs its code location's origin
        return lakehouse_run(instance, dg.DagsterRunStatus.QUEUED, f"ingest_{dataset}_job",
                             {"ml_platform/kind": "ingest", "ml_platform/ingest": dataset})  # fmt: skip

    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    sensor, resources = make_sensor(), build_resources()
    first = put_in_order(client, bucket, ["wait/0.csv"], [b"a"])
    requests, cursor, _ = tick(sensor, instance, None, resources)
    assert versions(requests) == first
    queued = ingest_run("readings")
    later = put_in_order(client, bucket, [f"wait/{i}.csv" for i in (1, 2, 3)], [b"b", b"c", b"d"])
    for _ in range(2):
        requests, kept, result = tick(sensor, instance, cursor, resources)
        assert requests == [] and kept == cursor, result
    # A queued run of the other dataset does not hold readings back.
    ingest_run("labels")
    from dagster._core.events import DagsterEvent, DagsterEventType

    start = DagsterEvent(event_type_value=DagsterEventType.RUN_START.value,
                         job_name="ingest_readings_job")  # fmt: skip
    instance.report_dagster_event(start, run_id=queued.run_id)
    assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.STARTED
    requests, cursor, _ = tick(sensor, instance, cursor, resources)
    assert [batch(r) for r in requests] == [later]
