"""The quarantine zone: a rejected object version kept byte for byte beside its reason."""

from __future__ import annotations

import json
from pathlib import Path

from ml_platform.lib import paths
from ml_platform.lib.store import ObjectStore


def keep_rejected(store: ObjectStore, dataset: str, version: str, local: Path, record: dict) -> str:
    """Copy the rejected bytes and write the ``.error.json`` record beside them; returns the
    copy's URI. The copy is made from the file that was read, so it is exactly the rejected
    version even if the landed key has been overwritten since; the original stays untouched."""
    relative_key, _ = paths.split_partition_key(version)
    file_id = paths.file_id(version)
    copy_key = paths.quarantine_object(dataset, file_id, relative_key)
    store.put_file(local, copy_key)
    record = {**record, "quarantined_copy": store.uri(copy_key)}
    store.put_bytes(
        json.dumps(record, indent=2, default=str).encode(),
        paths.quarantine_record(dataset, file_id, relative_key),
    )
    return store.uri(copy_key)


def release(store: ObjectStore, dataset: str, version: str) -> None:
    """Remove a version's quarantine copy and record (it has been accepted since)."""
    relative_key, _ = paths.split_partition_key(version)
    file_id = paths.file_id(version)
    store.delete(paths.quarantine_object(dataset, file_id, relative_key))
    store.delete(paths.quarantine_record(dataset, file_id, relative_key))
