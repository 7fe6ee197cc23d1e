"""Which day a daily deadline asks for, on hand-worked dates."""

from datetime import UTC, date, datetime

import pytest

from ml_platform.lib.freshness import daily_deadline, due_day


@pytest.mark.parametrize(
    ("now", "due"),
    [
        # Day D is due at 06:00 UTC on D+1: one minute before, the day before that is the newest.
        (datetime(2026, 12, 3, 5, 59, tzinfo=UTC), date(2026, 12, 1)),
        (datetime(2026, 12, 3, 6, 0, tzinfo=UTC), date(2026, 12, 2)),
        (datetime(2026, 12, 3, 23, 59, tzinfo=UTC), date(2026, 12, 2)),
        # Across a month and a year end.
        (datetime(2027, 1, 1, 7, 0, tzinfo=UTC), date(2026, 12, 31)),
        (datetime(2027, 3, 1, 0, 30, tzinfo=UTC), date(2027, 2, 27)),
    ],
)
def test_the_due_day_is_the_newest_whose_deadline_has_passed(now, due):
    assert due_day("0 6 * * *", now) == due


def test_minutes_of_the_deadline_count():
    assert due_day("30 7 * * *", datetime(2026, 12, 3, 7, 29, tzinfo=UTC)) == date(2026, 12, 1)
    assert due_day("30 7 * * *", datetime(2026, 12, 3, 7, 30, tzinfo=UTC)) == date(2026, 12, 2)


@pytest.mark.parametrize("cron", ["0 6 * * 1", "*/5 6 * * *", "0 24 * * *", "0 6 * *", "x y * * *"])
def test_only_daily_deadlines_are_accepted(cron):
    with pytest.raises(ValueError, match="daily deadline|no time of day"):
        daily_deadline(cron)
