"""A code location for the run-limit test: jobs with the run tags of the platform's own jobs and
an asset in the platform's training pool, whose steps hold for a few seconds, and a sensor that
requests their runs two by two, one pair once the previous pair has finished.

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
HOLD_S = 3.0
PHASE_TAG = "limits/phase"
#: The pairs the sensor requests, in this order: phase name -> (job, run tags of the real job).
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


def _finished(instance: dg.DagsterInstance, phase: str) -> bool:
    runs = instance.get_runs(dg.RunsFilter(tags={PHASE_TAG: phase}))
    return len(runs) == 2 and all(r.is_finished for r in runs)


@dg.sensor(
    jobs=[hold_job, pooled_job],
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def request_pairs(context: dg.SensorEvaluationContext):
    """Both runs of the next phase at once, when the phase before it (the cursor) is done."""
    names = list(PHASES)
    done = context.cursor
    if done is None:
        phase = names[0]
    elif not _finished(context.instance, done):
        return dg.SkipReason(f"waiting for the {done} pair")
    elif done == names[-1]:
        return dg.SkipReason("every pair has run")
    else:
        phase = names[names.index(done) + 1]
    job, tags = PHASES[phase]
    pair = [
        dg.RunRequest(run_key=f"{phase}-{i}", job_name=job, tags={**tags, PHASE_TAG: phase})
        for i in (1, 2)
    ]
    return dg.SensorResult(run_requests=pair, cursor=phase)


defs = dg.Definitions(
    assets=[hold, arrive, pooled_hold],
    jobs=[hold_job, pooled_job],
    sensors=[request_pairs],
    # The platform's executor: the pool must hold for steps run in the run's own process.
    executor=dg.in_process_executor,
)
