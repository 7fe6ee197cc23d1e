#!/bin/sh
# One-shot MinIO bootstrap, run by the `minio-init` service (image minio/mc) after `minio` is
# healthy. Idempotent: running it again (every `docker compose up`) changes nothing that exists,
# except that it re-applies the policy files and the users' secrets from the env file.
#
#   buckets  ml-platform       landing/, lake/, results/ zones are prefixes inside it
#            mlflow-artifacts  MLflow artifact store (the mlflow service proxies it)
#   users    one per service, each with its own policy (the files next to this script):
#            $PLATFORM_S3_ACCESS_KEY  ml-platform-rw         platform-policy.json: read-write
#                                     objects of ml-platform (code location, webserver, daemon)
#            $MLFLOW_S3_ACCESS_KEY    mlflow-artifacts-rw    mlflow-policy.json: read-write
#                                     objects of mlflow-artifacts (the MLflow server)
#            $API_S3_ACCESS_KEY       ml-platform-api-read   api-policy.json: GetObject and
#                                     ListBucket on mlflow-artifacts and ml-platform/lake/gold/
#            No bucket creation or deletion, no admin action. The root credentials never leave
#            the minio and minio-init containers.
#   events   object PUTs under ml-platform/landing/ are published to PostgreSQL (table
#            minio_events of database events; target PRIMARY, configured by the
#            MINIO_NOTIFY_POSTGRES_*_PRIMARY variables of the minio service).
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${PLATFORM_S3_ACCESS_KEY:?PLATFORM_S3_ACCESS_KEY is not set}"
: "${PLATFORM_S3_SECRET_KEY:?PLATFORM_S3_SECRET_KEY is not set}"
: "${MLFLOW_S3_ACCESS_KEY:?MLFLOW_S3_ACCESS_KEY is not set}"
: "${MLFLOW_S3_SECRET_KEY:?MLFLOW_S3_SECRET_KEY is not set}"
: "${API_S3_ACCESS_KEY:?API_S3_ACCESS_KEY is not set}"
: "${API_S3_SECRET_KEY:?API_S3_SECRET_KEY is not set}"

ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"
# The policy files sit next to this script (/etc/ml-platform/minio/ in the container).
POLICY_DIR=$(dirname "$0")
BUCKETS="ml-platform mlflow-artifacts"

# No service may run as root, and no two services may share a user.
for variable in PLATFORM_S3_ACCESS_KEY MLFLOW_S3_ACCESS_KEY API_S3_ACCESS_KEY; do
    eval "key=\$$variable"
    if [ "$key" = "$MINIO_ROOT_USER" ]; then
        echo "$variable must differ from MINIO_ROOT_USER (no service runs as root)" >&2
        exit 1
    fi
done
if [ "$PLATFORM_S3_ACCESS_KEY" = "$MLFLOW_S3_ACCESS_KEY" ] \
    || [ "$PLATFORM_S3_ACCESS_KEY" = "$API_S3_ACCESS_KEY" ] \
    || [ "$MLFLOW_S3_ACCESS_KEY" = "$API_S3_ACCESS_KEY" ]; then
    echo "PLATFORM_S3_ACCESS_KEY, MLFLOW_S3_ACCESS_KEY and API_S3_ACCESS_KEY must all differ" >&2
    exit 1
fi

# The health check already gates this service; retry a little anyway (e.g. a manual run).
tries=0
until mc alias set local "$ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "MinIO at $ENDPOINT did not accept the root credentials" >&2
        exit 1
    fi
    sleep 2
done

for bucket in $BUCKETS; do
    mc mb --ignore-existing "local/$bucket"
done

# service_user POLICY_NAME POLICY_FILE ACCESS_KEY SECRET_KEY
service_user() {
    # `policy create` replaces an existing policy of the same name with the file's content.
    mc admin policy create local "$1" "$POLICY_DIR/$2"
    # `user add` creates the user or updates its secret key.
    mc admin user add local "$3" "$4"
    # `policy attach` fails when the policy is already attached: accept that case only.
    if ! mc admin policy attach local "$1" --user "$3"; then
        mc admin user info local "$3" | grep -q "$1" || exit 1
        echo "policy $1 already attached to $3"
    fi
}

service_user ml-platform-rw platform-policy.json "$PLATFORM_S3_ACCESS_KEY" "$PLATFORM_S3_SECRET_KEY"
service_user mlflow-artifacts-rw mlflow-policy.json "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
service_user ml-platform-api-read api-policy.json "$API_S3_ACCESS_KEY" "$API_S3_SECRET_KEY"

# Bucket notifications for the event-driven landing sensor: every object PUT under landing/ is
# published to the PostgreSQL target PRIMARY. `--ignore-existing` makes a re-run a no-op; an
# "already exists" error is accepted as well. `event ls` then shows (and checks) the rule.
EVENT_ARN=arn:minio:sqs::PRIMARY:postgresql
if ! out=$(mc event add local/ml-platform arn:minio:sqs::PRIMARY:postgresql --event put --prefix landing/ --ignore-existing 2>&1); then
    case "$out" in
        *"already exists"*) echo "bucket notification $EVENT_ARN already configured" ;;
        *) echo "$out" >&2; exit 1 ;;
    esac
fi
mc event ls local/ml-platform "$EVENT_ARN"

echo "MinIO ready: buckets [$BUCKETS], users platform ($PLATFORM_S3_ACCESS_KEY, ml-platform-rw)," \
    "mlflow ($MLFLOW_S3_ACCESS_KEY, mlflow-artifacts-rw), api ($API_S3_ACCESS_KEY," \
    "ml-platform-api-read), put events under landing/ -> $EVENT_ARN"
