"""From a landed file to its days: one lakehouse run per ``raw_readings`` materialization."""

import dagster as dg

from ml_platform.defs.lakehouse.assets import lakehouse_job
from ml_platform.defs.partitions import daily

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def build_lakehouse_sensor(*, interval_s: int, max_requests_per_tick: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="lakehouse_on_new_readings_sensor",
        job=lakehouse_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="For every raw_readings materialization, rebuilds sensor_chunks and "
        "daily_aggregates (and publishes online_features) over exactly the days that file "
        "touched, in one run.",
    )
    def lakehouse_on_new_readings_sensor(context: dg.SensorEvaluationContext):
        # The cursor is the storage id of the last materialization handled: exactly once each.
        # Quarantined files fail before materializing, so they never show up here.
        after = int(context.cursor) if context.cursor else None
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_readings"), after_storage_id=after),
            limit=max_requests_per_tick,
            ascending=True,
        )
        if not result.records:
            return dg.SkipReason("no new raw_readings materializations")
        known = set(daily.get_partition_keys(dynamic_partitions_store=context.instance))
        # Publishing needs the Feast registry; before it is applied, automation publishes the
        # days once feature_views has run.
        selection = [dg.AssetKey("sensor_chunks"), dg.AssetKey("daily_aggregates")]
        if context.instance.get_latest_materialization_event(dg.AssetKey("feature_views")):
            selection.append(dg.AssetKey("online_features"))
        # Days rebuilt after a file's materialization (a manual or demo run, a backfill) need no
        # run for that file: compare storage ids of the file and of each day's aggregates.
        rebuilt = context.instance.get_latest_storage_id_by_partition(
            dg.AssetKey("daily_aggregates"), dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        requests = []
        for record in result.records:
            materialization = record.asset_materialization
            entry = materialization.metadata.get("dates") if materialization else None
            days = sorted(set(entry.value if entry else []) & known)
            if not days:
                context.log.info(f"{materialization.partition}: no day inside the partitions")
                continue
            if all(rebuilt.get(day, -1) > record.storage_id for day in days):
                context.log.info(f"{materialization.partition}: its days were rebuilt since")
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"raw_readings:{record.storage_id}",
                    asset_selection=selection,
                    tags={
                        RANGE_START: days[0],
                        RANGE_END: days[-1],
                        "ml_platform/source_file": materialization.partition or "",
                    },
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=str(result.records[-1].storage_id))

    return lakehouse_on_new_readings_sensor
