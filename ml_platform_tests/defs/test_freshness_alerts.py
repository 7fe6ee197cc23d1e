"""Freshness per partition and alerts on failed checks that do not fail their run, on a real
Dagster instance: a backfilled older day leaves the due day stale, a failed freshness check and
a failed warning check each alert once per check, partition and day: again for another partition
the same day, and again for the same check and partition the next day."""

from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
import pytest

from ml_platform.definitions import defs
from ml_platform.defs import freshness as freshness_defs
from ml_platform.defs.freshness import CHECK_NAME, freshness_checks
from ml_platform.defs.ingest.assets import raw_readings
from ml_platform.defs.lakehouse.assets import daily_aggregates
from ml_platform.defs.monitoring import alerts
from ml_platform.defs.monitoring.alerts import alert_on_failed_check_sensor
from ml_platform.defs.resources import AlertResource, build_resources
from ml_platform.lib import paths
from ml_platform.lib.store import LocalStore
from ml_platform_tests.helpers import READINGS_HEADER, ingest, webhook_receiver

pytestmark = pytest.mark.integration


def newest_due_day(deadline: time, now: datetime) -> date:
    """The newest day D whose deadline (``deadline`` on D+1, UTC) is not after ``now``."""
    day = now.date()
    while datetime.combine(day + timedelta(days=1), deadline, tzinfo=UTC) > now:
        day -= timedelta(days=1)
    return day


@pytest.fixture
def platform(tmp_path, monkeypatch):
    monkeypatch.setenv("ML_PLATFORM_STORE_URL", (tmp_path / "lake").as_uri())
    with dg.instance_for_test() as instance:
        yield instance, LocalStore(tmp_path / "lake")


def run_freshness_check(instance) -> dg.AssetCheckEvaluation:
    [check] = [c for c in freshness_checks if any(k.asset_key == daily_aggregates.key
                                                  for k in c.check_keys)]  # fmt: skip
    result = dg.materialize(
        [daily_aggregates, check],
        instance=instance,
        selection=dg.AssetSelection.checks(check),
        resources=build_resources(),
    )
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def shift_clock(monkeypatch, module, by: timedelta) -> None:
    """``module``'s ``datetime.now()`` runs ``by`` ahead of (or behind) the real clock."""

    class Shifted(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + by

    monkeypatch.setattr(module, "datetime", Shifted)


def ingest_bad_file_on(instance, store: LocalStore, file, name: str, day: str) -> None:
    """Land ``file`` and ingest it in the landing-day partition ``day``: it is quarantined, so
    the partition's warning check fails."""
    key = paths.landing_object("readings", name)
    store.put_file(file, key)
    version = paths.partition_key(name, store.etag(key))
    result = dg.materialize(
        [raw_readings], instance=instance, partition_key=day, resources=build_resources(),
        run_config={"ops": {"raw_readings": {"config": {"versions": [version]}}}},
    )  # fmt: skip
    [check] = result.get_asset_check_evaluations()
    assert (check.passed, result.dagster_run.tags["dagster/partition"]) == (False, day)


def titles_and_partitions(received: list[dict]) -> list[tuple[str, str]]:
    """(title, partition field) of each alert posted, sorted."""
    return sorted(
        (r["blocks"][0]["text"]["text"],
         next(line for line in r["blocks"][1]["text"]["text"].splitlines()
              if line.startswith("*partition*")))
        for r in received
    )  # fmt: skip


def alerts_after_tick(instance, url: str, cursor: str | None) -> str | None:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={"alerts": AlertResource(webhook_url=url), "lake": build_resources()["lake"]},
    )
    alert_on_failed_check_sensor(context)
    return context.cursor


def test_a_backfilled_older_day_leaves_the_due_day_stale(platform):
    instance, _ = platform
    due = newest_due_day(time(6, 0), datetime.now(UTC)).isoformat()
    # An old day backfilled just now: the asset was materialized recently, the due day was not.
    instance.report_runless_asset_event(
        dg.AssetMaterialization("daily_aggregates", partition="2024-01-05")
    )
    stale = run_freshness_check(instance)
    assert (stale.check_name, stale.passed) == (CHECK_NAME, False)
    assert stale.severity == dg.AssetCheckSeverity.WARN
    assert stale.metadata["due_partition"].value == due

    instance.report_runless_asset_event(dg.AssetMaterialization("daily_aggregates", partition=due))
    fresh = run_freshness_check(instance)
    assert fresh.passed and fresh.metadata["due_partition"].value == due


