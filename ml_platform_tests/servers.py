"""Real servers for tests (from :mod:`ml_platform.devstack.servers`), a Dagster daemon on the
repository's own instance config, and the Docker deployment's PostgreSQL bootstrap (init.sql and
roles.sh) run against a throwaway cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ml_platform.devstack.servers import (  # noqa: F401  (re-exported for the tests)
    Postgres,
    S3Server,
    _wait,
    free_port,
    moto_server,
    postgres_bin_dir,
    postgres_cluster,
    stop_process_group,
)

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def dagster_daemon(
    home: Path,
    env: dict[str, str],
    log: Path | None = None,
    config: str = "docker/dagster.yaml",
    workspace: Path = ROOT / "workspace.yaml",
):
    """``dagster-daemon run`` on ``workspace`` (by default the repository's), with ``home`` as
    DAGSTER_HOME holding the repository's own instance ``config`` (by default the deployed
    profile, PostgreSQL). Yields ``(instance, process)``.

    The instance is opened in this process, so the variables the config reads must be set
    in ``os.environ`` too.
    """

    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / config, home / "dagster.yaml")
    out = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
         str(workspace)],
        cwd=ROOT, env={**env, "DAGSTER_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        process_group=0,  # its code server and run workers die with the group (same session)
    )  # fmt: skip
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        yield instance, process
    finally:
        stop_process_group(process)
        instance.dispose()
        if log:
            out.close()


#: The PostgreSQL bootstrap of the Docker deployment (docker/compose.yaml mounts both into the
#: image's docker-entrypoint-initdb.d) and the role password each role reads.
INIT_SQL = ROOT / "docker" / "postgres" / "init.sql"
ROLES_SH = ROOT / "docker" / "postgres" / "roles.sh"
ROLE_PASSWORDS = {
    "dagster": "DAGSTER_DB_PASSWORD",
    "mlflow": "MLFLOW_DB_PASSWORD",
    "feast": "FEAST_DB_PASSWORD",
    "events": "EVENTS_DB_PASSWORD",
    "minio": "MINIO_DB_PASSWORD",
    "api": "API_DB_PASSWORD",
}


def psql_env(pg: Postgres) -> dict[str, str]:
    """What psql (and roles.sh) need to reach ``pg`` as the superuser."""
    return {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user,
            "PGPASSWORD": pg.password}  # fmt: skip


def run_init_sql(pg: Postgres) -> subprocess.CompletedProcess:
    psql = pg.bin_dir / "psql"
    return subprocess.run(
        [str(psql) if psql.exists() else "psql", "-d", "postgres", "--no-psqlrc",
         "-v", "ON_ERROR_STOP=1", "-f", str(INIT_SQL)],
        capture_output=True, text=True, timeout=60, check=False, env=psql_env(pg),
    )  # fmt: skip


def run_roles_sh(pg: Postgres, passwords: dict[str, str]) -> subprocess.CompletedProcess:
    """docker/postgres/roles.sh as the postgres image runs it: ``passwords`` maps each
    *_DB_PASSWORD variable to its value. psql from the cluster's own binaries comes first."""
    env = psql_env(pg)
    env["PATH"] = f"{pg.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        ["sh", str(ROLES_SH)], capture_output=True, text=True, timeout=120, check=False,
        env={**env, **passwords},
    )  # fmt: skip


def require_passwords(pg: Postgres) -> None:
    """Every role but the superuser must now authenticate with its password (SCRAM) over TCP, as
    in the postgres image (the throwaway cluster starts with trust for everyone)."""
    (pg.data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    pg.pg_ctl("reload")
