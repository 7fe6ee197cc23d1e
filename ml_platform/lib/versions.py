"""Code versions from source files: what Dagster shows as an asset's code version and what the
MLflow runs and training-set manifests record."""

from __future__ import annotations

import hashlib
from pathlib import Path


def files_version(*files: str | Path) -> str:
    """A short hash of the files' names and bytes (a few small files: cheap at load time)."""
    digest = hashlib.sha256()
    for file in files:
        path = Path(file)
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
