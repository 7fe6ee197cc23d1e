"""Resources for every external system, and the one function that reads the environment.

Local and deployed profiles differ by configuration only: the object store is a folder by default
and MinIO/S3 when ``ML_PLATFORM_STORE_URL`` is an ``s3://`` URL. Secrets are passed as
``dg.EnvVar`` so their values are resolved at run time and never shown in the UI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from ml_platform.lib import feature_store as fs
from ml_platform.lib import paths
from ml_platform.lib.contract import Contract, load_contract
from ml_platform.lib.notifications import DEFAULT_TABLE, EventTable
from ml_platform.lib.store import ObjectStore, open_store

if TYPE_CHECKING:
    from feast import FeatureStore


class LakeResource(dg.ConfigurableResource):
    """The object store holding every zone: a local folder (``file://``) or ``s3://bucket/prefix``."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def store(self) -> ObjectStore:
        return open_store(
            self.url,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )


class IngestResource(dg.ConfigurableResource):
    """Data contracts and the resource budget of an ingest run."""

    readings_contract: str = ""  # empty: the bundled contracts/readings.yaml
    labels_contract: str = ""
    memory_limit: str = "1GB"  # DuckDB's budget; it spills to disk beyond it
    threads: int = 0  # 0: one per core

    _contracts: dict[str, Contract] = PrivateAttr(default_factory=dict)

    def contract(self, dataset: str) -> Contract:
        if dataset not in self._contracts:
            path = {"readings": self.readings_contract, "labels": self.labels_contract}[dataset]
            self._contracts[dataset] = load_contract(path or None, default=dataset)
        return self._contracts[dataset]


class FeastResource(dg.ConfigurableResource):
    """The Feast feature store: the repo folder and the feature_store.yaml of the active profile.

    Feast is imported on first use only; one ``FeatureStore`` per run.
    """

    repo_path: str
    yaml_path: str = ""  # empty: <repo_path>/feature_store.yaml (the embedded profile)

    _store: Any = PrivateAttr(default=None)

    def profile(self) -> fs.Profile:
        return fs.active_profile(Path(self.repo_path), {fs.YAML_ENV: self.yaml_path})

    def store(self) -> FeatureStore:
        if self._store is None:
            from feast import FeatureStore

            self._store = FeatureStore(
                repo_path=self.repo_path, fs_yaml_file=self.profile().yaml_path
            )
        return self._store


class AliasUnresolved(LookupError):
    """A model alias that names no existing version: missing, or dangling after a deletion."""


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (one URI for both).

    Local default: a SQLite store and an artifact folder under ``.mlflow/``. Deployed: an MLflow
    server (``MLFLOW_TRACKING_URI=http://mlflow:5000``, PostgreSQL behind it) or a database URI,
    with artifacts on MinIO/S3 (``ML_PLATFORM_MLFLOW_ARTIFACTS=s3://...``; the S3 endpoint comes
    from ``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``). MLflow is imported on first use:
    dagster-mlflow's resource imports it when the code location loads (it imports mlflow at module level).
    """

    tracking_uri: str
    artifact_root: str = ""  # where new experiments keep artifacts; empty: the server decides

    def mlflow(self):
        import mlflow

        # No telemetry, no progress bars in run logs; S3 artifacts honour the platform endpoint.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if os.environ.get("AWS_ENDPOINT_URL_S3"):
            os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL_S3"])
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def client(self):
        from mlflow import MlflowClient

        self.mlflow()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (with its artifact location) if missing."""
        mlflow = self.mlflow()
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        return mlflow.create_experiment(name, artifact_location=location)

    def alias_version(self, name: str, alias: str):
        """The version ``alias`` points at, or None (no such model or alias yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def require_alias(self, name: str, alias: str):
        """The version ``alias`` points at; :class:`AliasUnresolved` naming the alias (and the
        version it points at, when it dangles) if there is none. Other errors propagate."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            # A missing alias is INVALID_PARAMETER_VALUE, a dangling one RESOURCE_DOES_NOT_EXIST.
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            try:
                target = client.get_registered_model(name).aliases.get(alias)
            except MlflowException:
                raise AliasUnresolved(f"registered model {name} does not exist") from exc
            if target is None:
                raise AliasUnresolved(
                    f"{name} has no '{alias}' alias (never promoted, or its version was "
                    "deleted: MLflow drops the alias with it)"
                ) from exc
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise AliasUnresolved(
                f"alias '{alias}' of {name} points at version {target}, which does not exist "
                "(deleted?)"
            ) from exc

    def run_url(self, experiment_id: str, run_id: str) -> str:
        if self.tracking_uri.startswith("http"):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return f"runs:/{run_id} (mlflow ui --backend-store-uri {self.tracking_uri})"


@dataclass(frozen=True)
class Settings:
    """Values that shape definitions (not resources): read once when the code location loads."""

    sensor_interval_s: int = 15
    max_requests_per_tick: int = 100
    start_date: str = "2024-01-01"  # first daily partition
    feast_repo: str = ""  # the Feast repo whose definitions version the feature_views asset
    # MinIO bucket notifications in PostgreSQL: when set, landing sensors follow them (event mode)
    # and list the landing prefixes only every reconcile_interval_s.
    events: EventTable | None = None
    reconcile_interval_s: int = 3600
    # Micro-batches of the readings and labels landing sensors: files and bytes per ingest run,
    # runs per tick.
    batch_max_files: int = 500
    batch_max_bytes: int = 1 << 30
    batches_per_tick: int = 4


def settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        sensor_interval_s=int(env.get("ML_PLATFORM_SENSOR_INTERVAL_S", 15)),
        max_requests_per_tick=int(env.get("ML_PLATFORM_MAX_REQUESTS_PER_TICK", 100)),
        start_date=env.get("ML_PLATFORM_START_DATE", "2024-01-01"),
        feast_repo=env.get("ML_PLATFORM_FEAST_REPO") or str(fs.default_repo_path()),
        events=EventTable(
            env["ML_PLATFORM_EVENTS_URL"], env.get("ML_PLATFORM_EVENTS_TABLE") or DEFAULT_TABLE
        )
        if env.get("ML_PLATFORM_EVENTS_URL")
        else None,
        reconcile_interval_s=int(env.get("ML_PLATFORM_RECONCILE_INTERVAL_S", 3600)),
        batch_max_files=int(env.get("ML_PLATFORM_BATCH_MAX_FILES", 500)),
        batch_max_bytes=int(env.get("ML_PLATFORM_BATCH_MAX_BYTES", 1 << 30)),
        batches_per_tick=int(env.get("ML_PLATFORM_BATCHES_PER_TICK", 4)),
    )


def _env_or_none(name: str, env: Mapping[str, str]) -> dg.EnvVar | None:
    """An EnvVar when the variable is set (resolved at run time), else None (library default)."""
    return dg.EnvVar(name) if env.get(name) else None


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The only place that branches on the environment: embedded defaults or deployed services."""
    env = os.environ if env is None else env
    store_url = env.get("ML_PLATFORM_STORE_URL") or paths.default_store_url()
    lake = LakeResource(
        url=dg.EnvVar("ML_PLATFORM_STORE_URL") if env.get("ML_PLATFORM_STORE_URL") else store_url,
        endpoint_url=_env_or_none("AWS_ENDPOINT_URL_S3", env),
        region=_env_or_none("AWS_REGION", env),
        access_key_id=_env_or_none("AWS_ACCESS_KEY_ID", env),
        secret_access_key=_env_or_none("AWS_SECRET_ACCESS_KEY", env),
    )
    ingest = IngestResource(
        readings_contract=env.get("ML_PLATFORM_CONTRACT", ""),
        labels_contract=env.get("ML_PLATFORM_LABELS_CONTRACT", ""),
        memory_limit=env.get("ML_PLATFORM_INGEST_MEMORY", "1GB"),
    )
    feast = FeastResource(
        repo_path=env.get("ML_PLATFORM_FEAST_REPO") or str(fs.default_repo_path()),
        yaml_path=env.get(fs.YAML_ENV, ""),
    )
    local = paths.project_root() / ".mlflow"
    mlflow = MLflowResource(
        tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local / 'mlflow.db'}",
        artifact_root=env.get("ML_PLATFORM_MLFLOW_ARTIFACTS")
        or ("" if env.get("MLFLOW_TRACKING_URI") else (local / "artifacts").as_uri()),
    )
    alerts = AlertResource(
        webhook_url=dg.EnvVar("ML_PLATFORM_ALERT_WEBHOOK_URL")
        if env.get("ML_PLATFORM_ALERT_WEBHOOK_URL")
        else None
    )
    return {"lake": lake, "ingest": ingest, "feast": feast, "mlflow": mlflow, "alerts": alerts}


class AlertResource(dg.ConfigurableResource):
    """Alerts to a Slack-compatible incoming webhook; without a URL they are logged only."""

    webhook_url: str | None = None
    timeout_s: float = 10.0

    def send(self, title: str, text: str, fields: dict[str, str], log) -> bool:
        """Post ``{"text", "blocks"}`` (Slack's format, also understood by Mattermost and others).
        Returns whether it was delivered (False when only logged)."""
        import json
        import urllib.request

        lines = "\n".join(f"*{k}*: {v}" for k, v in fields.items())
        payload = {
            "text": f"{title}: {text}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"{text}\n{lines}"[:3000]}},
            ],
        }
        if not self.webhook_url:
            log.warning(f"alert (no webhook configured): {json.dumps(payload)}")
            return False
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps(payload).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()
        return True


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
