"""Feedback from the field: ``label_queue[day]`` (what people should label next),
``live_performance[day]`` (how served predictions did once labels arrived)."""

import json
from datetime import date, timedelta

import dagster as dg

from ml_platform.defs.automation import eager_after_parents
from ml_platform.defs.metadata import object_uri, table
from ml_platform.defs.ml.models import MODEL_NAME
from ml_platform.defs.partitions import daily
from ml_platform.defs.predictions.assets import daily_predictions
from ml_platform.defs.resources import LakeResource, MLflowResource
from ml_platform.lib import paths
from ml_platform.lib.store import read_frame, write_frame


class LabelQueueConfig(dg.Config):
    size: int = 10  # sensor-days per day to hand to people


@dg.asset(
    partitions_def=daily,
    deps=[daily_predictions],
    group_name="monitoring",
    kinds={"csv"},
    owners=["team:ml"],
    automation_condition=eager_after_parents(days=2),
)
def label_queue(
    context: dg.AssetExecutionContext, config: LabelQueueConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """The day's least confident predictions (probability nearest the decision threshold), as a
    CSV ready to be filled in and dropped into ``landing/labels/`` (columns of the labels
    contract: sensor_id, timestamp, failure)."""
    import numpy as np
    import pandas as pd

    day, store = context.partition_key, lake.store()
    predictions = read_frame(store, [paths.predictions_object(day)])
    # The threshold the predictions were made with (per model version).
    threshold = predictions.get("threshold", 0.5)
    distance = (predictions["failure_probability"] - threshold).abs()
    scale = np.maximum(threshold, 1 - threshold)
    queue = predictions.assign(uncertainty=1 - distance / scale).nlargest(
        config.size, "uncertainty"
    )
    out = pd.DataFrame(
        {
            "sensor_id": queue["sensor_id"],
            # Inside the day's label window (end of the day, plus the horizon): a 1 here counts
            # for this sensor-day; put the real failure time if it is known.
            "timestamp": f"{(date.fromisoformat(day) + timedelta(days=1)).isoformat()}T12:00:00Z",
            "failure": "",  # to fill in: 1 if the sensor failed within a day, else 0
            "failure_probability": queue["failure_probability"].round(6),
            "uncertainty": queue["uncertainty"].round(6),
            "model_version": queue["model_version"],
        }
    )
    write_frame(store, out, paths.label_queue_object(day))
    return dg.MaterializeResult(
        metadata={
            "rows": len(out),
            **object_uri(store, paths.label_queue_object(day)),
            "preview": table(out.head(10).to_dict("records")),
        }
    )


class LivePerformanceConfig(dg.Config):
    horizon_days: float = 1.0  # as in training: a failure within this after the day's end
    tolerance: float = 0.2  # live F1 may trail the version's holdout F1 by this much


@dg.asset(
    partitions_def=daily,
    deps=[daily_predictions, dg.AssetDep("raw_labels", partition_mapping=dg.AllPartitionMapping())],
    group_name="monitoring",
    kinds={"scikitlearn"},
    owners=["team:ml"],
    check_specs=[
        dg.AssetCheckSpec(
            "live_performance_matches_holdout",
            asset="live_performance",
            description="Live F1 per model version is within tolerance of its holdout F1.",
        )
    ],
)
def live_performance(
    context: dg.AssetExecutionContext,
    config: LivePerformanceConfig,
    lake: LakeResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult:
    """Precision, recall and F1 of the day's served predictions against the labels that arrived
    since, per model version."""
    import pandas as pd
    from sklearn.metrics import f1_score, precision_score, recall_score

    from ml_platform.lib import training
    from ml_platform.lib.lakehouse import end_of_day

    day, store = context.partition_key, lake.store()
    horizon = timedelta(days=config.horizon_days)
    until = pd.Timestamp(end_of_day(day)) + horizon
    served = read_frame(store, [paths.predictions_object(day)])
    parts = [o for o in store.list(f"{paths.BRONZE}labels/") if paths.bronze_day(o.key)]
    # Labels "have arrived" for the day once a labels file was ingested after its horizon.
    if not any(o.last_modified > until for o in parts):
        raise dg.Failure(
            f"labels for {day} have not arrived yet (no labels file ingested after "
            f"{until.isoformat()})",
            allow_retries=False,
        )
    labels = read_frame(store, [o.key for o in parts if paths.bronze_day(o.key) >= day])
    # The same target as training: a failure within the horizon after the day's end.
    days = training.sensor_days(
        served.assign(event_timestamp=end_of_day(day)),
        date.fromisoformat(day),
        date.fromisoformat(day),
    )
    truth = training.add_target(days, training.failure_events(labels), horizon)
    failed = set(truth.loc[truth[training.TARGET] == 1, "sensor_id"])
    served["actual"] = served["sensor_id"].isin(failed).astype(int)
    client, rows = mlflow.client(), []
    for version, group in served.groupby("model_version"):
        tags = client.get_model_version(MODEL_NAME, str(version)).tags
        holdout_f1 = float(tags.get("holdout_f1", "nan"))
        y, p = group["actual"], group["predicted_failure"]
        rows.append(
            {
                "model_version": str(version),
                "sensors": len(group),
                "actual_failures": int(y.sum()),
                "predicted_failures": int(p.sum()),
                "precision": float(precision_score(y, p, zero_division=0)),
                "recall": float(recall_score(y, p, zero_division=0)),
                "f1": float(f1_score(y, p, zero_division=0)),
                "holdout_f1": holdout_f1,
            }
        )
    # A day without failures and without alarms says nothing about F1: not held against it.
    behind = [
        r
        for r in rows
        if (r["actual_failures"] or r["predicted_failures"])
        and r["f1"] < r["holdout_f1"] - config.tolerance
    ]
    store.put_bytes(
        json.dumps({"day": day, "versions": rows}, indent=2).encode(),
        paths.live_performance_object(day),
    )
    return dg.MaterializeResult(
        metadata={
            "versions": table(rows),
            "f1": rows[0]["f1"] if len(rows) == 1 else -1.0,
            "actual_failures": sum(r["actual_failures"] for r in rows),
            **object_uri(store, paths.live_performance_object(day)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="live_performance_matches_holdout",
                passed=not behind,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"behind": dg.MetadataValue.json(behind), "tolerance": config.tolerance},
            )
        ],
    )
