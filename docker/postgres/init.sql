-- Run by the postgres image when its volume is empty (docker-entrypoint-initdb.d, through
-- `psql -v ON_ERROR_STOP=1`, connected to the `postgres` database). psql syntax (\gexec,
-- \connect): run it with psql, not with a driver.
--
-- One database per component, so each can be backed up, migrated or moved on its own:
--   dagster  Dagster instance storage (runs, event log, schedules; docker/dagster.yaml / DAGSTER_PG_DB)
--   mlflow   MLflow tracking and model registry backend store
--   feast    Feast SQL registry / offline / online store (deployment profile)
--   events   MinIO bucket notifications (table minio_events, below)
--
-- Idempotent: on an existing volume (e.g. after an upgrade that added a database), run it again:
--   docker compose --env-file docker/.env -f docker/compose.yaml exec -T postgres \
--     psql -U postgres -v ON_ERROR_STOP=1 -f /docker-entrypoint-initdb.d/10-databases.sql
-- (CREATE DATABASE has no IF NOT EXISTS and cannot run in a DO block, hence \gexec.)

SELECT 'CREATE DATABASE dagster' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'dagster')\gexec
SELECT 'CREATE DATABASE mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SELECT 'CREATE DATABASE feast' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'feast')\gexec
SELECT 'CREATE DATABASE events' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'events')\gexec

\connect events

-- MinIO's PostgreSQL notification target, `access` format (MINIO_NOTIFY_POSTGRES_*_PRIMARY in
-- compose.yaml): MinIO appends one row per event with
--   INSERT INTO minio_events (event_time, event_data) VALUES ($1, $2)
-- where event_data is {"Records": [<S3 event record>]}. MinIO only creates the table when it is
-- missing, and then without a key; creating it here first adds `id`, a monotonically increasing
-- cursor for readers (the landing sensor follows `id > last seen`). compose.yaml limits MinIO to
-- one connection (MAX_OPEN_CONNECTIONS 1), so ids normally commit in increasing order; readers
-- still tolerate gaps (ml_platform/lib/notifications.py).
CREATE TABLE IF NOT EXISTS public.minio_events (
    id         bigserial   PRIMARY KEY,
    event_time timestamptz NOT NULL,
    event_data jsonb       NOT NULL
);
