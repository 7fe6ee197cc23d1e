"""``feature_drift[day]``: the week before a day against the champion's training set; its failing
check closes that day's drift gate and requests a retraining (at most one a day)."""

import json
import time
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from ml_platform.defs.automation import eager_after_parents
from ml_platform.defs.lakehouse.assets import daily_aggregates
from ml_platform.defs.metadata import object_uri, table
from ml_platform.defs.ml.models import (
    CHAMPION,
    MODEL_NAME,
    champion_model,
)
from ml_platform.defs.ml.schedules import weekly_training_job
from ml_platform.defs.partitions import daily, weekly
from ml_platform.defs.resources import LakeResource, MLflowResource
from ml_platform.lib import paths
from ml_platform.lib.drift import Thresholds
from ml_platform.lib.store import read_frame, read_prefixes

BELOW_WARNING = "feature_drift_below_warning"
BELOW_FAILURE = "feature_drift_below_failure"


_DEFAULT = Thresholds()


class DriftConfig(dg.Config):
    """Windows and thresholds (defaults: ``lib.drift.Thresholds``, which explains them)."""

    window_days: int = 7  # current window: the day and the days before it
    reference_days: int = 28  # reference: the last days of the champion's training set
    psi_warn: float = _DEFAULT.psi_warn
    psi_fail: float = _DEFAULT.psi_fail
    ks_warn: float = _DEFAULT.ks_warn
    ks_fail: float = _DEFAULT.ks_fail
    p_value: float = _DEFAULT.p_value
    auc_warn: float = _DEFAULT.auc_warn
    auc_fail: float = _DEFAULT.auc_fail

    def thresholds(self) -> Thresholds:
        return Thresholds(**{f.name: getattr(self, f.name) for f in fields(Thresholds)})


@dg.asset(
    partitions_def=daily,
    deps=[
        dg.AssetDep(
            daily_aggregates,
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-6, end_offset=0, allow_nonexistent_upstream_partitions=True
            ),
        ),
        champion_model,
    ],
    group_name="monitoring",
    kinds={"scipy", "scikitlearn"},
    owners=["team:ml"],
    automation_condition=eager_after_parents(days=2),
    check_specs=[
        dg.AssetCheckSpec(
            BELOW_WARNING,
            asset="feature_drift",
            description="No significant feature shift above the warning thresholds.",
        ),
        dg.AssetCheckSpec(
            BELOW_FAILURE,
            asset="feature_drift",
            blocking=True,
            description="No feature shift above the failure thresholds; a failure closes the "
            "day's drift gate (no predictions) and requests a retraining.",
        ),
    ],
)
def feature_drift(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """Per feature PSI and KS of the week up to the day against the champion's training set,
    an adversarial-validation AUC, and the features ranked by drift."""
    import pandas as pd

    from ml_platform.lib import drift, modeling

    started = time.perf_counter()
    day, store = context.partition_key, lake.store()
    champion = mlflow.alias_version(MODEL_NAME, CHAMPION)
    if champion is None:
        raise dg.Failure("no champion yet: drift is measured against its training set")
    week = champion.tags.get("week")
    if not week:
        raise dg.Failure(f"champion version {champion.version} has no 'week' tag")
    reference = read_frame(store, [paths.training_set_object(week)])
    # What the champion learnt most recently: sensors drift slowly by nature, and the question
    # is whether today still looks like the end of its training window.
    recent = sorted(reference["day"].unique())[-config.reference_days :]
    reference = reference[reference["day"].isin(recent)]
    first = date.fromisoformat(day) - timedelta(days=config.window_days - 1)
    window = pd.date_range(first, day, freq="D").strftime("%Y-%m-%d")
    current = read_prefixes(store, [paths.aggregates_day_prefix(d) for d in window])
    if current.empty:
        raise dg.Failure(f"no gold rows between {first} and {day}", allow_retries=False)
    features = [f for f in modeling.feature_columns(reference) if f in current.columns]
    if not features:
        raise dg.Failure("the training set and the gold rows share no feature", allow_retries=False)
    report = drift.compare(reference, current, features, config.thresholds())
    gate = "closed" if report.level == "fail" else "open"
    record = {
        "day": day,
        "level": report.level,
        "gate": gate,
        "reasons": report.reasons,
        "adversarial_auc": report.adversarial_auc,
        "ranked": report.ranked(15),
        "reference": {"model_version": str(champion.version), "week": week, "rows": len(reference)},
        "current": {"first_day": first.isoformat(), "last_day": day, "rows": len(current)},
        "measured_at": datetime.now(UTC).isoformat(),
    }
    store.put_bytes(json.dumps(record, indent=2).encode(), paths.drift_report_object(day))
    return dg.MaterializeResult(
        metadata={
            "level": report.level,
            "gate": gate,
            "adversarial_auc": report.adversarial_auc,
            "drifting_features": int(report.features["drifting"].sum()),
            "top_feature": str(report.features["feature"].iloc[0]),
            "ranked": table(report.ranked(10)),
            "reference_week": week,
            **object_uri(store, paths.drift_report_object(day)),
            "seconds": round(time.perf_counter() - started, 3),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=BELOW_WARNING,
                passed=report.level == "ok",
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"reasons": dg.MetadataValue.json(report.reasons)},
            ),
            dg.AssetCheckResult(
                check_name=BELOW_FAILURE,
                passed=report.level != "fail",
                metadata={"reasons": dg.MetadataValue.json(report.reasons), "gate": gate},
            ),
        ],
    )


