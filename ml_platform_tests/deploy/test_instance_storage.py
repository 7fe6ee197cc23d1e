"""The deployed profile's instance storage (docker/dagster.yaml, ml_platform/instance_storage.py)
on a real PostgreSQL: a run's events reuse pooled connections, and the pool outlives a server
restart. The storage sections are the backfill benchmark's (benchmarks/backfill.py)."""

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy
import yaml

from benchmarks.backfill import postgres_storage
from ml_platform_tests.servers import postgres_bin_dir, postgres_cluster

pytestmark = pytest.mark.integration

DAYS = 30
days = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date=f"2024-01-{DAYS + 1}")


@dg.asset(partitions_def=days, backfill_policy=dg.BackfillPolicy.single_run())
def nothing(context: dg.AssetExecutionContext) -> None:
    """One materialization event per day."""


@dg.asset_check(asset=nothing, partitions_def=days)
def nothing_check(context: dg.AssetCheckExecutionContext):
    for day in context.partition_keys:
        yield dg.AssetCheckEvaluation(
            asset_key=nothing.key, check_name="nothing_check", passed=True, partition=day
        )
    yield dg.Output(None)


class Connects:
    """Counts new DBAPI connections of every SQLAlchemy pool in this process."""

    def __init__(self) -> None:
        self.count = 0
        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", self._connected)

    def _connected(self, *_args) -> None:
        self.count += 1

    def close(self) -> None:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", self._connected)


def _instance(home: Path, sections: dict) -> dg.DagsterInstance:
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({**sections, "telemetry": {"enabled": False}})
    )
    return dg.DagsterInstance.from_config(str(home))


def _month(instance: dg.DagsterInstance) -> int:
    """Materializes every day of the month in one run; returns how many events it wrote."""
    keys = days.get_partition_keys()
    result = dg.materialize(
        [nothing, nothing_check],
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
    )
    assert result.success and len(result.get_asset_check_evaluations()) == DAYS
    return len(instance.all_logs(result.run_id))


@pytest.fixture
def pg(monkeypatch):
    if postgres_bin_dir() is None:
        pytest.fail("PostgreSQL server binaries (initdb/pg_ctl) are not installed")
    with postgres_cluster() as cluster:
        for db in ("pooled", "plain"):
            cluster.create_database(db)
        yield cluster


def test_a_run_reuses_pooled_connections_and_the_pool_outlives_a_restart(tmp_path, pg, monkeypatch):
    sections = yaml.safe_load(postgres_storage())
    plain = yaml.safe_load(postgres_storage(pooled=False))  # dagster-postgres' own classes
    connects = Connects()
    try:
        for name, value in pg.dagster_env("plain").items():
            monkeypatch.setenv(name, value)
        with _instance(tmp_path / "plain", plain) as instance:
            before = connects.count
            events = _month(instance)
            unpooled = connects.count - before

        for name, value in pg.dagster_env("pooled").items():
            monkeypatch.setenv(name, value)
        with _instance(tmp_path / "pooled", sections) as instance:
            assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
            before = connects.count
            assert _month(instance) == events
            pooled = connects.count - before

            log = str(pg.data_dir.parent / "server.log")
            pg.pg_ctl("-m", "fast", "-w", "-l", log, "restart")  # every open connection is cut
            before = connects.count
            assert _month(instance) == events
            after_restart = connects.count - before
    finally:
        connects.close()

    assert unpooled > events  # the reference: at least one connection per event
    # The connections kept: one for the run and schedule storages each, two for the event log.
    assert pooled <= 4, (pooled, events)
    assert after_restart <= 4, (after_restart, events)
