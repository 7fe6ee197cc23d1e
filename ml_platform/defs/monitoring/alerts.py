"""Alerts, one per failure, partition and day: a failed run (a failed blocking check fails its
run too), and a failed check that does not fail its run (warning checks, freshness checks).
Sent to ML_PLATFORM_ALERT_WEBHOOK_URL, or logged when it is unset."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg

from ml_platform.defs.resources import AlertResource, LakeResource
from ml_platform.lib import paths
from ml_platform.settings import settings

#: On its first tick the check sensor looks this far back; later ticks start where it stopped.
FIRST_LOOK_BACK_S = 24 * 3600
#: Failed evaluations read per check and tick.
HISTORY_LIMIT = 100


def send_once(
    context, alerts: AlertResource, lake: LakeResource, key: str, title: str, text: str,
    fields: dict[str, str],
) -> bool:  # fmt: skip
    """Send the alert unless one with ``key`` was sent today; returns whether it was sent.

    Marked as sent once delivered (or logged, without a webhook): a failed post is retried by the
    next occurrence of the same key.
    """
    today = datetime.now(UTC).date().isoformat()
    key = f"{key}|{today}"
    store = lake.store()
    marker = paths.alert_marker_object(today, key)
    if store.exists(marker):
        context.log.info(f"alert already sent today for {key}")
        return False
    delivered = alerts.send(title=title, text=text[:500], fields=fields, log=context.log)
    if delivered or not alerts.webhook_url:
        store.put_bytes(json.dumps({"key": key, "delivered": delivered, **fields}).encode(), marker)
    return True


def _run_partition(run: dg.DagsterRun) -> str:
    tags = run.tags
    if "dagster/asset_partition_range_start" in tags:
        return (
            f"{tags['dagster/asset_partition_range_start']}..."
            f"{tags.get('dagster/asset_partition_range_end', '')}"
        )
    return tags.get("dagster/partition", "")


@dg.run_failure_sensor(
    name="alert_on_failure_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One alert per failed asset, partition and day (a failed blocking check fails "
    "its run, so it alerts too); to ML_PLATFORM_ALERT_WEBHOOK_URL, or logged when unset.",
)
def alert_on_failure_sensor(
    context: dg.RunFailureSensorContext, alerts: AlertResource, lake: LakeResource
) -> None:
    run = context.dagster_run
    # The steps that failed name the assets (a failed blocking check fails its asset's step).
    assets = sorted({e.step_key for e in context.get_step_failure_events() if e.step_key}) or (
        sorted(k.to_user_string() for k in (run.asset_selection or []))
    )
    partition = _run_partition(run)
    what = ", ".join(assets) or run.job_name
    send_once(
        context, alerts, lake,
        key=f"{','.join(assets) or run.job_name}|{partition}",
        title=f"ml-platform: {what} failed",
        text=context.failure_event.message or "run failed",
        fields={"run": run.run_id, "partition": partition or "-", "job": run.job_name},
    )  # fmt: skip


@dg.sensor(
    name="alert_on_failed_check_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=max(settings().sensor_interval_s, 30),
    description="One alert per failed check, partition and day for the checks that do not fail "
    "their run (warning and freshness checks); blocking checks alert through their failed run.",
)
def alert_on_failed_check_sensor(
    context: dg.SensorEvaluationContext, alerts: AlertResource, lake: LakeResource
) -> dg.SkipReason:
    since = int(context.cursor) if context.cursor else None
    failed = _failed_evaluations(context, since)
    for record, evaluation in failed:
        partition = (
            evaluation.partition
            or record.partition
            or _due_partition(evaluation)
            or _record_run_partition(context.instance, record.run_id)
        )
        check = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        send_once(
            context, alerts, lake,
            key=f"check|{check}|{partition}",
            title=f"ml-platform: check {check} failed",
            text=evaluation.description or _first_reason(evaluation),
            fields={"check": check, "partition": partition or "-", "run": record.run_id,
                    "severity": evaluation.severity.value},
        )  # fmt: skip
    newest = max([since or 0, *(r.id for r, _ in failed)])
    if newest:
        context.update_cursor(str(newest))
    return dg.SkipReason(f"{len(failed)} failed check evaluation(s) since {since}")


def _failed_evaluations(context: dg.SensorEvaluationContext, since: int | None) -> list:
    """Failed, non-blocking check evaluations stored after ``since`` (on the first tick: of the
    last day), oldest first, with their records."""
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    storage = context.instance.event_log_storage
    first_look = datetime.now(UTC).timestamp() - FIRST_LOOK_BACK_S
    found = []
    for key in context.repository_def.asset_graph.asset_check_keys:
        history = storage.get_asset_check_execution_history(
            key, limit=HISTORY_LIMIT, status={AssetCheckExecutionRecordStatus.FAILED}
        )
        for record in history:
            if (since is not None and record.id <= since) or (
                since is None and record.create_timestamp < first_look
            ):
                continue
            evaluation = record.event.dagster_event.event_specific_data if record.event else None
            if isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.blocking:
                found.append((record, evaluation))
    return sorted(found, key=lambda pair: pair[0].id)


def _due_partition(evaluation: dg.AssetCheckEvaluation) -> str:
    """The partition an unpartitioned check judged (a freshness check names its due day)."""
    due = evaluation.metadata.get("due_partition")
    return str(getattr(due, "value", due) or "")


def _record_run_partition(instance: dg.DagsterInstance, run_id: str) -> str:
    """The partition (or range) of the run that stored an evaluation: the result of a check
    declared on a partitioned asset (``check_specs``) names no partition of its own."""
    run = instance.get_run_by_id(run_id) if run_id else None
    return _run_partition(run) if run else ""


def _first_reason(evaluation: dg.AssetCheckEvaluation) -> str:
    """Something to read when the check gave no description: its metadata, briefly."""
    shown = {k: _plain(v) for k, v in list(evaluation.metadata.items())[:5]}
    return json.dumps(shown, default=str)[:500]


def _plain(value) -> object:
    """A metadata value as JSON can take it: a table's rows as dicts (Dagster's records are
    named tuples that refuse iteration, so ``json.dumps`` cannot walk them), anything else
    that is not plain JSON as its text."""
    if isinstance(value, dg.TableMetadataValue):
        return [r.data for r in value.records]
    value = getattr(value, "value", value)
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)
