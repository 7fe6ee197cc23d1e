#!/bin/sh
# Per-service PostgreSQL roles. Run by the postgres image after 10-databases.sql (init.sql) when
# its volume is empty (docker-entrypoint-initdb.d, mounted as 20-roles.sh; the entrypoint runs or
# sources it with the container's environment). Idempotent: run it again on an existing volume to
# create missing roles, re-apply the passwords from the env file, the owners and the grants:
#   docker compose --env-file docker/.env -f docker/compose.yaml exec -T postgres \
#     sh /docker-entrypoint-initdb.d/20-roles.sh
#
#   role     password variable    may
#   dagster  DAGSTER_DB_PASSWORD  own database dagster (Dagster instance storage)
#   mlflow   MLFLOW_DB_PASSWORD   own database mlflow (MLflow backend store)
#   feast    FEAST_DB_PASSWORD    own database feast (Feast registry, offline table, online store)
#   events   EVENTS_DB_PASSWORD   SELECT on events.minio_events (the landing sensors)
#   minio    MINIO_DB_PASSWORD    SELECT, INSERT on events.minio_events (MinIO's notifications)
#   api      API_DB_PASSWORD      SELECT on every table role feast creates in database feast, and
#                                 tables in its own schema api_scratch only (Feast's entity table
#                                 of a point-in-time query); nothing else
#
# None is a superuser or may create databases or roles; no role may connect to a database it
# does not use (CONNECT and TEMPORARY are revoked from PUBLIC on the platform's databases
# dagster, mlflow, feast and events). The superuser
# `postgres` is used by nobody but this container.
#
# Passwords travel from the environment to psql with \getenv (psql 15+), never on a command line
# or through the shell (the SQL below is quoted: the shell expands nothing in it). Objects that an
# earlier version of the deployment created as the superuser in dagster, mlflow and feast are
# handed over to the database's role.
#
# Everything runs in a subshell so that, when the entrypoint sources this file, neither `set -eu`
# nor a variable leaks into it; a failure still fails the entrypoint (exit status).

ml_platform_roles() (
    set -eu
    for variable in DAGSTER_DB_PASSWORD MLFLOW_DB_PASSWORD FEAST_DB_PASSWORD \
        EVENTS_DB_PASSWORD MINIO_DB_PASSWORD API_DB_PASSWORD; do
        eval "value=\${$variable:-}"
        if [ -z "$value" ]; then
            echo "roles.sh: $variable is not set or empty (docker/.env, section 1)" >&2
            exit 1
        fi
    done
    run_sql() {
        psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" \
            --dbname "$1"
    }

    run_sql postgres <<'SQL'
\getenv dagster_password DAGSTER_DB_PASSWORD
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv feast_password FEAST_DB_PASSWORD
\getenv events_password EVENTS_DB_PASSWORD
\getenv minio_password MINIO_DB_PASSWORD
\getenv api_password API_DB_PASSWORD

-- Roles: created when missing; attributes and password (re)applied on every run.
SELECT format('CREATE ROLE %I', name)
  FROM unnest(ARRAY['dagster', 'mlflow', 'feast', 'events', 'minio', 'api']) AS name
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name)\gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
              'PASSWORD %L', name, secret)
  FROM (VALUES ('dagster', :'dagster_password'), ('mlflow', :'mlflow_password'),
               ('feast', :'feast_password'), ('events', :'events_password'),
               ('minio', :'minio_password'), ('api', :'api_password')) AS role (name, secret)\gexec

-- Databases: three are owned by their component's role; nobody connects anywhere else.
ALTER DATABASE dagster OWNER TO dagster;
ALTER DATABASE mlflow OWNER TO mlflow;
ALTER DATABASE feast OWNER TO feast;
REVOKE ALL ON DATABASE postgres, dagster, mlflow, feast, events FROM PUBLIC;
GRANT CONNECT ON DATABASE events TO events, minio;
GRANT CONNECT ON DATABASE feast TO api;
SQL

    # What an earlier version of the deployment created as the superuser in dagster, mlflow and
    # feast (schemas, tables, views, sequences) now belongs to the role named like the database.
    for database in dagster mlflow feast; do
        run_sql "$database" <<'SQL'
DO $$
DECLARE
    superuser oid := (SELECT oid FROM pg_roles WHERE rolname = current_user);
    item record;
BEGIN
    FOR item IN
        SELECT nspname FROM pg_namespace
         WHERE nspowner = superuser
           AND nspname NOT LIKE 'pg\_%' AND nspname NOT IN ('public', 'information_schema')
    LOOP
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', item.nspname, current_database());
    END LOOP;
    FOR item IN
        SELECT c.oid::regclass AS name,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                              WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relowner = superuser AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
           -- the sequence of a serial or identity column follows its table
           AND NOT (c.relkind = 'S' AND EXISTS (
                   SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', item.kind, item.name, current_database());
    END LOOP;
END
$$;
SQL
    done

    run_sql events <<'SQL'
-- MinIO's PostgreSQL target (`access` format): a start-up probe `SELECT 1 FROM minio_events`,
-- then one INSERT per event (the id comes from the table's sequence). The platform reads.
GRANT USAGE ON SCHEMA public TO events, minio;
GRANT SELECT, INSERT ON public.minio_events TO minio;
SELECT format('GRANT USAGE ON SEQUENCE %s TO minio',
              pg_get_serial_sequence('public.minio_events', 'id'))\gexec
GRANT SELECT ON public.minio_events TO events;
SQL

    run_sql feast <<'SQL'
SET client_min_messages TO warning;  -- no NOTICE for an existing api_scratch
-- The API reads what role feast creates, now and later: the SQL registry (schema public), the
-- offline table and the online tables (in schemas feast creates when it first writes them).
GRANT USAGE ON SCHEMA public TO api;
ALTER DEFAULT PRIVILEGES FOR ROLE feast GRANT USAGE ON SCHEMAS TO api;
ALTER DEFAULT PRIVILEGES FOR ROLE feast GRANT SELECT ON TABLES TO api;
SELECT format('GRANT USAGE ON SCHEMA %I TO api', nspname) FROM pg_namespace
 WHERE nspowner = 'feast'::regrole\gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO api', nspname) FROM pg_namespace
 WHERE nspowner = 'feast'::regrole OR nspname = 'public'\gexec
-- The one place the API may create tables: Feast's offline store writes the entity rows of a
-- point-in-time query to a table in the first schema of its search path (compose sets the API's
-- offline schema to api_scratch) and drops it after the query.
CREATE SCHEMA IF NOT EXISTS api_scratch AUTHORIZATION api;
SQL
)

ml_platform_roles
