"""One settings object, read from the environment by ``ml_platform/settings.py`` only."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.lib import paths
from ml_platform.lib.notifications import EventTable
from ml_platform.settings import (
    Settings,
    process_environment,
    reset_settings,
    settings,
)

REPO = Path(__file__).resolve().parents[1]
#: Reading or changing the process environment directly, in any spelling.
_DIRECT_ENV = re.compile(
    r"\bos\.(?:environ|environb|getenv|putenv|unsetenv)\b"
    r"|\bfrom\s+os\s+import\s+[^\n]*\b(?:environ|environb|getenv|putenv|unsetenv)\b"
)

#: Every variable set, with a value unlike its default.
FULL_ENV = {
    "ML_PLATFORM_SENSOR_INTERVAL_S": "30",
    "ML_PLATFORM_MAX_REQUESTS_PER_TICK": "7",
    "ML_PLATFORM_START_DATE": "2023-06-01",
    "ML_PLATFORM_EVENTS_URL": "postgresql://events:pw@db:5432/events",
    "ML_PLATFORM_EVENTS_TABLE": "bucket_events",
    "ML_PLATFORM_RECONCILE_INTERVAL_S": "600",
    "ML_PLATFORM_BATCH_MAX_FILES": "50",
    "ML_PLATFORM_BATCH_MAX_BYTES": "1048576",
    "ML_PLATFORM_BATCHES_PER_TICK": "2",
    "ML_PLATFORM_STORE_URL": "s3://lake/prefix",
    "AWS_ENDPOINT_URL_S3": "http://minio:9000",
    "AWS_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "platform",
    "AWS_SECRET_ACCESS_KEY": "a-secret-key-for-tests",
    "ML_PLATFORM_CONTRACT": "/contracts/readings.yaml",
    "ML_PLATFORM_LABELS_CONTRACT": "/contracts/labels.yaml",
    "ML_PLATFORM_INGEST_MEMORY": "4GB",
    "ML_PLATFORM_FEAST_REPO": "/opt/feature_repo",
    "FEAST_FS_YAML_FILE_PATH": "/opt/feature_repo/profiles/postgres.yaml",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "ML_PLATFORM_MLFLOW_ARTIFACTS": "s3://mlflow-artifacts",
    "ML_PLATFORM_ALERT_WEBHOOK_URL": "https://hooks.example.test/T0/B0",
    "ML_PLATFORM_API_KEY": "an-api-key-for-tests",
    "ML_PLATFORM_API_RELOAD_S": "2.5",
    "ML_PLATFORM_API_MAX_BATCH": "50",
    "DAGSTER_HOME": "/opt/dagster/home",
}


def test_no_module_but_settings_touches_the_process_environment():
    offenders = [
        f"{path.relative_to(REPO).as_posix()}:{text.count(chr(10), 0, match.start()) + 1}"
        for path in sorted(
            [*(REPO / "ml_platform").rglob("*.py"), *(REPO / "feature_repo").rglob("*.py")]
        )
        if path != REPO / "ml_platform" / "settings.py"
        for text in [path.read_text()]
        for match in _DIRECT_ENV.finditer(text)
    ]
    assert offenders == [], "read the environment through ml_platform.settings"


def test_the_scan_recognises_every_spelling():
    for code in (
        "os.environ.get('X')",
        "os.environ['X']",
        "os.getenv('X')",
        "{**os.environ}",
        "from os import environ",
        "from os import path, getenv",
    ):
        assert _DIRECT_ENV.search(code), code
    assert not _DIRECT_ENV.search("os.path.join(a, b)")


def test_an_empty_environment_gives_the_embedded_profile():
    root = paths.project_root()
    config = Settings.from_env({})
    assert config == Settings()
    assert config == Settings(
        sensor_interval_s=15,
        max_requests_per_tick=100,
        start_date="2024-01-01",
        events=None,
        reconcile_interval_s=3600,
        batch_max_files=1000,
        batch_max_bytes=1 << 30,
        batches_per_tick=4,
        store_url=(root / ".lake").as_uri(),
        store_url_from_env=False,
        s3_endpoint_url=None,
        aws_region=None,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        readings_contract="",
        labels_contract="",
        ingest_memory="1GB",
        feast_repo=str(root / "feature_repo"),
        feast_yaml="",
        mlflow_tracking_uri=f"sqlite:///{root / '.mlflow' / 'mlflow.db'}",
        mlflow_artifact_root=(root / ".mlflow" / "artifacts").as_uri(),
        alert_webhook_url=None,
        api_key=None,
        api_reload_s=10.0,
        api_max_batch=500,
        dagster_home=None,
    )


def test_every_variable_maps_to_its_setting():
    assert Settings.from_env(FULL_ENV) == Settings(
        sensor_interval_s=30,
        max_requests_per_tick=7,
        start_date="2023-06-01",
        events=EventTable("postgresql://events:pw@db:5432/events", "bucket_events"),
        reconcile_interval_s=600,
        batch_max_files=50,
        batch_max_bytes=1 << 20,
        batches_per_tick=2,
        store_url="s3://lake/prefix",
        store_url_from_env=True,
        s3_endpoint_url="http://minio:9000",
        aws_region="eu-west-1",
        aws_access_key_id="platform",
        aws_secret_access_key="a-secret-key-for-tests",
        readings_contract="/contracts/readings.yaml",
        labels_contract="/contracts/labels.yaml",
        ingest_memory="4GB",
        feast_repo="/opt/feature_repo",
        feast_yaml="/opt/feature_repo/profiles/postgres.yaml",
        mlflow_tracking_uri="http://mlflow:5000",
        mlflow_artifact_root="s3://mlflow-artifacts",
        alert_webhook_url="https://hooks.example.test/T0/B0",
        api_key="an-api-key-for-tests",
        api_reload_s=2.5,
        api_max_batch=50,
        dagster_home="/opt/dagster/home",
    )


def test_empty_values_and_a_tracking_server_fall_back_as_before():
    config = Settings.from_env(
        {
            "ML_PLATFORM_STORE_URL": "",
            "ML_PLATFORM_API_KEY": "",
            "ML_PLATFORM_EVENTS_URL": "",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        }
    )
    assert config.store_url == paths.default_store_url() and not config.store_url_from_env
    assert config.api_key is None and config.events is None
    # A tracking server keeps artifacts where it is configured to.
    assert config.mlflow_artifact_root == ""
    assert Settings.from_env({"ML_PLATFORM_EVENTS_URL": "postgresql://e"}).events == EventTable(
        "postgresql://e", "minio_events"
    )


def test_secrets_stay_out_of_the_repr():
    text = repr(Settings.from_env(FULL_ENV))
    for name in ("AWS_SECRET_ACCESS_KEY", "ML_PLATFORM_API_KEY", "ML_PLATFORM_ALERT_WEBHOOK_URL"):
        assert FULL_ENV[name] not in text, name
    assert "pw@" not in text


def test_settings_are_built_once_per_environment(monkeypatch):
    monkeypatch.delenv("ML_PLATFORM_SENSOR_INTERVAL_S", raising=False)
    reset_settings()
    first = settings()
    assert settings() is first
    monkeypatch.setenv("ML_PLATFORM_SENSOR_INTERVAL_S", "45")
    assert settings().sensor_interval_s == 45 and settings() is settings()
    # A mapping of one's own: its settings, never cached nor mixed with the process's.
    assert settings({}) == Settings() and settings({}) is not settings({})
    assert settings(FULL_ENV) == Settings.from_env(FULL_ENV)


def test_resources_take_their_values_from_the_settings():
    from ml_platform.defs.resources import build_resources, resources_for

    deployed = build_resources(FULL_ENV)
    # Set variables become EnvVars, resolved when a run starts (the values stay out of the UI).
    assert deployed["lake"].url == dg.EnvVar("ML_PLATFORM_STORE_URL")
    assert deployed["lake"].secret_access_key == dg.EnvVar("AWS_SECRET_ACCESS_KEY")
    assert deployed["alerts"].webhook_url == dg.EnvVar("ML_PLATFORM_ALERT_WEBHOOK_URL")
    assert deployed["mlflow"].tracking_uri == "http://mlflow:5000"
    assert deployed["feast"].yaml_path == FULL_ENV["FEAST_FS_YAML_FILE_PATH"]
    assert deployed["ingest"].memory_limit == "4GB"
    local = resources_for(Settings())
    assert local["lake"].url == paths.default_store_url() and local["lake"].region is None
    assert local["mlflow"].tracking_uri == Settings().mlflow_tracking_uri
    assert local["alerts"].webhook_url is None


def test_a_child_process_environment_is_a_copy(monkeypatch):
    monkeypatch.setenv("ML_PLATFORM_SENSOR_INTERVAL_S", "15")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    child = process_environment({"PGPASSWORD": "for-the-child-only"})
    child["ML_PLATFORM_SENSOR_INTERVAL_S"] = "99"
    assert child["PGPASSWORD"] == "for-the-child-only"
    assert "PGPASSWORD" not in process_environment()
    assert settings().sensor_interval_s == 15


def test_a_missing_tool_skips_on_a_laptop_and_fails_under_ci(monkeypatch):
    from ml_platform_tests.helpers import tool_missing

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        tool_missing("no initdb")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no initdb; CI is set"):
        tool_missing("no initdb")
