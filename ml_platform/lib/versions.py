"""Code versions from source files: what Dagster shows as an asset's code version and what the
MLflow runs and training-set manifests record."""

from __future__ import annotations

import hashlib
from importlib.resources.abc import Traversable
from pathlib import Path


def files_version(*files: str | Path | Traversable, salt: str = "") -> str:
    """A short hash of the files' names and bytes, and of ``salt`` (a few small files: cheap
    at load time)."""
    digest = hashlib.sha256(salt.encode())
    for file in files:
        path = file if isinstance(file, Traversable) else Path(file)
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
