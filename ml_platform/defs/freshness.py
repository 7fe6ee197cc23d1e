"""Freshness per partition: the newest day that is due has been materialized by the deadline of
its asset's freshness policy (the next morning, UTC), checked at that deadline.

Dagster's freshness policy judges the asset as a whole, so backfilling an older day makes a late
asset look fresh; these checks judge the due day's partition itself. Dagster's own
``build_time_partition_freshness_checks`` expects the newest partition, which with today's
partition open (``end_offset=1``) is today's, not the day that just ended. A failed check
alerts (``alert_on_failed_check_sensor``).
"""

from datetime import UTC, datetime

import dagster as dg

from ml_platform.defs.features.assets import online_features
from ml_platform.defs.lakehouse.assets import daily_aggregates
from ml_platform.defs.predictions.assets import daily_predictions
from ml_platform.lib.freshness import due_day

DAILY_RESULTS = (daily_aggregates, online_features, daily_predictions)
CHECK_NAME = "due_day_materialized"


def deadline_of(asset: dg.AssetsDefinition) -> str:
    """The deadline cron of the asset's own freshness policy: one place states each deadline."""
    (spec,) = asset.specs
    return spec.freshness_policy.deadline_cron


def build_freshness_check(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    deadline = deadline_of(asset)

    @dg.asset_check(
        asset=asset,
        name=CHECK_NAME,
        description=f"The newest day that is due (by {deadline} UTC the next day) is "
        "materialized, whatever older days were backfilled since.",
        metadata={"deadline_cron": deadline, "timezone": "UTC"},
    )
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        day = due_day(deadline, datetime.now(UTC)).isoformat()
        found = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[day]), limit=1
        ).records
        metadata = {"due_partition": day, "deadline_cron": deadline}
        if found:
            metadata["materialized_at"] = dg.MetadataValue.timestamp(found[0].timestamp)
        return dg.AssetCheckResult(
            passed=bool(found),
            severity=dg.AssetCheckSeverity.WARN,
            description=None
            if found
            else f"{day} was due by its deadline (cron {deadline}, UTC) and is missing",
            metadata=metadata,
        )

    return _check


freshness_checks = [build_freshness_check(asset) for asset in DAILY_RESULTS]

#: Each asset's check runs at its deadline.
freshness_schedules = [
    dg.ScheduleDefinition(
        name=f"{asset.key.path[-1]}_freshness_schedule",
        cron_schedule=deadline_of(asset),
        execution_timezone="UTC",
        target=dg.AssetSelection.checks(check),
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    for asset, check in zip(DAILY_RESULTS, freshness_checks, strict=True)
]
