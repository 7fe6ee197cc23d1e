"""Pure training-set logic: sensor-days, targets and the leakage guard (no Feast, no Dagster)."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.lib import training
from ml_platform.lib.feature_store import gold_location


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def gold_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sensor_id": ["a", "a", "b", "a"],
            "event_timestamp": [
                ts("2024-01-01 23:59:59.999999"),
                ts("2024-01-02 23:59:59.999999"),
                ts("2024-01-02 23:59:59.999999"),
                ts("2024-01-03 23:59:59.999999"),
            ],
            "created_timestamp": [ts("2024-01-02 00:05")] * 3 + [ts("2024-02-01")],
            "x": [1.0, 2.0, 3.0, 4.0],
            "y": [np.nan, 20.0, 30.0, 40.0],
        }
    )


def test_sensor_days_are_one_row_per_sensor_and_day_with_the_end_of_day_as_cutoff():
    days = training.sensor_days(gold_rows(), date(2024, 1, 2), date(2024, 1, 3))
    assert list(days.columns) == training.KEYS
    assert list(zip(days["sensor_id"], days["day"].astype(str), strict=True)) == [
        ("a", "2024-01-02"),
        ("b", "2024-01-02"),
        ("a", "2024-01-03"),
    ]
    assert days["label_id"].tolist() == [0, 1, 2]
    assert days["cutoff"].iloc[0] == ts("2024-01-02 23:59:59.999999")


@pytest.mark.parametrize(
    ("failure_at", "horizon_days", "positive"),
    [
        ("2024-01-03 00:00", 1, True),  # just after the cut-off
        ("2024-01-03 23:59:59.999999", 1, True),  # exactly at cut-off + horizon
        ("2024-01-04 00:00", 1, False),  # past the horizon
        ("2024-01-04 00:00", 2, True),
        ("2024-01-02 23:59:59.999999", 1, False),  # at the cut-off: already known, not ahead
        ("2024-01-02 12:00", 1, False),  # during the day itself
    ],
)
def test_a_sensor_day_is_positive_when_a_failure_follows_within_the_horizon(
    failure_at, horizon_days, positive
):
    days = training.sensor_days(gold_rows(), date(2024, 1, 2), date(2024, 1, 2))
    failures = pd.DataFrame({"sensor_id": ["a"], "timestamp": [ts(failure_at)]})
    labelled = training.add_target(days, failures, timedelta(days=horizon_days))
    by_sensor = labelled.set_index("sensor_id")[training.TARGET]
    assert by_sensor["a"] == int(positive)
    assert by_sensor["b"] == 0  # another sensor's failure is not this one's


def test_the_guard_blanks_values_that_only_a_future_row_explains():
    days = training.sensor_days(gold_rows(), date(2024, 1, 2), date(2024, 1, 2))
    frame = days.assign(x=[4.0, 3.0], y=[40.0, 30.0])  # a took day 3's values: a leak
    leaks = training.find_leaks(frame, gold_rows(), ["x", "y"])
    assert leaks.tolist() == [True, False]
    guarded, blanked = training.guard(frame, gold_rows(), {"v": ["x", "y"]})
    assert blanked == {"v": 1}
    assert guarded.loc[0, ["x", "y"]].isna().all() and guarded.loc[1, "x"] == 3.0
    assert not training.find_leaks(guarded, gold_rows(), ["x", "y"]).any()


def test_missing_values_match_missing_values_and_an_empty_vector_is_no_leak():
    days = training.sensor_days(gold_rows(), date(2024, 1, 1), date(2024, 1, 1))
    frame = days.assign(x=[1.0], y=[np.nan])  # day 1 of sensor a, y missing in the source too
    assert not training.find_leaks(frame, gold_rows(), ["x", "y"]).any()
    empty = days.assign(x=[np.nan], y=[np.nan])
    assert not training.find_leaks(empty, gold_rows(), ["x", "y"]).any()


def test_a_value_no_row_explains_is_a_leak():
    days = training.sensor_days(gold_rows(), date(2024, 1, 2), date(2024, 1, 2))
    frame = days.assign(x=[2.0, 9999.0], y=[20.0, 30.0])
    assert training.find_leaks(frame, gold_rows(), ["x", "y"]).tolist() == [False, True]


def test_created_timestamps_count_only_when_asked():
    rows = gold_rows()
    days = training.sensor_days(rows, date(2024, 1, 3), date(2024, 1, 3))
    frame = days.assign(x=[4.0], y=[40.0])  # its own day's row, created a month later
    assert not training.find_leaks(frame, rows, ["x", "y"]).any()
    assert training.find_leaks(frame, rows, ["x", "y"], created_too=True).all()


def test_tz_naive_timestamps_from_postgres_are_read_as_utc():
    naive = pd.Series(pd.to_datetime(["2024-01-01 10:00"]))
    assert training.utc(naive).iloc[0] == ts("2024-01-01 10:00")


@pytest.mark.parametrize(
    ("url", "expected", "endpoint"),
    [
        ("s3://bucket", "s3://bucket/lake/gold/daily_aggregates/", "http://h:9"),
        ("s3://bucket/pre/fix/", "s3://bucket/pre/fix/lake/gold/daily_aggregates/", "http://h:9"),
        ("file:///data/my%20lake", "/data/my lake/lake/gold/daily_aggregates", None),
    ],
)
def test_feast_reads_the_gold_zone_of_the_platforms_store(url, expected, endpoint):
    location = gold_location(url, "http://h:9")
    assert location.path.rstrip("/") == expected.rstrip("/")
    assert location.s3_endpoint == endpoint


@pytest.mark.parametrize(
    ("key", "day"),
    [
        ("lake/bronze/labels/date=2024-01-03/file=labels-abc.parquet", "2024-01-03"),
        ("lake/bronze/labels/date=2024-01-03/", None),  # a folder marker
        ("lake/bronze/labels/notes.txt", None),
    ],
)
def test_bronze_parts_name_their_day(key, day):
    from ml_platform.lib.paths import bronze_day

    assert bronze_day(key) == day


def test_failure_events_keep_failures_before_the_limit_in_utc():
    labels = pd.DataFrame(
        {
            "sensor_id": ["a", "b", "c"],
            "timestamp": pd.to_datetime(
                ["2024-01-01 10:00", "2024-01-02 10:00", "2024-01-03 00:00"]
            ),
            "failure": [1, 0, 1],
        }
    )
    events = training.failure_events(labels, until=ts("2024-01-03"))
    assert events["sensor_id"].tolist() == ["a"]  # b is a confirmed healthy day, c is too late
    assert events["timestamp"].iloc[0] == ts("2024-01-01 10:00")
    assert training.failure_events(labels.iloc[:0]).empty
