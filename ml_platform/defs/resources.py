"""Resources for every external system, built from the platform's settings.

Local and deployed profiles differ by configuration only: the object store is a folder by default
and MinIO/S3 when ``ML_PLATFORM_STORE_URL`` is an ``s3://`` URL. Secrets are passed as
``dg.EnvVar`` so their values are resolved at run time and never shown in the UI.

``settings`` and ``Settings`` (``ml_platform.settings``) are re-exported here for the modules
and tests that import them from the resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from ml_platform.lib import feature_store as fs
from ml_platform.lib.contract import Contract, load_contract
from ml_platform.lib.store import ObjectStore, open_store
from ml_platform.settings import Settings, set_mlflow_defaults, settings

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
        return fs.active_profile(Path(self.repo_path), self.yaml_path or None)

    def store(self) -> FeatureStore:
        if self._store is None:
            fs.import_feast_unchecked()
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

        set_mlflow_defaults()
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


def _env_or_none(name: str, value: str | None) -> dg.EnvVar | None:
    """An EnvVar when the variable is set (resolved at run time), else None (library default)."""
    return dg.EnvVar(name) if value else None


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources of the process's settings, or of those ``env`` gives."""
    return resources_for(settings(env))


def resources_for(config: Settings) -> dict[str, dg.ConfigurableResource]:
    """The only place that branches on the settings: embedded defaults or deployed services."""
    lake = LakeResource(
        url=dg.EnvVar("ML_PLATFORM_STORE_URL") if config.store_url_from_env else config.store_url,
        endpoint_url=_env_or_none("AWS_ENDPOINT_URL_S3", config.s3_endpoint_url),
        region=_env_or_none("AWS_REGION", config.aws_region),
        access_key_id=_env_or_none("AWS_ACCESS_KEY_ID", config.aws_access_key_id),
        secret_access_key=_env_or_none("AWS_SECRET_ACCESS_KEY", config.aws_secret_access_key),
    )
    ingest = IngestResource(
        readings_contract=config.readings_contract,
        labels_contract=config.labels_contract,
        memory_limit=config.ingest_memory,
    )
    feast = FeastResource(repo_path=config.feast_repo, yaml_path=config.feast_yaml)
    mlflow = MLflowResource(
        tracking_uri=config.mlflow_tracking_uri, artifact_root=config.mlflow_artifact_root
    )
    alerts = AlertResource(
        webhook_url=_env_or_none("ML_PLATFORM_ALERT_WEBHOOK_URL", config.alert_webhook_url)
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
