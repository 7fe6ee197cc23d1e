"""The platform's settings: every value it takes from the environment, read in this module only.

:func:`settings` builds one :class:`Settings` from the process environment and every other module
takes its values from it (definitions, resources, the CLI, the demo, the prediction API, the
devstack, the Feast repo). No other module names ``os.environ``: the few that must hand the
environment on (to a child process, to a library that reads it itself, to the credential check,
which looks at every variable) do it through the functions at the end of this module.

Standard library and ``ml_platform.lib`` only: the code location imports this module.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ml_platform.lib import credentials, paths
from ml_platform.lib import feature_store as fs
from ml_platform.lib.notifications import DEFAULT_TABLE, EventTable


def _local_mlflow_uri() -> str:
    """The embedded MLflow store: a SQLite file under the project's ``.mlflow/``."""
    return f"sqlite:///{paths.project_root() / '.mlflow' / 'mlflow.db'}"


def _local_mlflow_artifacts() -> str:
    return (paths.project_root() / ".mlflow" / "artifacts").as_uri()


def _default_feast_repo() -> str:
    return str(fs.default_repo_path())


@dataclass(frozen=True)
class Settings:
    """Every value of the environment the platform reads; the defaults are the embedded profile.

    ``Settings()`` is the embedded profile itself; :meth:`from_env` starts from it.
    """

    # Sensors and partitions: read when the code location loads.
    sensor_interval_s: int = 15
    max_requests_per_tick: int = 100
    start_date: str = "2024-01-01"  # first daily partition
    # Where the asset pages' code links point: the repository's web address and branch (None:
    # the local files).
    git_url: str | None = None
    git_branch: str = "main"
    # MinIO bucket notifications in PostgreSQL: when set, landing sensors follow them (event mode)
    # and list the landing prefixes only every reconcile_interval_s.
    events: EventTable | None = None
    reconcile_interval_s: int = 3600
    # Micro-batches of the readings and labels landing sensors: files and bytes per ingest run,
    # runs per tick. Every run pays a worker process start, which larger batches share out.
    batch_max_files: int = 1000
    batch_max_bytes: int = 1 << 30
    batches_per_tick: int = 4

    # The object store: a local folder (the project's .lake/) or s3://bucket/prefix.
    store_url: str = field(default_factory=paths.default_store_url)
    # Whether ML_PLATFORM_STORE_URL named it: the lake resource then defers it to run time.
    store_url_from_env: bool = False
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)

    # Ingest: data contracts (empty: the bundled ones) and DuckDB's memory budget.
    readings_contract: str = ""
    labels_contract: str = ""
    ingest_memory: str = "1GB"

    # Feast: the repo whose definitions version the feature_views asset, and the active
    # feature_store.yaml (empty: the repo's own, the embedded profile).
    feast_repo: str = field(default_factory=_default_feast_repo)
    feast_yaml: str = ""

    # MLflow tracking and registry (one URI), and where new experiments keep artifacts (empty:
    # the tracking server decides).
    mlflow_tracking_uri: str = field(default_factory=_local_mlflow_uri)
    mlflow_artifact_root: str = field(default_factory=_local_mlflow_artifacts)

    # Slack-compatible incoming webhook of the alerts (None: alerts are logged only).
    alert_webhook_url: str | None = field(default=None, repr=False)

    # The prediction API: the key /predict requires (None: none), how often it polls the
    # champion alias, and the most sensors one request may score.
    api_key: str | None = field(default=None, repr=False)
    api_reload_s: float = 10.0
    api_max_batch: int = 500

    # The Dagster instance's folder (None: Dagster's temporary instance).
    dagster_home: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings ``env`` gives; every variable it leaves unset keeps its default."""
        defaults = cls()
        return cls(
            **_definition_values(env, defaults),
            **_store_values(env, defaults),
            **_pipeline_values(env, defaults),
            **_service_values(env, defaults),
        )


def _definition_values(env: Mapping[str, str], d: Settings) -> dict[str, Any]:
    """What shapes the definitions: sensor ticks, partitions, event mode and micro-batches."""
    events_url = env.get("ML_PLATFORM_EVENTS_URL")
    return {
        "sensor_interval_s": int(env.get("ML_PLATFORM_SENSOR_INTERVAL_S", d.sensor_interval_s)),
        "max_requests_per_tick": int(
            env.get("ML_PLATFORM_MAX_REQUESTS_PER_TICK", d.max_requests_per_tick)
        ),
        "start_date": env.get("ML_PLATFORM_START_DATE", d.start_date),
        "git_url": env.get("ML_PLATFORM_GIT_URL") or d.git_url,
        "git_branch": env.get("ML_PLATFORM_GIT_BRANCH") or d.git_branch,
        "events": EventTable(events_url, env.get("ML_PLATFORM_EVENTS_TABLE") or DEFAULT_TABLE)
        if events_url
        else d.events,
        "reconcile_interval_s": int(
            env.get("ML_PLATFORM_RECONCILE_INTERVAL_S", d.reconcile_interval_s)
        ),
        "batch_max_files": int(env.get("ML_PLATFORM_BATCH_MAX_FILES", d.batch_max_files)),
        "batch_max_bytes": int(env.get("ML_PLATFORM_BATCH_MAX_BYTES", d.batch_max_bytes)),
        "batches_per_tick": int(env.get("ML_PLATFORM_BATCHES_PER_TICK", d.batches_per_tick)),
    }


def _store_values(env: Mapping[str, str], d: Settings) -> dict[str, Any]:
    """The object store and its S3 connection (an empty variable counts as unset)."""
    return {
        "store_url": env.get("ML_PLATFORM_STORE_URL") or d.store_url,
        "store_url_from_env": bool(env.get("ML_PLATFORM_STORE_URL")),
        "s3_endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or d.s3_endpoint_url,
        "aws_region": env.get("AWS_REGION") or d.aws_region,
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID") or d.aws_access_key_id,
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY") or d.aws_secret_access_key,
    }


def _pipeline_values(env: Mapping[str, str], d: Settings) -> dict[str, Any]:
    """Contracts, Feast and MLflow: what the assets read and write besides the lake."""
    tracking_uri = env.get("MLFLOW_TRACKING_URI")
    # A tracking server keeps artifacts where it is configured to, unless the platform says.
    artifact_default = "" if tracking_uri else d.mlflow_artifact_root
    return {
        "readings_contract": env.get("ML_PLATFORM_CONTRACT", d.readings_contract),
        "labels_contract": env.get("ML_PLATFORM_LABELS_CONTRACT", d.labels_contract),
        "ingest_memory": env.get("ML_PLATFORM_INGEST_MEMORY", d.ingest_memory),
        "feast_repo": env.get("ML_PLATFORM_FEAST_REPO") or d.feast_repo,
        "feast_yaml": env.get("FEAST_FS_YAML_FILE_PATH", d.feast_yaml),
        "mlflow_tracking_uri": tracking_uri or d.mlflow_tracking_uri,
        "mlflow_artifact_root": env.get("ML_PLATFORM_MLFLOW_ARTIFACTS") or artifact_default,
    }


def _service_values(env: Mapping[str, str], d: Settings) -> dict[str, Any]:
    """Alerts, the prediction API and the Dagster instance."""
    return {
        "alert_webhook_url": env.get("ML_PLATFORM_ALERT_WEBHOOK_URL") or d.alert_webhook_url,
        "api_key": env.get("ML_PLATFORM_API_KEY") or d.api_key,
        "api_reload_s": float(env.get("ML_PLATFORM_API_RELOAD_S", d.api_reload_s)),
        "api_max_batch": int(env.get("ML_PLATFORM_API_MAX_BATCH", d.api_max_batch)),
        "dagster_home": env.get("DAGSTER_HOME", d.dagster_home),
    }


# A few environments at most: the process's, and the few a test switches between.
@functools.lru_cache(maxsize=8)
def _settings_of(environment: frozenset[tuple[str, str]]) -> Settings:
    return Settings.from_env(dict(environment))


def settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of the process environment, built once; those of ``env`` when given (built
    each time, for tests and tools with an environment of their own).

    The cache is keyed by the environment's contents, so a process that changes its
    environment (a test's ``monkeypatch.setenv``, the devstack exporting its variables) gets
    settings that follow it, and one that does not always gets the same object.
    """
    if env is not None:
        return Settings.from_env(env)
    return _settings_of(frozenset(os.environ.items()))


def reset_settings() -> None:
    """Forget the settings built so far: the next :func:`settings` reads the environment again."""
    _settings_of.cache_clear()


def require_safe_process_environment() -> None:
    """Refuse unsafe credentials in the deployed profile (see ``lib/credentials.py``): the check
    looks at every variable of the process, not only the platform's settings."""
    credentials.require_safe_environment(os.environ)


def process_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the process environment with ``extra`` on top: for child processes, which
    inherit everything, and for the credential check of the CLI."""
    return {**os.environ, **(extra or {})}


def export_to_process(values: Mapping[str, str]) -> None:
    """Set ``values`` in the process environment, for libraries that read it themselves
    (Dagster resolves ``{env: NAME}`` of dagster.yaml from it)."""
    os.environ.update(values)


def set_mlflow_defaults() -> None:
    """MLflow reads these switches from the process environment only: no telemetry and no
    progress bars in run logs, and S3 artifacts through the platform's S3 endpoint. A value the
    user sets wins."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    endpoint = settings().s3_endpoint_url
    if endpoint:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)


def quiet_mlflow_logs() -> None:
    """MLflow's INFO lines (one per logged model) are noise in a demo's output; a level the
    user sets wins."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
