"""Declarative Automation conditions shared by the assets.

A tick that requests one partition per asset emits plain runs, one per partition key, so an asset
requested in the same tick as a parent of another partitions definition would run beside that
parent instead of after it. Every condition here therefore also waits until no parent is being
requested or is in progress: a child follows one tick after its parents are materialized. (A tick
that requests several partitions of an asset emits a backfill, which orders its steps itself
but advances only on the backfill daemon's 30 s loop.)
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from ml_platform.settings import settings

AC = dg.AutomationCondition
#: No parent requested in this tick, none running, none whose latest run failed: what a child
#: needs before it starts (a failed drift measurement must not let predictions through on the
#: previous report).
PARENTS_SETTLED = (
    ~AC.any_deps_match(AC.will_be_requested())
    & ~AC.any_deps_in_progress()
    & ~AC.any_deps_match(AC.execution_failed())
)


def eager_after_parents(
    days: int | None = None, optional: tuple[str, ...] = ()
) -> dg.AutomationCondition:
    """``eager()`` once its parents are settled, over every partition (``days=None``) or the last
    ``days`` daily partitions: with today's partition open, ``days=2`` keeps the day that just
    ended (the one a daily report is about) in scope. A parent in ``optional`` may be missing
    (the clusters of a week not trained yet, say) without holding the asset back."""
    condition = AC.eager().without(AC.in_latest_time_window())
    if optional:
        condition = condition.replace(
            "any_deps_missing",
            AC.any_deps_missing().ignore(dg.AssetSelection.assets(*optional)),
        )
    if days is not None:
        condition = condition & AC.in_latest_time_window(timedelta(days=days))
    return condition & PARENTS_SETTLED


#: A new version of any week's model, whichever weeks are still untrained: no missing-parent
#: check (most weeks of the history never get a model), only settled parents.
ON_ANY_NEW_PARENT = (
    AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()
)


@dg.definitions
def automation_sensor() -> dg.Definitions:
    """Declarative Automation (feature_views when missing or its definitions change,
    online_features after new aggregates) evaluated from the start: Dagster's implicit default
    sensor would be created stopped."""
    sensor = dg.AutomationConditionSensorDefinition(
        "automation_condition_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=settings().sensor_interval_s,
    )
    return dg.Definitions(sensors=[sensor])
