"""The prediction API on the deployed database roles (docker/postgres/roles.sh), for real.

A throwaway PostgreSQL is initialised with the deployment's init.sql and roles.sh (random
passwords, password authentication). The API is started the way compose starts it
(``uvicorn --factory ml_platform.serving.app:create_app``, ``ML_PLATFORM_PROFILE=deployed``,
Feast's PostgreSQL profile as the read-only role ``api`` with its scratch schema) before anything
exists: it runs and says on /ready that it may not create the registry. The platform then
builds the lake, applies the Feast registry, publishes offline and online features as role
``feast`` and trains a champion; the API picks them up without a restart and answers /predict,
from the online store and point in time (``as_of``, Feast's offline store), while its role can
still write nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from ml_platform.defs.features.assets import feature_views, online_features
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START
from ml_platform.defs.ml.assets import training_set
from ml_platform.defs.ml.models import champion_model, failure_model
from ml_platform.lib import feature_store as fs
from ml_platform_tests.feature_helpers import (
    SERVED_DATA,
    SERVED_DAY,
    SERVED_MODEL,
    SERVED_WEEK,
    build_lake,
    embedded_platform,
    materialize,
    model_config,
    run,
)
from ml_platform_tests.helpers import memory_instance, tool_missing
from ml_platform_tests.servers import (
    ROLE_PASSWORDS,
    free_port,
    postgres_bin_dir,
    postgres_cluster,
    require_passwords,
    run_init_sql,
    run_roles_sh,
    stop_process_group,
)

pytestmark = [pytest.mark.integration]

SENSORS = [f"sensor-{i:03d}" for i in range(1, 11)]


@pytest.fixture(scope="module")
def deployed_postgres():
    """init.sql + roles.sh with random role passwords; then password authentication."""
    if postgres_bin_dir() is None:
        tool_missing("PostgreSQL server binaries (initdb/pg_ctl) are not installed")
    passwords = {variable: secrets.token_hex(16) for variable in ROLE_PASSWORDS.values()}
    with postgres_cluster() as pg:
        assert run_init_sql(pg).returncode == 0
        result = run_roles_sh(pg, passwords)
        assert result.returncode == 0, result.stderr
        require_passwords(pg)
        yield SimpleNamespace(host=pg.host, port=pg.port, role_password={
            role: passwords[variable] for role, variable in ROLE_PASSWORDS.items()})  # fmt: skip


def feast_env(pg, repo: Path, role: str, offline_schema: str) -> dict[str, str]:
    """Feast's PostgreSQL profile as compose sets it, connected as ``role``."""
    password = pg.role_password[role]
    return {
        fs.YAML_ENV: str(repo / "profiles" / "postgres.yaml"),
        "ML_PLATFORM_FEAST_REGISTRY_URL": (
            f"postgresql+psycopg://{role}:{password}@{pg.host}:{pg.port}/feast"
        ),
        "ML_PLATFORM_FEAST_PG_HOST": pg.host,
        "ML_PLATFORM_FEAST_PG_PORT": str(pg.port),
        "ML_PLATFORM_FEAST_PG_DB": "feast",
        "ML_PLATFORM_FEAST_PG_USER": role,
        "ML_PLATFORM_FEAST_PG_PASSWORD": password,
        "ML_PLATFORM_FEAST_PG_SSLMODE": "disable",
        "ML_PLATFORM_FEAST_OFFLINE_SCHEMA": offline_schema,
        "ML_PLATFORM_FEAST_ONLINE_SCHEMA": "feast_online",
    }


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait(what: str, probe, process: subprocess.Popen, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the API exited:\n{log.read_text()[-3000:]}"
        try:
            last = probe()
            if last:
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout} s (last: {last}):\n"
                         f"{log.read_text()[-3000:]}")  # fmt: skip


