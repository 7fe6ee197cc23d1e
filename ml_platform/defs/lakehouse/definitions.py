"""The lakehouse sensor, built with the configured tick interval."""

import dagster as dg

from ml_platform.defs.lakehouse.sensors import build_lakehouse_sensor
from ml_platform.settings import settings


@dg.definitions
def lakehouse_sensors() -> dg.Definitions:
    config = settings()
    sensor = build_lakehouse_sensor(
        interval_s=config.sensor_interval_s, max_requests_per_tick=config.max_requests_per_tick
    )
    return dg.Definitions(sensors=[sensor])
