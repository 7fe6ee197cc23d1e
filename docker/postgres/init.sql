-- Runs once, when the PostgreSQL volume is empty (docker-entrypoint-initdb.d).
-- One database per component, so each can be backed up, migrated or moved on its own:
--   dagster  Dagster instance storage (runs, event log, schedules; dagster.yaml / DAGSTER_PG_DB)
--   mlflow   MLflow tracking and model registry backend store (service added later)
--   feast    Feast SQL registry / offline / online store (deployment profile)
-- To add one later on an existing volume: docker compose exec postgres createdb -U postgres <name>
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE feast;
