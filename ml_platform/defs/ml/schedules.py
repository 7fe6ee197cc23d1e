"""Weekly retraining: the training set, the failure model and the clusters of the week just ended.

``champion_model`` follows through Declarative Automation once the new version is registered,
and at most one training step runs at a time (pool ``model_training``, limited in dagster.yaml).
"""

import dagster as dg

from ml_platform.defs.ml.assets import training_set
from ml_platform.defs.ml.models import failure_model, sensor_clusters
from ml_platform.defs.partitions import weekly

weekly_training_job = dg.define_asset_job(
    "weekly_training_job",
    selection=[training_set, failure_model, sensor_clusters],
    partitions_def=weekly,
    # Run tag that the instance's run queue limits (dagster.yaml: one training run at a time).
    tags={"ml_platform/kind": "training"},
    description="Training set, failure model and clusters of one week.",
)

#: Mondays 04:00 UTC, for the week that ended at midnight.
weekly_training_schedule = dg.build_schedule_from_partitioned_job(
    weekly_training_job,
    hour_of_day=4,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
