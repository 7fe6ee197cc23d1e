"""The landing sensors: one per dataset, built from one table."""

import dagster as dg

from ml_platform.defs.ingest.assets import ingest_labels_job, ingest_readings_job
from ml_platform.defs.ingest.sensors import BatchLimits, build_landing_sensor
from ml_platform.defs.partitions import landing_days, scoring_files
from ml_platform.defs.predictions.assets import scoring_job
from ml_platform.settings import settings

#: dataset -> (the job its new object versions start, their partitions, batched or per file).
LANDING = {
    "readings": (ingest_readings_job, landing_days, True),
    "labels": (ingest_labels_job, landing_days, True),
    "scoring": (scoring_job, scoring_files, False),
}


@dg.definitions
def landing_sensors() -> dg.Definitions:
    config = settings()
    batch = BatchLimits(
        max_files=config.batch_max_files,
        max_bytes=config.batch_max_bytes,
        runs_per_tick=config.batches_per_tick,
    )
    sensors = [
        build_landing_sensor(
            dataset,
            job,
            partitions_def,
            interval_s=config.sensor_interval_s,
            max_requests_per_tick=config.max_requests_per_tick,
            events=config.events,
            reconcile_interval_s=config.reconcile_interval_s,
            batch=batch if batched else None,
        )
        for dataset, (job, partitions_def, batched) in LANDING.items()
    ]
    return dg.Definitions(sensors=sensors)
