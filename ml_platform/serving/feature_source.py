"""The Feast store the API reads features from: opened once, its registry followed, its online
store checked before a read is trusted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from ml_platform.lib import feature_store as fs
from ml_platform.serving import online_store


class FeatureSource:
    """The feature store and feature service; both stay None until the first registry tick
    that succeeds. No model is loaded before that, so a request with a model finds them."""

    def __init__(self, feast) -> None:
        self.feast = feast  # the platform's Feast resource
        self.store = None
        self.service = None
        self._online_inode: int | None = None  # of the SQLite file Feast has open

    def refresh(self) -> set[str]:
        """Reread the registry and look the feature service up; the features it serves."""
        # A fresh deployment starts before the registry is applied: the service is looked
        # up again on every tick until it exists, and no model is loaded before it.
        store = self._opened()
        if hasattr(store.registry, "cached_registry_proto_ttl"):
            store.refresh_registry()
        # Looked up on every tick (a cached registry read): a registry change that adds
        # features lets a champion trained on them in without a restart.
        service = store.get_feature_service(fs.FEATURE_SERVICE)
        served = set(fs.service_features(service))
        self.service = service
        return served

    def online_problem(self, deep: bool) -> str | None:
        """Why the online store cannot answer: its file, then (``deep``) a read and its tables."""
        problem = self._online_file_problem(self.store)
        if problem or not deep:
            return problem
        read_error = None
        try:
            self.store.get_online_features(
                features=[f"{fs.DAILY_STATS_VIEW}:rows"], entity_rows=[{"sensor_id": "-"}]
            )
        except Exception as exc:
            read_error = f"online store: {type(exc).__name__}"
        return self.tables_problem() or read_error

    def tables_problem(self) -> str | None:
        """Feature views whose online table is missing or empty, or None."""
        try:
            return online_store.tables_problem(self.store)
        except Exception as exc:  # the inspection itself failed (database down, say)
            return f"online store: {type(exc).__name__}"

    def online_matrix(
        self, features: list[str], sensors: list[str]
    ) -> tuple[np.ndarray, list[list[str]]]:
        """The sensors' latest online values as a float matrix in the model's feature order, and
        for each sensor the feature views the online store has no row for (judged by the event
        time: a stored row may hold missing values)."""
        service = self.service
        got = self.store.get_online_features(
            features=service, entity_rows=[{"sensor_id": s} for s in sensors]
        ).to_dict(include_event_timestamps=True)
        matrix = np.array(
            [[np.nan if v is None else v for v in got[name]] for name in features], dtype="float64"
        ).T
        first = {p.name: p.features[0].name for p in service.feature_view_projections if p.features}
        absent = [
            [view for view, name in first.items() if not got[f"{name}__ts"][i]]
            for i in range(len(sensors))
        ]
        return matrix, absent

    def as_of_matrix(self, features: list[str], sensors: list[str], as_of: datetime) -> np.ndarray:
        """The features known at ``as_of`` (point in time, offline store), in the model's order."""
        import pandas as pd

        at = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
        asked = pd.DataFrame({"sensor_id": sensors, "event_timestamp": at})
        return fs.features_at(self.store, asked)[features].astype("float64").to_numpy()

    def _opened(self):
        """The store, opened on the first call."""
        # In the deployed profile the API's database role may only read, so it cannot create
        # the SQL registry's tables of a fresh deployment (the code location does): the store
        # opens on the first tick that succeeds, and until then /ready says why.
        if self.store is None:
            store = self.feast.store()
            # A registry cache that expires is refreshed inside whichever request comes next
            # (tens of ms on the event loop); here it never expires and the watcher
            # refreshes it instead.
            if hasattr(store.registry, "cached_registry_proto_ttl"):
                store.registry.cached_registry_proto_ttl = timedelta(0)
            self._online_inode = None
            self._online_file_problem(store)  # the file Feast will open
            self.store = store
        return self.store

    def _online_file_problem(self, store) -> str | None:
        """A missing SQLite online store file, or None. Feast keeps its connection open: a file
        that was deleted (and perhaps written again) would still be read through the old one, so
        a new file (another inode) makes it reconnect. A few microseconds: run on every request."""
        path = online_store.sqlite_path(store)
        if path is None:
            return None
        try:
            inode = path.stat().st_ino
        except FileNotFoundError:
            return f"the online store file {path.name} is missing: apply the registry (feature_views) and materialize online_features"
        if self._online_inode is None:
            self._online_inode = inode
        elif self._online_inode != inode:
            self._online_inode = inode
            store._get_provider().online_store._conn = None  # the next read opens the new file
        return None
