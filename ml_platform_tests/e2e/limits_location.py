"""A code location for the run-limit test: jobs with the run tags of the platform's own jobs and
an asset in the platform's training pool, whose steps hold for a few seconds, and a sensor that
requests their runs in pairs, the next pairs once the previous ones have finished.

Its steps only wait: what is under test is the instance's queue and pools (dagster.yaml and
docker/dagster.yaml) acting on the tags and the pool that the real jobs and assets carry, which
are read from them here, so a tag or pool taken off a real job fails the test too.
"""

from __future__ import annotations

import time

import dagster as dg

from ml_platform.defs.ingest.assets import ingest_readings_job
from ml_platform.defs.lakehouse.assets import lakehouse_job
from ml_platform.defs.ml.models import failure_model
from ml_platform.defs.ml.schedules import weekly_training_job

#: Long enough that two runs the queue lets through together overlap, whatever the seconds
#: between their workers' starts on a loaded machine.
HOLD_S = 5.0
PHASE_TAG = "limits/phase"
#: The pairs the sensor requests, in this order: phase name -> (job, run tags of the real job).
#: A pair with tags is held back by a run limit on at least one profile; the untagged one only
#: by the pool.
PHASES = {
    "lakehouse": ("hold_job", dict(lakehouse_job.tags)),
    "ingest": ("hold_job", dict(ingest_readings_job.tags)),
    "training_run": ("hold_job", dict(weekly_training_job.tags)),
    # Untagged, as an asset backfill launched from the graph is: only the pool orders the steps.
    "pool": ("pooled_job", {}),
}


@dg.asset
def hold() -> None:
    time.sleep(HOLD_S)


@dg.asset
def arrive() -> None:
    """Outside the pool: both runs of the pair are in progress at once before their pooled step."""
    time.sleep(HOLD_S)


@dg.asset(deps=[arrive], pool=failure_model.op.pool)
def pooled_hold() -> None:
    time.sleep(HOLD_S / 2)


hold_job = dg.define_asset_job("hold_job", selection=[hold])
pooled_job = dg.define_asset_job("pooled_job", selection=[arrive, pooled_hold])


def phase_groups(max_concurrent_runs: int) -> list[list[str]]:
    """The phases whose pairs are requested together. A group of limited pairs leaves the queue
    one slot more than one run of each, so that a pair whose limit were gone would run at once
    (and fail the test); the pool pair goes alone, as both its runs must start together."""
    limited = [phase for phase, (_, tags) in PHASES.items() if tags]
    pooled = [[phase] for phase, (_, tags) in PHASES.items() if not tags]
    size = max(1, max_concurrent_runs - 1)
    return [limited[i : i + size] for i in range(0, len(limited), size)] + pooled


def _finished(instance: dg.DagsterInstance, phases: list[str]) -> bool:
    runs = instance.get_runs(dg.RunsFilter(tags={PHASE_TAG: phases}))
    return len(runs) == 2 * len(phases) and all(r.is_finished for r in runs)


@dg.sensor(
    jobs=[hold_job, pooled_job],
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def request_pairs(context: dg.SensorEvaluationContext):
    """The pairs of the next group at once, when the group before it (the cursor) is done."""
    queue = context.instance.get_concurrency_config().run_queue_config
    groups = phase_groups(queue.max_concurrent_runs if queue else 1)
    done = None if context.cursor is None else int(context.cursor)
    if done is not None and not _finished(context.instance, groups[done]):
        return dg.SkipReason(f"waiting for the {groups[done]} pairs")
    if done == len(groups) - 1:
        return dg.SkipReason("every pair has run")
    group = 0 if done is None else done + 1
    requests = []
    for phase in groups[group]:
        job, tags = PHASES[phase]
        requests += [
            dg.RunRequest(run_key=f"{phase}-{i}", job_name=job, tags={**tags, PHASE_TAG: phase})
            for i in (1, 2)
        ]
    return dg.SensorResult(run_requests=requests, cursor=str(group))


defs = dg.Definitions(
    assets=[hold, arrive, pooled_hold],
    jobs=[hold_job, pooled_job],
    sensors=[request_pairs],
    # The platform's executor: the pool must hold for steps run in the run's own process.
    executor=dg.in_process_executor,
)
