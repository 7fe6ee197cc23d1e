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


def latest_runs_of(
    instance: dg.DagsterInstance, asset: dg.AssetKey, partitions: list[str]
) -> dict[str, str]:
    """The run that last materialized each of ``partitions`` (absent: never, or not in a run),
    in two queries whatever the number of partitions."""
    latest = instance.get_latest_storage_id_by_partition(
        asset, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(partitions)
    )
    if not latest:
        return {}
    ids = sorted(set(latest.values()))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, storage_ids=ids), limit=len(ids)
    ).records
    run_of = {r.storage_id: r.run_id for r in records}
    return {day: run_of[sid] for day, sid in latest.items() if run_of.get(sid)}
