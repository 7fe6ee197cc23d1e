"""What the sensors ask the instance about runs."""

import dagster as dg

#: A run in one of these has been requested but not started yet.
WAITING = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]


def run_waiting(instance: dg.DagsterInstance, tags: dict[str, str]) -> bool:
    """Whether a run carrying ``tags`` is waiting to start."""
    return bool(instance.get_runs(filters=dg.RunsFilter(tags=tags, statuses=WAITING), limit=1))


def latest_run_of(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> str | None:
    """The run that last materialized ``partition`` of ``asset`` (None: never, or not in a run)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
    ).records
    return (records[0].run_id or None) if records else None
