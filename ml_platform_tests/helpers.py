"""Helpers shared by test modules."""

from pathlib import Path

import dagster as dg

from ml_platform.defs.ingest.assets import raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.store import LocalStore

#: Header row of a readings file in the bundled contract's column order.
READINGS_HEADER = "timestamp,sensor_id,temperature,vibration,pressure,current\n"


def ingest_landed(instance, name: str, etag: str) -> tuple[str, dg.ExecuteInProcessResult]:
    """Register and materialize ``raw_readings`` for the object version already landed at
    landing/readings/<name> (any store: the environment's resources are used)."""
    partition = paths.partition_key(name, etag)
    instance.add_dynamic_partitions("reading_files", [partition])
    result = dg.materialize(
        [raw_readings],
        instance=instance,
        partition_key=partition,
        resources=build_resources(),
        raise_on_error=False,
    )
    return partition, result


def ingest(instance, store: LocalStore, file: Path, name: str | None = None) -> str:
    name = name or file.name
    key = paths.landing_object("readings", name)
    store.put_file(file, key)
    partition, result = ingest_landed(instance, name, store.etag(key))
    return partition if result.success else ""
