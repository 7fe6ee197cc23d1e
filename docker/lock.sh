#!/bin/sh
# Regenerates the lock files the images install from (run from anywhere, with uv on PATH):
#
#   docker/requirements.lock         code-location image: the project's runtime dependencies
#                                    (pyproject.toml [project.dependencies], no dev extra) plus
#                                    setuptools/wheel to build the project itself
#   docker/requirements-dagster.lock dagster image (webserver, daemon): dagster, dagster-webserver,
#                                    dagster-postgres, dagster-aws, at the versions of the lock above
#   docker/requirements-k8s.lock     code-location-k8s image: requirements.lock + dagster-k8s
#
# Versions are those of uv.lock (its export requirements-dev.lock serves as constraints), the lock
# `make install` installs, so the images run exactly what `make test` ran; packages only the dev
# extra brings (pytest, moto, ruff, schemathesis, ...) are not in the closure of the runtime
# dependencies and stay out. Universal resolution (markers instead of one platform) with the hash of every wheel:
# the Dockerfile installs with `pip install --require-hashes --no-deps`, so a build installs these
# exact files or fails. `make lock` runs this after re-resolving uv.lock.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# dagster-k8s follows the dagster-* library line (0.29.x for dagster 1.13.x): keep it equal to
# the dagster-aws / dagster-postgres version of the lock.
DAGSTER_LIBS_VERSION=$(sed -n 's/^dagster-aws==\([^ ]*\).*/\1/p' "$ROOT/requirements-dev.lock")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Inputs live in the work folder under fixed names, so the "# via" annotations are reproducible.
cp "$ROOT/pyproject.toml" "$work/pyproject.toml"
cp "$ROOT/requirements-dev.lock" "$work/dev.txt"
printf 'setuptools>=68\nwheel\n' >"$work/build.in"
printf 'dagster\ndagster-webserver\ndagster-postgres\ndagster-aws\n' >"$work/dagster.in"
printf 'dagster-k8s==%s\n' "$DAGSTER_LIBS_VERSION" >"$work/k8s.in"

compile() {
    uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command "docker/lock.sh" "$@"
}

cd "$work"
compile pyproject.toml build.in -c dev.txt -o requirements.lock
compile dagster.in -c requirements.lock -o requirements-dagster.lock
compile pyproject.toml build.in k8s.in -c dev.txt -o requirements-k8s.lock
cp requirements.lock requirements-dagster.lock requirements-k8s.lock "$ROOT/docker/"
echo "wrote docker/requirements.lock, docker/requirements-dagster.lock, docker/requirements-k8s.lock"
