"""The deployed profile's instance storage: dagster-postgres' storages, with a connection pool.

dagster-postgres opens a new PostgreSQL connection for every statement outside the webserver
(``NullPool``), so that no process holds an idle connection. A run writes a few events for every
partition it touches and the daemon queries its storages many times a second, so connecting (a
server process forked, authentication) is most of what an event costs. Each storage here keeps
one connection open per process, opens more while concurrent threads need them (closed again on
return), and tests a connection before handing it out, so a restarted server costs one reconnect,
not a failed query. The webserver still replaces the engine with its own pool and statement
timeout, as it does for dagster-postgres' classes.

Used by docker/dagster.yaml; this module imports nothing of the project, so the slim webserver and
daemon image carries it alone (docker/Dockerfile).
"""

from typing import Any

from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

#: Up to 16 connections more than a storage keeps, while threads (threaded sensors and schedules,
#: the daemon's loops) need them at once; those are closed again on return.
POOL: dict[str, Any] = {"max_overflow": 16, "pool_recycle": 3600, "pool_pre_ping": True}


class _Pooled:
    postgres_url: str
    #: Connections kept open per process.
    kept = 1

    def _use_pool(self) -> None:
        self._engine.dispose()
        self._engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="AUTOCOMMIT",
            pool_size=self.kept,
            **POOL,
        )

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )


class PooledPostgresRunStorage(_Pooled, PostgresRunStorage):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_pool()


class PooledPostgresEventLogStorage(_Pooled, PostgresEventLogStorage):
    # Storing an asset event asks whether the tags table exists on a second connection while
    # the first one is still open.
    kept = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_pool()


class PooledPostgresScheduleStorage(_Pooled, PostgresScheduleStorage):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_pool()
