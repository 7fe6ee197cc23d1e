"""``first_model_sensor``: a fresh deployment trains its first model as soon as it can.

The weekly schedule retrains every Monday, and drift requests retrainings; neither helps a
deployment that has just received its first weeks of data and has no model at all. This sensor
asks once for the newest complete week whose seven days have online features and for which
labels have landed, with a holdout and folds sized to the history there is. It stands down for
good once any failure_model version exists.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from ml_platform.defs.lakehouse.assets import LAKEHOUSE_TAGS
from ml_platform.defs.ml.schedules import weekly_training_job
from ml_platform.defs.partitions import weekly
from ml_platform.defs.resources import settings

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
#: The holdout is this share of the history before the week's end, within [7, 28] days.
HOLDOUT_SHARE = 0.25


def first_training_request(
    online_days: set[str], has_labels: bool, has_model: bool, busy: int, now: datetime
) -> dg.RunRequest | dg.SkipReason:
    """What the sensor asks for, from what the instance knows (pure, for tests)."""
    if has_model:
        return dg.SkipReason("a failure model exists: the weekly schedule and drift retrain it")
    if not has_labels:
        return dg.SkipReason("no failure labels have landed yet")
    if busy:
        # The history is still being ingested and published: a week complete now may be one
        # of the first ones, with too little before it to hold out.
        return dg.SkipReason(f"waiting for {busy} queued or running runs to finish")
    weeks = weekly.get_partition_keys(current_time=now)
    for week in reversed(weeks):
        monday = date.fromisoformat(week)
        days = {(monday + timedelta(days=i)).isoformat() for i in range(7)}
        if days <= online_days:
            break
    else:
        return dg.SkipReason("no complete week with online features for all seven days yet")
    history = sum(1 for d in online_days if d <= max(days))
    holdout = int(min(28, max(7, history * HOLDOUT_SHARE)))
    return dg.RunRequest(
        run_key=f"first-model:{week}",
        partition_key=week,
        run_config={
            "ops": {
                "failure_model": {
                    "config": {"holdout_days": holdout, "cv_splits": 2 if history < 90 else 3}
                }
            }
        },
        tags={"ml_platform/reason": f"first model: {history} days of features, no model yet"},
    )


@dg.sensor(
    job=weekly_training_job,
    minimum_interval_seconds=settings().sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Trains the first model of a fresh deployment on the newest complete week with "
    "online features and labels; idle once a model exists.",
)
def first_model_sensor(context: dg.SensorEvaluationContext):
    instance = context.instance
    # A champion, not merely a trained version: a first version that failed its quality gate
    # leaves the deployment without a model, and the next complete week is tried.
    champion = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    meta = champion.asset_materialization.metadata if champion else {}
    has_model = "champion_version" in meta and meta["champion_version"].value >= 0
    has_labels = bool(instance.get_materialized_partitions(dg.AssetKey("raw_labels")))
    online = set(instance.get_materialized_partitions(dg.AssetKey("online_features")))
    busy = 0
    if not has_model:
        # Only the work that builds the history counts; scoring or monitoring runs do not.
        for tags in (
            {"ml_platform/kind": "ingest"},
            LAKEHOUSE_TAGS,
            {"ml_platform/kind": "training"},
        ):
            busy += len(
                instance.get_run_ids(dg.RunsFilter(statuses=IN_FLIGHT, tags=tags), limit=100)
            )
    return first_training_request(online, has_labels, has_model, busy, datetime.now(UTC))
