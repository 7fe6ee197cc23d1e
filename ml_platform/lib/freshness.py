"""Which day's results a daily deadline asks for: pure date arithmetic, no Dagster."""

from __future__ import annotations

from datetime import date, datetime, timedelta


def daily_deadline(cron: str) -> tuple[int, int]:
    """``(hour, minute)`` of a daily deadline cron ``"M H * * *"``; any other form is refused."""
    fields = cron.split()
    if (
        len(fields) != 5
        or fields[2:] != ["*", "*", "*"]
        or not all(f.isdigit() for f in fields[:2])
    ):
        raise ValueError(f"{cron!r} is not a daily deadline of the form 'M H * * *'")
    minute, hour = int(fields[0]), int(fields[1])
    if minute > 59 or hour > 23:
        raise ValueError(f"{cron!r} names no time of day")
    return hour, minute


def due_day(cron: str, now: datetime) -> date:
    """The newest day whose results are due by ``now``: day D is due at the deadline on D+1, so
    from today's deadline on it is yesterday, before it the day before. ``now`` is in UTC."""
    hour, minute = daily_deadline(cron)
    deadline_today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return now.date() - timedelta(days=1 if now >= deadline_today else 2)