def drift_gate(store, day: str) -> dict | None:
    """The day's drift report, or None when drift was not measured for it."""
    key = paths.drift_report_object(day)
    return json.loads(store.read_bytes(key)) if store.exists(key) else None


#: Closed drift gates of days older than this are history (a backfill), not a reason to retrain.
RECENT_DAYS = 3


def _champion_week(context) -> str | None:
    """The training week of the champion, from the latest champion_model materialization."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    if event is None or event.asset_materialization is None:
        return None
    version = event.asset_materialization.metadata.get("champion_week")
    return version.value if version is not None else None


@dg.sensor(
    job=weekly_training_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a retraining of the last complete week when a day's drift gate "
    "closes; at most one such retraining a day (the run key is the date).",
)
def drift_retraining_sensor(context: dg.SensorEvaluationContext):
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("feature_drift"), after_storage_id=after),
        limit=100,
        ascending=True,
    ).records
    if not records:
        return dg.SkipReason("no new drift measurements")
    cursor = str(records[-1].storage_id)
    # Only the newest measured days count: a backfill that re-measures old days must not retrain.
    measured = context.instance.get_materialized_partitions(dg.AssetKey("feature_drift"))
    recent = (date.fromisoformat(max(measured)) - timedelta(days=RECENT_DAYS)).isoformat()
    closed = sorted(
        r.asset_materialization.partition
        for r in records
        if r.asset_materialization.metadata.get("gate", dg.MetadataValue.text("")).value == "closed"
        and (r.asset_materialization.partition or "") >= recent
    )
    if not closed:
        return dg.SensorResult(skip_reason="no recently closed drift gate", cursor=cursor)
    # Retrain on the week of the newest drifting day, with what is known of it now.
    week = weekly.get_partition_key_for_timestamp(
        datetime.fromisoformat(closed[-1]).replace(tzinfo=UTC).timestamp()
    )
    champion_week = _champion_week(context)
    if champion_week and champion_week >= week:
        # The champion already learnt from that week: retraining it gives the same model.
        return dg.SensorResult(
            skip_reason=f"the champion was trained on week {champion_week}; nothing newer",
            cursor=cursor,
        )
    today = datetime.now(UTC).date().isoformat()
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"drift-retraining:{today}",  # debounce: at most one a day
                partition_key=week,
                tags={"ml_platform/reason": f"drift gate closed on {', '.join(closed)}"},
            )
        ],
        cursor=cursor,
    )
