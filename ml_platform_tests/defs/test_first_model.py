"""first_model_sensor's decision: which week a fresh deployment trains first, and when."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from ml_platform.defs.ml.sensors import first_training_request

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)  # a Sunday: the week of 11-16 is not over yet


def days(first: str, last: str) -> set[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return {(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)}


def test_newest_complete_week_with_online_features_and_a_holdout_sized_to_the_history():
    request = first_training_request(days("2026-10-20", "2026-11-21"), True, False, 0, NOW)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-11-09"  # 11-16..11-22 is not complete at NOW
    assert request.run_key == "first-model:2026-11-09"
    config = request.run_config["ops"]["failure_model"]["config"]
    # 27 days of history up to the week's Sunday: a quarter of it, at least a week.
    assert config == {"holdout_days": 7, "cv_splits": 2}


def test_a_long_history_gets_the_full_holdout_and_three_folds():
    request = first_training_request(days("2026-01-01", "2026-11-21"), True, False, 0, NOW)
    assert request.run_config["ops"]["failure_model"]["config"] == {
        "holdout_days": 28,
        "cv_splits": 3,
    }


def test_a_week_with_a_missing_day_is_skipped_for_the_one_before():
    online = days("2026-10-20", "2026-11-21") - {"2026-11-12"}
    assert first_training_request(online, True, False, 0, NOW).partition_key == "2026-11-02"


def test_waits_for_labels_for_running_work_and_stands_down_once_a_model_exists():
    online = days("2026-10-20", "2026-11-21")
    assert "labels" in first_training_request(online, False, False, 0, NOW).skip_message
    assert "3 queued or running" in first_training_request(online, True, False, 3, NOW).skip_message
    assert "model exists" in first_training_request(online, True, True, 0, NOW).skip_message
    short = first_training_request(days("2026-11-18", "2026-11-21"), True, False, 0, NOW)
    assert "no complete week" in short.skip_message
