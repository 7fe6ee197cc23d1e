"""Helpers shared by test modules."""

from pathlib import Path

import dagster as dg

from ml_platform.defs.ingest.assets import raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform.lib.store import LocalStore


def ingest(instance, store: LocalStore, file: Path, name: str | None = None) -> str:
    name = name or file.name
    key = paths.landing_object("readings", name)
    store.put_file(file, key)
    partition = paths.partition_key(name, store.etag(key))
    instance.add_dynamic_partitions("reading_files", [partition])
    result = dg.materialize(
        [raw_readings],
        instance=instance,
        partition_key=partition,
        resources=build_resources(),
        raise_on_error=False,
    )
    return partition if result.success else ""
