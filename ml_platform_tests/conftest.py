"""Session-wide real servers and small helpers shared by the test modules."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ml_platform.lib.generator import GeneratorConfig, write_files
from ml_platform.lib.store import LocalStore
from ml_platform_tests.helpers import ingest, memory_instance, tool_missing
from ml_platform_tests.servers import (
    Postgres,
    S3Server,
    moto_server,
    postgres_bin_dir,
    postgres_cluster,
)

pytest_plugins = ("ml_platform_tests.crash_report",)

#: The longest modules go first, so that under ``pytest -n 2 --dist loadfile`` (``make test``)
#: the two processes finish together instead of one waiting on a long module started last. The
#: two daemon stacks with the most processes (production profile, fault suite) do not start at
#: the same moment: the fault suite follows the CPU-bound model tests.
#: Modules that run the real daemon (with its code server, run workers, often PostgreSQL and
#: moto). They wait on sensor ticks and run queues; two of them at once on 2 cores starve each
#: other's heartbeats and ticks (each took 2-5x as long), so they share one xdist group and run
#: one after another on one worker while the other worker takes the rest.
DAEMON_MODULES = (
    "test_prod_profile.py",
    "test_faults_daemon.py",
    "test_e2e_daemon.py",
    "test_ui_backfill.py",
)
#: The other modules, longest first, so no long module starts last.
SLOW_FIRST = (
    *DAEMON_MODULES,
    "test_models.py",
    "test_run_limits.py",
    "test_faults_load.py",
    "test_features.py",
    "test_lakehouse.py",
    "test_reproduce.py",
    "test_serving.py",
    "test_faults_uploads.py",
    "test_demo.py",
)


#: Every test is of one or more kinds (markers in pyproject.toml): the fault modules are `faults`,
#: a test marked none of integration/e2e/faults is `unit` (`make test-fast` runs those).
KINDS = ("integration", "e2e", "faults")


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, with the daemon modules as one unit: they run one after another on one
    worker while the other worker takes the remaining modules, one module at a time. (xdist's
    `loadgroup` cannot do it with pytest 9: it renames node ids through an attribute pytest no
    longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class DaemonModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "daemon modules" if module.rsplit("/", 1)[-1] in DAEMON_MODULES else module

    return DaemonModulesTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith("test_faults_"):
            item.add_marker(pytest.mark.faults)
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(pytest.mark.unit)
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable sort


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto in server mode: a real S3 HTTP API on a free loopback port."""
    with moto_server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket and the environment variables that point the platform at it."""
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    env = s3_server.env(bucket)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster from the Debian binaries."""
    if postgres_bin_dir() is None:
        tool_missing("PostgreSQL server binaries (initdb/pg_ctl) are not installed")
    with postgres_cluster() as pg:
        yield pg


@pytest.fixture
def store(tmp_path, monkeypatch) -> LocalStore:
    """An empty local object store, selected through ML_PLATFORM_STORE_URL."""
    monkeypatch.setenv("ML_PLATFORM_STORE_URL", (tmp_path / "lake").as_uri())
    return LocalStore(tmp_path / "lake")


@pytest.fixture
def instance():
    with memory_instance() as inst:
        yield inst


@pytest.fixture
def landed(tmp_path, store, instance) -> list[str]:
    """Three generated days (3 sensors, with duplicates and late rows) ingested into bronze."""
    files = write_files(
        GeneratorConfig(days=3, sensors=3, interval_s=600, seed=7), tmp_path / "gen"
    )
    return [ingest(instance, store, f) for f in files.readings]
