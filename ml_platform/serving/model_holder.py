"""The champion model in memory, and the thread that follows its alias and swaps it in."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ml_platform.serving.logs import log

MODEL_NAME = "failure_model"
ALIAS = "champion"


@dataclass(frozen=True)
class ServedModel:
    model: Any
    name: str
    version: str
    alias: str
    threshold: float
    trained_at: str
    run_id: str
    features: list[str]


class ModelHolder:
    """The model being served. ``current`` is read without a lock: swapping is one assignment,
    so a request that took the model it started with finishes on it."""

    def __init__(self, mlflow, name: str = MODEL_NAME, alias: str = ALIAS):
        self.mlflow, self.name, self.alias = mlflow, name, alias
        self.available_features: set[str] | None = None  # what the feature service serves
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.on_tick: Callable[[], Any] | None = None  # more work for the watcher thread
        self._stop = threading.Event()

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one served. True on a swap."""
        # AliasUnresolved names the alias (and the version it dangles at): /ready shows it.
        version = self.mlflow.require_alias(self.name, self.alias)
        if self.current is not None and self.current.version == str(version.version):
            return False
        model = self.mlflow.mlflow().sklearn.load_model(f"models:/{self.name}/{version.version}")
        missing = set(model.feature_names_in_) - (self.available_features or set())
        if self.available_features is not None and missing:
            # Keep serving the current model rather than fail every request with it.
            raise ValueError(
                f"version {version.version} needs features the feature service lacks: "
                f"{sorted(missing)[:5]}"
            )
        self.current = _served(model, self.name, self.alias, version)
        log.info("model loaded", extra={"fields": {"model_version": self.current.version}})
        return True

    def watch(self, interval_s: float) -> threading.Thread:
        """Start the daemon thread that runs ``on_tick`` and ``refresh`` every ``interval_s``."""
        thread = threading.Thread(
            target=self._follow, args=(interval_s,), name="model-watch", daemon=True
        )
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _follow(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._tick()

    def _tick(self) -> None:
        try:
            if self.on_tick:
                self.on_tick()
            self.refresh()
            self.last_error = None
        except Exception as exc:  # keep serving the loaded model; /ready reports it
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("model refresh failed", extra={"fields": {"error": self.last_error}})


def _served(model, name: str, alias: str, version) -> ServedModel:
    """What the API tells about a loaded registry version, and the model itself."""
    return ServedModel(
        model=model,
        name=name,
        version=str(version.version),
        alias=alias,
        threshold=float(version.tags.get("threshold", 0.5)),
        trained_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(),
        run_id=version.run_id or "",
        features=list(model.feature_names_in_),
    )
