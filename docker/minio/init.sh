#!/bin/sh
# One-shot MinIO bootstrap, run by the `minio-init` service (image minio/mc) after `minio` is
# healthy. Idempotent: running it again (every `docker compose up`) changes nothing that exists,
# except that it re-applies the policy file and the platform user's secret from the env file.
#
#   buckets  ml-platform       landing/, lake/, results/ zones are prefixes inside it
#            mlflow-artifacts  MLflow artifact store (the mlflow service proxies it)
#   user     $PLATFORM_S3_ACCESS_KEY with policy `ml-platform-rw` (platform-policy.json):
#            only Get/Put/DeleteObject, ListBucket, GetBucketLocation on those two buckets.
#            The root credentials never leave the minio and minio-init containers.
#   events   object PUTs under ml-platform/landing/ are published to PostgreSQL (table
#            minio_events of database events; target PRIMARY, configured by the
#            MINIO_NOTIFY_POSTGRES_*_PRIMARY variables of the minio service).
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${PLATFORM_S3_ACCESS_KEY:?PLATFORM_S3_ACCESS_KEY is not set}"
: "${PLATFORM_S3_SECRET_KEY:?PLATFORM_S3_SECRET_KEY is not set}"

ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"
POLICY_NAME=ml-platform-rw
POLICY_FILE=/etc/ml-platform/minio/platform-policy.json
BUCKETS="ml-platform mlflow-artifacts"

if [ "$PLATFORM_S3_ACCESS_KEY" = "$MINIO_ROOT_USER" ]; then
    echo "PLATFORM_S3_ACCESS_KEY must differ from MINIO_ROOT_USER (the platform must not run as root)" >&2
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

# `policy create` replaces an existing policy of the same name with the file's content.
mc admin policy create local "$POLICY_NAME" "$POLICY_FILE"
# `user add` creates the user or updates its secret key.
mc admin user add local "$PLATFORM_S3_ACCESS_KEY" "$PLATFORM_S3_SECRET_KEY"
# `policy attach` fails when the policy is already attached: accept that case only.
if ! mc admin policy attach local "$POLICY_NAME" --user "$PLATFORM_S3_ACCESS_KEY"; then
    mc admin user info local "$PLATFORM_S3_ACCESS_KEY" | grep -q "$POLICY_NAME" || exit 1
    echo "policy $POLICY_NAME already attached to $PLATFORM_S3_ACCESS_KEY"
fi

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

echo "MinIO ready: buckets [$BUCKETS], user $PLATFORM_S3_ACCESS_KEY with policy $POLICY_NAME," \
    "put events under landing/ -> $EVENT_ARN"
