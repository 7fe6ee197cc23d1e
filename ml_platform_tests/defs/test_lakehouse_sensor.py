"""The lakehouse sensor on a real Dagster instance: coalesced runs, one waiting at a time."""

import json
import time

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from ml_platform.defs.lakehouse import sensors
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START, build_lakehouse_sensor
from ml_platform.defs.partitions import daily

#: The tag serialising lakehouse runs (LAKEHOUSE_TAGS).
SERIAL = {"ml_platform/lakehouse": "serial"}


def land(instance: dg.DagsterInstance, *days: str) -> int:
    """A raw_readings materialization touching ``days``, as ingest reports it; its storage id."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization("raw_readings", metadata={"dates": dg.MetadataValue.json(days)})
    )
    return newest_raw_readings_id(instance)


def newest_raw_readings_id(instance: dg.DagsterInstance) -> int:
    [record] = instance.fetch_materializations(dg.AssetKey("raw_readings"), limit=1).records
    return record.storage_id


def tick(instance: dg.DagsterInstance, cursor: str | None = None):
    sensor = build_lakehouse_sensor(interval_s=1, max_requests_per_tick=10)
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def ranges(result) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests]


def selection(result) -> set[str]:
    [request] = result.run_requests
    return {key.to_user_string() for key in request.asset_selection}


def rebuild(instance: dg.DagsterInstance, day: str, while_running=lambda: None) -> None:
    """A real run materializing daily_aggregates[day]; ``while_running`` is called inside it."""

    @dg.asset(name="daily_aggregates", partitions_def=daily)
    def stand_in() -> None:
        while_running()

    assert dg.materialize([stand_in], instance=instance, partition_key=day).success


def lakehouse_run(instance, status: dg.DagsterRunStatus, job_name="lakehouse_job", tags=SERIAL):
    """A run (of lakehouse_job with its serialising tag unless told) in ``status``."""
    # Queued runs need the origin of their code location (the daemon launches them from it).
    location = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("ml_platform"), "__repository__")
    return create_run_for_test(
        instance,
        job_name=job_name,
        status=status,
        tags=tags,
        remote_job_origin=location.get_job_origin(job_name),
    )


def report(instance, run, event_type: DagsterEventType, status: dg.DagsterRunStatus) -> None:
    """A run event as the run coordinator or worker reports it; the run is then in ``status``."""
    event = DagsterEvent(event_type_value=event_type.value, job_name=run.job_name)
    instance.report_dagster_event(event, run_id=run.run_id)
    assert instance.get_run_by_id(run.run_id).status == status


def test_fifty_files_on_overlapping_days_make_one_run_over_their_union(instance, monkeypatch):
    monkeypatch.setattr(sensors, "PAGE_SIZE", 7)  # 50 records: 8 pages
    for i in range(50):  # file i touches 2024-01-(i % 10 + 1) and the day after
        land(instance, f"2024-01-{i % 10 + 1:02d}", f"2024-01-{i % 10 + 2:02d}")
    result = tick(instance)
    assert ranges(result) == [("2024-01-01", "2024-01-11")]
    [request] = result.run_requests
    assert request.tags["ml_platform/coalesced_materializations"] == "50"
    assert request.run_key == f"lakehouse:{newest_raw_readings_id(instance)}:2024-01-01:2024-01-11"
    assert selection(result) == {"sensor_chunks", "daily_aggregates"}
    assert tick(instance).run_requests[0].run_key == request.run_key  # deterministic
    assert isinstance(tick(instance, result.cursor), dg.SkipReason)


def test_a_tick_reads_at_most_its_bound_and_the_next_tick_the_rest(instance, monkeypatch):
    monkeypatch.setattr(sensors, "PAGE_SIZE", 7)
    monkeypatch.setattr(sensors, "MAX_RECORDS_PER_TICK", 20)
    for day in range(1, 21):
        land(instance, f"2024-02-{day:02d}")
    for _ in range(5):
        land(instance, "2024-02-25")
    first = tick(instance)
    assert ranges(first) == [("2024-02-01", "2024-02-20")]
    assert first.run_requests[0].tags["ml_platform/coalesced_materializations"] == "20"
    second = tick(instance, first.cursor)
    assert ranges(second) == [("2024-02-25", "2024-02-25")]
    assert second.run_requests[0].tags["ml_platform/coalesced_materializations"] == "5"
    assert isinstance(tick(instance, second.cursor), dg.SkipReason)


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING],
)
def test_no_request_while_a_lakehouse_run_waits_then_one_run_over_everything(instance, status):
    land(instance, "2024-01-05")
    first = tick(instance)
    assert ranges(first) == [("2024-01-05", "2024-01-05")]
    # The requested run waits behind the running one; files keep landing.
    waiting = lakehouse_run(instance, status)
    land(instance, "2024-01-02")
    land(instance, "2024-01-03", "2024-01-04")
    assert isinstance(tick(instance, first.cursor), dg.SkipReason)  # the cursor stays
    land(instance, "2024-01-06")
    report(instance, waiting, DagsterEventType.RUN_START, dg.DagsterRunStatus.STARTED)
    after_start = tick(instance, first.cursor)
    assert ranges(after_start) == [("2024-01-02", "2024-01-06")]
    assert after_start.run_requests[0].tags["ml_platform/coalesced_materializations"] == "3"


def test_only_waiting_runs_of_the_lakehouse_block_it(instance):
    lakehouse_run(instance, dg.DagsterRunStatus.QUEUED, job_name="other_job", tags={})
    lakehouse_run(instance, dg.DagsterRunStatus.STARTED)
    lakehouse_run(instance, dg.DagsterRunStatus.SUCCESS)
    land(instance, "2024-01-02")
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-02")]


def test_a_finished_waiting_run_unblocks_the_sensor(instance):
    waiting = lakehouse_run(instance, dg.DagsterRunStatus.QUEUED)
    land(instance, "2024-01-02")
    assert isinstance(tick(instance), dg.SkipReason)
    instance.report_run_canceled(waiting)
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-02")]


def test_waiting_readings_batches_defer_the_run_for_a_bounded_time(instance, monkeypatch):
    batch = {"ml_platform/kind": "ingest", "ml_platform/ingest": "readings"}
    lakehouse_run(instance, dg.DagsterRunStatus.QUEUED, job_name="ingest_labels_job",
                  tags={"ml_platform/kind": "ingest", "ml_platform/ingest": "labels"})  # fmt: skip
    land(instance, "2024-01-02")
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-02")]  # a labels batch: no wait
    waiting = lakehouse_run(instance, dg.DagsterRunStatus.QUEUED, job_name="ingest_readings_job",
                            tags=batch)  # fmt: skip
    skipped = tick(instance)
    assert isinstance(skipped, dg.SkipReason) and "batches" in skipped.skip_message
    # MAX_DEFER_S after the oldest new materialization the run goes ahead, batches or not.
    now = time.time()
    monkeypatch.setattr(sensors.time, "time", lambda: now + sensors.MAX_DEFER_S + 1)
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-02")]
    monkeypatch.undo()
    instance.report_run_canceled(waiting)
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-02")]


def started_lakehouse_run(instance, first: str, last: str):
    run = lakehouse_run(instance, dg.DagsterRunStatus.NOT_STARTED,
                        tags={**SERIAL, RANGE_START: first, RANGE_END: last})  # fmt: skip
    report(instance, run, DagsterEventType.RUN_START, dg.DagsterRunStatus.STARTED)
    return run


def test_no_request_while_a_run_started_after_the_files_covers_their_days(instance):
    land(instance, "2024-01-02", "2024-01-03")
    running = started_lakehouse_run(instance, "2024-01-01", "2024-01-03")
    skipped = tick(instance)
    assert isinstance(skipped, dg.SkipReason) and "running" in skipped.skip_message
    instance.report_run_failed(running)  # it failed: the days still need their run
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-03")]


def test_a_running_run_that_misses_a_day_or_started_before_the_file_does_not_hold_it(instance):
    land(instance, "2024-01-02", "2024-01-04")
    first = started_lakehouse_run(instance, "2024-01-01", "2024-01-03")  # 01-04 outside it
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-04")]
    instance.report_run_canceled(first)
    started_lakehouse_run(instance, "2024-01-01", "2024-01-05")
    land(instance, "2024-01-02")  # after the run started: it may not have listed the file
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-04")]


def test_far_apart_days_run_oldest_group_first_then_pending_groups(instance):
    recent = land(instance, "2024-03-01", "2024-03-02")
    late = land(instance, "2024-01-03")  # a late file
    first = tick(instance)
    assert ranges(first) == [("2024-01-03", "2024-01-03")]
    assert first.run_requests[0].tags["ml_platform/pending_days"] == "2"
    assert first.run_requests[0].run_key == f"lakehouse:{late}:2024-01-03:2024-01-03"
    # The pending days keep the newest record touching them (to skip them if rebuilt since).
    assert json.loads(first.cursor) == {
        "after": late,
        "pending": {"2024-03-01": recent, "2024-03-02": recent},
    }
    assert " " not in first.cursor
    second = tick(instance, first.cursor)
    assert ranges(second) == [("2024-03-01", "2024-03-02")]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert isinstance(tick(instance, second.cursor), dg.SkipReason)


def test_new_days_join_the_pending_group_near_them(instance):
    land(instance, "2024-01-03", "2024-03-01")
    first = tick(instance)
    assert ranges(first) == [("2024-01-03", "2024-01-03")]
    land(instance, "2024-03-05")  # three untouched days after the pending 2024-03-01
    second = tick(instance, first.cursor)
    assert ranges(second) == [("2024-03-01", "2024-03-05")]
    assert isinstance(tick(instance, second.cursor), dg.SkipReason)


@pytest.mark.parametrize(
    ("later", "expected"),
    [
        # 7 untouched days (01-04 .. 01-10) between: the trailing week of 01-11 reads them anyway.
        ("2024-01-11", [("2024-01-03", "2024-01-11")]),
        # 8 untouched days: two runs.
        ("2024-01-12", [("2024-01-03", "2024-01-03"), ("2024-01-12", "2024-01-12")]),
    ],
)
def test_groups_merge_across_at_most_seven_untouched_days(instance, later, expected):
    land(instance, "2024-01-03", later)
    requested, cursor = [], None
    for _ in expected:
        result = tick(instance, cursor)
        requested += ranges(result)
        cursor = result.cursor
    assert requested == expected
    assert isinstance(tick(instance, cursor), dg.SkipReason)


def test_days_rebuilt_by_a_later_run_are_skipped(instance):
    land(instance, "2024-01-01", "2024-01-02")
    rebuild(instance, "2024-01-01")  # a manual run after the file landed
    assert ranges(tick(instance)) == [("2024-01-02", "2024-01-02")]
    rebuild(instance, "2024-01-02")
    rebuilt = tick(instance)
    assert not rebuilt.run_requests
    assert rebuilt.skip_reason


def test_a_pending_day_rebuilt_meanwhile_needs_no_run(instance):
    land(instance, "2024-01-03", "2024-03-01")
    first = tick(instance)
    assert ranges(first) == [("2024-01-03", "2024-01-03")]
    rebuild(instance, "2024-03-01")
    second = tick(instance, first.cursor)
    assert not second.run_requests
    assert isinstance(tick(instance, second.cursor), dg.SkipReason)


def test_a_day_rebuilt_by_a_run_started_before_the_file_landed_still_runs(instance):
    # The file lands while the run rebuilding its day runs: that run may have read the day's
    # bronze before the file's part existed, though its materialization comes later.
    rebuild(instance, "2024-01-01", while_running=lambda: land(instance, "2024-01-01"))
    assert ranges(tick(instance)) == [("2024-01-01", "2024-01-01")]


def test_online_features_join_the_run_once_feature_views_materialized(instance):
    land(instance, "2024-01-01")
    assert selection(tick(instance)) == {"sensor_chunks", "daily_aggregates"}
    instance.report_runless_asset_event(dg.AssetMaterialization("feature_views"))
    assert selection(tick(instance)) == {
        "sensor_chunks",
        "daily_aggregates",
        "online_features",
    }


def test_an_integer_cursor_is_read_as_the_last_storage_id(instance):
    handled = land(instance, "2024-01-01")
    land(instance, "2024-01-05")
    result = tick(instance, str(handled))
    assert ranges(result) == [("2024-01-05", "2024-01-05")]
    assert isinstance(tick(instance, result.cursor), dg.SkipReason)


def test_days_outside_the_partitions_and_files_without_dates_are_ignored(instance):
    land(instance, "2023-12-31")  # before ML_PLATFORM_START_DATE (2024-01-01)
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_readings"))
    outside = tick(instance)
    assert not outside.run_requests
    land(instance, "2023-12-30", "2024-01-02")
    assert ranges(tick(instance, outside.cursor)) == [("2024-01-02", "2024-01-02")]
