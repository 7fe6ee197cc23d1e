#!/bin/sh
# One-shot MinIO bootstrap, run by the `minio-init` service (image minio/mc) after `minio` is
# healthy. Idempotent: running it again (every `docker compose up`) changes nothing that exists,
# except that it re-applies the policy file and the platform user's secret from the env file.
#
#   buckets  ml-platform       landing/, lake/, results/ zones are prefixes inside it
#            mlflow-artifacts  MLflow artifact store (used once the MLflow service is added)
#   user     $PLATFORM_S3_ACCESS_KEY with policy `ml-platform-rw` (platform-policy.json):
#            only Get/Put/DeleteObject, ListBucket, GetBucketLocation on those two buckets.
#            The root credentials never leave the minio and minio-init containers.
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

echo "MinIO ready: buckets [$BUCKETS], user $PLATFORM_S3_ACCESS_KEY with policy $POLICY_NAME"
