"""Helpers shared by test modules."""

from pathlib import Path

import dagster as dg

from ml_platform.defs.ingest.assets import raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.store import LocalStore


def ingest_landed(instance, store: LocalStore, name: str) -> tuple[str, dg.ExecuteInProcessResult]:
    """Register and materialize ``raw_readings`` for the object already at landing/readings/name."""
    partition = paths.partition_key(name, store.etag(paths.landing_object("readings", name)))
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
    store.put_file(file, paths.landing_object("readings", name))
    partition, result = ingest_landed(instance, store, name)
    return partition if result.success else ""
