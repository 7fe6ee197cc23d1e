"""Real servers on loopback for tests and ``make dev-prod``: moto's S3 HTTP API (standing in for
MinIO) and a throwaway PostgreSQL cluster from the Debian binaries.

Both start on free (or given) loopback ports and are torn down with their processes and data.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
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

from ml_platform.settings import process_environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout} s")


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    # moto accepts any keys: each server gets fresh random ones, so none is written anywhere.
    access_key: str = field(default_factory=lambda: secrets.token_hex(10))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def reset(self) -> None:
        """Wipe every bucket and object (moto keeps its state in memory)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def env(self, bucket: str) -> dict[str, str]:
        """The environment a user sets to point the platform at this S3 API."""
        return {
            "ML_PLATFORM_STORE_URL": f"s3://{bucket}",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            # The deployed instance config (dagster.yaml) keeps step logs in the same bucket.
            "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
            "DAGSTER_COMPUTE_LOGS_PREFIX": "logs/compute",
        }


@contextlib.contextmanager
def moto_server(port: int | None = None) -> Iterator[S3Server]:
    port = port or free_port()
    command = [sys.executable, "-m", "ml_platform.devstack.moto_s3", "-H", "127.0.0.1"]
    fd, log_path = tempfile.mkstemp(prefix="moto-", suffix=".log")
    with os.fdopen(fd, "w") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            [*command, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    server = S3Server(f"http://127.0.0.1:{port}", process)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {Path(log_path).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=1).read()
            return True
        except OSError:
            return False

    try:
        _wait(ready, 30, "moto_server")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        os.unlink(log_path)


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the group, then SIGKILL whatever is left: a code server that a daemon or webserver
    spawned can ignore SIGTERM (Dagster maps it to SIGINT, ignored in background jobs) and would outlive the test."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def postgres_bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    bin_dir: Path
    data_dir: Path
    _as_postgres: bool

    def url(self, db: str, scheme: str = "postgresql+psycopg2") -> str:
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def create_database(self, name: str) -> None:
        subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
            capture_output=True,
            env=process_environment({"PGPASSWORD": self.password}),
        )

    def pg_ctl(self, *args: str) -> None:
        _run_pg([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], self._as_postgres)

    def dagster_env(self, db: str) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": db,
        }


def _run_pg(cmd: list[str], as_postgres: bool) -> None:
    if as_postgres:  # initdb refuses to run as root
        cmd = ["su", "postgres", "-s", "/bin/sh", "-c", subprocess.list2cmdline(cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def postgres_cluster(port: int | None = None) -> Iterator[Postgres]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    as_postgres = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="ml-platform-pg-"))
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", port or free_port()
    # Trust auth on loopback, but Feast and SQLAlchemy still want a password: a random one.
    password = secrets.token_urlsafe(16)
    pg = Postgres("127.0.0.1", port, "postgres", password, bin_dir, data, as_postgres)
    try:
        _run_pg(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            as_postgres,
        )
        pg.pg_ctl(
            "-l",
            str(base / "server.log"),
            "-w",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200 "
            "-c fsync=off",
            "start",
        )
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
