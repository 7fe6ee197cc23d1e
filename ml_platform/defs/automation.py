"""Declarative Automation conditions shared by the assets.

The automation sensor emits plain runs, not backfills (``emit_backfills=False`` in
definitions.py): a backfill waits for the backfill daemon's fixed 30 s loop at every step, which
cost about a minute between a new file and its predictions. With plain runs, an asset requested
in the same tick as one of its parents would run beside that parent instead of after it, so every
condition here also waits until no parent is being requested or is in progress: a child follows
one tick after its parents are materialized.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

AC = dg.AutomationCondition
#: No parent requested in this tick, none running: what a child needs before it starts.
PARENTS_SETTLED = ~AC.any_deps_match(AC.will_be_requested()) & ~AC.any_deps_in_progress()


def eager_after_parents(days: int | None = None) -> dg.AutomationCondition:
    """``eager()`` once its parents are settled, over every partition (``days=None``) or the last
    ``days`` daily partitions: with today's partition open, ``days=2`` keeps the day that just
    ended (the one a daily report is about) in scope."""
    condition = AC.eager().without(AC.in_latest_time_window())
    if days is not None:
        condition = condition & AC.in_latest_time_window(timedelta(days=days))
    return condition & PARENTS_SETTLED