def _as_superuser(pg, database: str, query: str) -> list:
    import psycopg2

    conn = psycopg2.connect(host=pg.host, port=pg.port, user="postgres", dbname=database)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_the_api_serves_on_its_read_only_role(deployed_postgres, tmp_path, monkeypatch):
    pg, work = deployed_postgres, tmp_path
    embedded_platform(monkeypatch, work)  # lake, private feature repo, MLflow store under work
    repo = work / "feature_repo"
    port, log = free_port(), work / "api.log"
    api_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8",
        "PYTHONWARNINGS": "ignore", "MLFLOW_DISABLE_TELEMETRY": "true",
        "ML_PLATFORM_PROFILE": "deployed", "ML_PLATFORM_API_RELOAD_S": "1",
        "ML_PLATFORM_FEAST_REPO": str(repo), "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
        **feast_env(pg, repo, "api", "api_scratch"),
    }  # fmt: skip
    with log.open("w") as out:
        api = subprocess.Popen(
            [str(Path(sys.executable).with_name("uvicorn")), "--factory",
             "ml_platform.serving.app:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            env=api_env, stdout=out, stderr=subprocess.STDOUT, process_group=0,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # 1. A fresh deployment: no registry yet, and the API's role may not create one.
        _wait("the API's /health", lambda: _get(f"{url}/health")[0] == 200, api, log, 180)
        status, ready = _get(f"{url}/ready")
        assert status == 503 and "permission denied" in ready["detail"], ready
        assert _as_superuser(pg, "feast", "SELECT count(*) FROM pg_tables WHERE "
                             "schemaname = 'public'") == [(0,)], "the API created tables"  # fmt: skip

        # 2. The platform, as role feast: lake, registry, offline + online features, champion.
        for name, value in feast_env(pg, repo, "feast", "feast_offline").items():
            monkeypatch.setenv(name, value)
        with memory_instance() as instance:
            days = build_lake(instance, work, SERVED_DATA)
            run(instance, [feature_views])
            published = materialize(instance, [online_features],
                                    tags={RANGE_START: days[0], RANGE_END: SERVED_DAY})  # fmt: skip
            assert published.success, [e.message for e in published.all_events if e.is_failure]
            run(instance, [training_set], partition_key=SERVED_WEEK)
            run(instance, [failure_model], partition_key=SERVED_WEEK,
                config=model_config(**SERVED_MODEL))  # fmt: skip
            run(instance, [champion_model])

        # 3. The same API process picks the registry and the champion up.
        _wait("/ready", lambda: _get(f"{url}/ready")[1].get("status") == "ready", api, log, 120)
        status, body = _post(f"{url}/predict", {"sensor_ids": SENSORS})
        assert status == 200, body
        assert [p["sensor_id"] for p in body["predictions"]] == SENSORS
        status, then = _post(f"{url}/predict", {"sensor_ids": SENSORS[:3],
                                                "as_of": f"{SERVED_DAY}T23:59:59.999999Z"})  # fmt: skip
        assert status == 200, then
        assert [p["failure_probability"] for p in then["predictions"]] == pytest.approx(
            [p["failure_probability"] for p in body["predictions"][:3]])  # fmt: skip
        # Feast's entity table of the point-in-time query lived in api_scratch and is gone.
        assert _as_superuser(pg, "feast", "SELECT count(*) FROM pg_tables WHERE "
                             "schemaname = 'api_scratch'") == [(0,)]  # fmt: skip
    finally:
        stop_process_group(api)

    # 4. Through Feast itself, the API's role reads the online store and can write nothing.
    import psycopg

    for name, value in feast_env(pg, repo, "api", "api_scratch").items():
        monkeypatch.setenv(name, value)
    store = _resources()["feast"].store()
    rows = store.get_online_features(
        features=[f"{fs.DAILY_STATS_VIEW}:rows"], entity_rows=[{"sensor_id": SENSORS[0]}]
    ).to_dict()
    assert rows["rows"][0] is not None
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        store.write_to_online_store(fs.DAILY_STATS_VIEW, _one_row(store))
    fresh = _resources()[
        "feast"
    ].store()  # the refused write left the other one's connection failed
    from feast import Entity, ValueType

    probe = Entity(name="probe", join_keys=["probe_id"], value_type=ValueType.STRING)
    with pytest.raises(Exception, match="permission denied"):  # a registry change
        fresh.apply([probe])


def _resources():
    from ml_platform.defs.resources import build_resources

    return build_resources()


def _one_row(store):
    """One row in the shape of the daily stats view (values do not matter: it is refused)."""
    import pandas as pd

    view = store.get_feature_view(fs.DAILY_STATS_VIEW)
    now = pd.Timestamp.now(tz="UTC")
    return pd.DataFrame({
        "sensor_id": [SENSORS[0]], "event_timestamp": [now], "created_timestamp": [now],
        **{field.name: [0 if "Int" in str(field.dtype) else 0.0] for field in view.features},
    })  # fmt: skip
