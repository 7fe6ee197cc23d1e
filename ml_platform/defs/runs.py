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
