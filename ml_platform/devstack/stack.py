"""The production profile on one machine, without Docker (``make dev-prod``).

Starts on 127.0.0.1, each as its own process group, in the order docker/compose.yaml does:

==================  =========================================================================
PostgreSQL          throwaway cluster; databases ``dagster``, ``mlflow``, ``feast``
S3 API              moto in server mode standing in for MinIO; buckets ``ml-platform`` and
                    ``mlflow-artifacts``
MLflow              ``mlflow server``: PostgreSQL backend, artifacts proxied to S3
code location       ``dagster code-server start`` (gRPC), runs are launched from it
webserver, daemon   ``dagster-webserver`` and ``dagster-daemon`` on a ``grpc_server`` workspace,
                    instance = ``docker/dagster.yaml`` on PostgreSQL
prediction API      ``uvicorn ml_platform.serving.app:create_app``
==================  =========================================================================

Every process gets the same environment, the one a deployment sets (``env.sh`` in the state
folder, so a shell can ``source`` it and use the CLIs against the stack). State is throwaway: the
S3 server keeps objects in memory, so the whole stack starts empty and is deleted on teardown.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ml_platform.devstack.servers import (
    Postgres,
    S3Server,
    free_port,
    moto_server,
    postgres_cluster,
    stop_process_group,
)
from ml_platform.settings import export_to_process, process_environment

ROOT = Path(__file__).resolve().parents[2]
BUCKET, ARTIFACTS_BUCKET = "ml-platform", "mlflow-artifacts"
DATABASES = ("dagster", "mlflow", "feast")
#: Ports of ``make dev-prod`` (the compose file's); tests pass 0 for free ones.
#: Minimum seconds between two evaluations of each sensor (the compose file's default is 30 s,
#: sized for listing large MinIO buckets; with bucket notifications a tick costs a query).
SENSOR_INTERVAL_S = 5
DEFAULT_PORTS = {
    "s3": 9000,
    "postgres": 5432,
    "mlflow": 5000,
    "grpc": 4000,
    "ui": 3000,
    "api": 8000,
}


@dataclass
class Stack:
    """What is running: ports, the shared environment and the processes."""

    state: Path
    ports: dict[str, int]
    env: dict[str, str]
    s3: S3Server
    postgres: Postgres
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def log(self, service: str) -> Path:
        return self.state / "logs" / f"{service}.log"

    def instance(self):
        """The Dagster instance the daemon and webserver use (PostgreSQL)."""
        import dagster as dg
        from dagster._core.instance.ref import InstanceRef

        # dagster.yaml names its PostgreSQL credentials as {env: DAGSTER_PG_...}, which Dagster
        # resolves from this process's environment.
        export_to_process({k: v for k, v in self.env.items() if k.startswith("DAGSTER_")})
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(self.env["DAGSTER_HOME"]))

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")


def _wait_for(what: str, probe, stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _environment(state: Path, ports: dict[str, int], s3: S3Server, pg: Postgres) -> dict[str, str]:
    """The deployed profile's variables (see .env.example), pointed at the local servers."""
    feast_repo = state / "feature_repo"
    shutil.copytree(
        ROOT / "feature_repo", feast_repo, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    return {
        **s3.env(BUCKET),
        **pg.dagster_env("dagster"),
        "DAGSTER_HOME": str(state / "dagster_home"),
        "DAGSTER_COMPUTE_LOGS_BUCKET": BUCKET,
        "DAGSTER_COMPUTE_LOGS_PREFIX": "logs/compute",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "ML_PLATFORM_FEAST_REPO": str(feast_repo),
        "FEAST_FS_YAML_FILE_PATH": str(feast_repo / "profiles" / "postgres.yaml"),
        "ML_PLATFORM_FEAST_REGISTRY_URL": pg.url("feast", "postgresql+psycopg"),
        "ML_PLATFORM_FEAST_PG_HOST": pg.host,
        "ML_PLATFORM_FEAST_PG_PORT": str(pg.port),
        "ML_PLATFORM_FEAST_PG_DB": "feast",
        "ML_PLATFORM_FEAST_PG_USER": pg.user,
        "ML_PLATFORM_FEAST_PG_PASSWORD": pg.password,
        "ML_PLATFORM_FEAST_PG_SSLMODE": "disable",
        "ML_PLATFORM_FEAST_OFFLINE_SCHEMA": "feast_offline",
        "ML_PLATFORM_FEAST_ONLINE_SCHEMA": "feast_online",
        "ML_PLATFORM_SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S),
        "ML_PLATFORM_API_RELOAD_S": "2",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONWARNINGS": "ignore",
    }


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.contextmanager
def prod_stack(
    ports: dict[str, int] | None = None,
    state: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start the whole production profile, yield it, and tear it all down (every process group,
    the PostgreSQL cluster, the state folder). ``ports`` values of 0 mean a free port."""
    wanted = {**DEFAULT_PORTS, **(ports or {})}
    # A port already taken (a system PostgreSQL on 5432, say) falls back to a free one; the
    # URLs printed at start-up and env.sh say which.
    wanted = {k: v if v and _port_free(v) else free_port() for k, v in wanted.items()}
    owned = state is None
    state = Path(tempfile.mkdtemp(prefix="ml-platform-prod-")) if owned else state
    (state / "logs").mkdir(parents=True, exist_ok=True)
    try:
        with moto_server(wanted["s3"]) as s3, postgres_cluster(wanted["postgres"]) as pg:
            for db in DATABASES:
                pg.create_database(db)
            client = s3.client()
            for bucket in (BUCKET, ARTIFACTS_BUCKET):
                client.create_bucket(Bucket=bucket)
            env = {**_environment(state, wanted, s3, pg), **(extra_env or {})}
            home = Path(env["DAGSTER_HOME"])
            home.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "docker" / "dagster.yaml", home / "dagster.yaml")
            workspace = state / "workspace.yaml"
            workspace.write_text(
                "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
                f"      port: {wanted['grpc']}\n      location_name: ml_platform\n"
            )
            (state / "env.sh").write_text(
                "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
            )
            stack = Stack(state, wanted, env, s3, pg)
            try:
                _start_all(stack, workspace)
                yield stack
            finally:
                for name in reversed(list(stack.processes)):
                    stop_process_group(stack.processes[name], timeout=20)
    finally:
        if owned:
            shutil.rmtree(state, ignore_errors=True)


def _start(stack: Stack, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
    with stack.log(name).open("w") as log:  # the child keeps its own handle
        stack.processes[name] = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=process_environment({**stack.env, **(env or {})}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Each service with its children is one process group, in the caller's session: a
            # session of its own would also be a CPU scheduling group of its own (Linux autogroup)
            # and take as much CPU as everything else on the machine together.
            process_group=0,
        )


def _start_all(stack: Stack, workspace: Path) -> None:
    p = stack.ports
    pg_url = stack.postgres.url("mlflow")
    _start(
        stack,
        "mlflow",
        # The compose file's command (docker/compose.yaml, service mlflow), on loopback.
        [_bin("mlflow"), "server", "--backend-store-uri", pg_url,
         "--artifacts-destination", f"s3://{ARTIFACTS_BUCKET}", "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(p["mlflow"]), "--workers", "1"],
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    _start(
        stack,
        "code-location",
        [_bin("dagster"), "code-server", "start", "-m", "ml_platform.definitions", "-a", "defs",
         "-h", "127.0.0.1", "-p", str(p["grpc"]), "--location-name", "ml_platform"],
    )  # fmt: skip

    def grpc_ready() -> bool:
        probe = [_bin("dagster"), "api", "grpc-health-check", "-p", str(p["grpc"])]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0

    _wait_for("MLflow server", lambda: _http_ok(f"{stack.url('mlflow')}/health"), stack, 120)
    _wait_for("code-location server", grpc_ready, stack, 120)
    _start(
        stack,
        "webserver",
        [_bin("dagster-webserver"), "-h", "127.0.0.1", "-p", str(p["ui"]), "-w", str(workspace)],
    )
    _start(stack, "daemon", [_bin("dagster-daemon"), "run", "-w", str(workspace)])
    _start(
        stack,
        "api",
        [_bin("uvicorn"), "--factory", "ml_platform.serving.app:create_app",
         "--host", "127.0.0.1", "--port", str(p["api"]), "--workers", "1"],
    )  # fmt: skip
    _wait_for("Dagster webserver", lambda: _http_ok(f"{stack.url('ui')}/server_info"), stack, 120)
    _wait_for("prediction API", lambda: _http_ok(f"{stack.url('api')}/health"), stack, 120)


class _StopOnSignal:
    """SIGINT and SIGTERM (Ctrl-C, a process manager's stop) both take the Ctrl-C path, also
    while the stack is still starting; a second signal during the teardown is ignored so the
    teardown stops every process group it started instead of dying half-way."""

    def __init__(self) -> None:
        self.stopping = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self)

    def __call__(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt


def main() -> int:
    print("starting the production profile on 127.0.0.1 (Ctrl-C stops and removes it) ...")
    started = time.monotonic()
    _StopOnSignal()
    try:
        with prod_stack() as stack:
            print(
                f"ready in {time.monotonic() - started:.0f} s\n"
                f"  Dagster UI      {stack.url('ui')}\n"
                f"  MLflow          {stack.url('mlflow')}\n"
                f"  prediction API  {stack.url('api')}/docs\n"
                f"  S3 API          {stack.s3.endpoint} (bucket {BUCKET}, keys in env.sh)\n"
                f"  PostgreSQL      127.0.0.1:{stack.ports['postgres']} (user postgres)\n"
                f"  logs            {stack.state / 'logs'}\n"
                f"  environment     source {stack.state / 'env.sh'}   (then e.g. "
                f"python -m ml_platform generate --days 14 --out s3://{BUCKET}/landing)"
            )
            while True:
                time.sleep(1)
                stack.check_alive()
    except KeyboardInterrupt:
        print("\nstopped; every process and the state folder are gone")
    return 0