def test_failed_freshness_and_warning_checks_alert_once_per_check_partition_and_day(
    platform, tmp_path, monkeypatch
):
    instance, store = platform
    due = newest_due_day(time(6, 0), datetime.now(UTC)).isoformat()
    bad = tmp_path / "bad.csv"
    bad.write_text(READINGS_HEADER + "not a time,s1,50,2,5,20\n")
    with webhook_receiver() as (url, received):
        assert run_freshness_check(instance).passed is False
        assert ingest(instance, store, bad) == ""  # quarantined: the WARN check fails
        cursor = alerts_after_tick(instance, url, None)
        titles = sorted(r["blocks"][0]["text"]["text"] for r in received)
        assert titles == [
            "ml-platform: check daily_aggregates:due_day_materialized failed",
            "ml-platform: check raw_readings:landed_files_pass_their_contract failed",
        ]
        today = paths.landing_day(datetime.now(UTC))
        assert [p for _, p in titles_and_partitions(received)] == [
            f"*partition*: {due}",  # the due day the freshness check judged
            f"*partition*: {today}",  # the landing day of the run the warning check failed in
        ]
        warning = next(r for r in received if "landed_files" in r["text"])
        assert "no_valid_rows" in warning["text"]  # its reason, from the check's metadata table

        # The same failures again (a re-run check, a second bad file the same landing day):
        # nothing new to say today.
        assert run_freshness_check(instance).passed is False
        assert ingest(instance, store, bad, name="bad-again.csv") == ""
        cursor = alerts_after_tick(instance, url, cursor)
        assert len(received) == 2
        # A failed blocking check fails its run, which alerts through the run failure sensor:
        # this sensor stays silent about it.
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey("daily_aggregates"),
                check_name="daily_aggregates_pass_quality_suite",
                passed=False, blocking=True, partition=due,
            )
        )  # fmt: skip
        cursor = alerts_after_tick(instance, url, cursor)
        assert len(received) == 2
        # Nothing failed since: a tick reads nothing new and sends nothing.
        assert alerts_after_tick(instance, url, cursor) == cursor
        assert len(received) == 2

        # The same checks failing for other partitions the same day each alert once more:
        # the freshness check judging the day before (as it does before and after its
        # deadline on one day) and the warning check of yesterday's landing day.
        before = (date.fromisoformat(due) - timedelta(days=1)).isoformat()
        yesterday = (date.fromisoformat(today) - timedelta(days=1)).isoformat()
        with monkeypatch.context() as earlier:
            shift_clock(earlier, freshness_defs, -timedelta(days=1))
            stale = run_freshness_check(instance)
            assert (stale.passed, stale.metadata["due_partition"].value) == (False, before)
        ingest_bad_file_on(instance, store, bad, "bad-yesterday.csv", yesterday)
        cursor = alerts_after_tick(instance, url, cursor)
        assert titles_and_partitions(received[2:]) == [
            ("ml-platform: check daily_aggregates:due_day_materialized failed",
             f"*partition*: {before}"),
            ("ml-platform: check raw_readings:landed_files_pass_their_contract failed",
             f"*partition*: {yesterday}"),
        ]  # fmt: skip

        # The next day, the same checks failing for the same partitions as first alert again,
        # once.
        shift_clock(monkeypatch, alerts, timedelta(days=1))
        for _ in range(2):
            assert run_freshness_check(instance).passed is False
        assert ingest(instance, store, bad, name="bad-next-day.csv") == ""
        cursor = alerts_after_tick(instance, url, cursor)
        assert titles_and_partitions(received[4:]) == titles_and_partitions(received[:2])
        assert alerts_after_tick(instance, url, cursor) == cursor
        assert len(received) == 6
