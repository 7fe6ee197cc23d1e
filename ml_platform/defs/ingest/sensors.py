"""Landing sensors: every new object version under a landing prefix becomes one partition and run."""

from typing import Any

import dagster as dg

from ml_platform.defs.resources import LakeResource
from ml_platform.lib import paths
from ml_platform.lib.landing import LandingCursor, select_new


def build_landing_sensor(
    dataset: str,
    job: Any,  # what dg.define_asset_job returns
    partitions_def: dg.DynamicPartitionsDefinition,
    *,
    interval_s: int,
    max_requests_per_tick: int,
) -> dg.SensorDefinition:
    prefix = paths.LANDING_PREFIXES[dataset]

    @dg.sensor(
        name=f"{dataset}_landing_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests one run per new object version under {prefix} "
        f"(at most {max_requests_per_tick} per tick).",
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
        store = lake.store()
        cursor = LandingCursor.from_json(context.cursor)
        # An unreachable store raises here: the tick fails with the reason, the cursor stays.
        new, next_cursor = select_new(store.list(prefix), cursor, max_requests_per_tick)
        if not new:
            return dg.SkipReason(f"no new objects under {store.uri(prefix)}")
        requests = []
        for obj in new:
            if obj.key.endswith("/"):  # a "folder" marker some S3 clients create: not a file
                continue
            try:
                etag = obj.etag or store.etag(obj.key)
            except FileNotFoundError:
                continue  # deleted between listing and now: nothing to do
            key = paths.partition_key(obj.key.removeprefix(prefix), etag)
            requests.append(
                dg.RunRequest(
                    run_key=key,  # the same object version never runs twice
                    partition_key=key,
                    tags={"ml_platform/object": store.uri(obj.key)},
                )
            )
        context.log.info(f"{len(requests)} new object(s) under {store.uri(prefix)}")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                partitions_def.build_add_request([r.partition_key for r in requests])
            ],
            cursor=next_cursor.to_json(),
        )

    return _sensor
