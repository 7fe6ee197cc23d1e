"""Static checks of the Docker deployment: docker/compose.yaml, docker/Dockerfile, .env.example.

No Docker engine is needed: Debian's ``docker-compose`` 1.29 (``apt-get install docker-compose``)
validates and renders the compose file offline. The tests prove that the deployment starts only
with every credential supplied, binds every published port to 127.0.0.1, runs the platform image
as a non-root user and carries no default secrets.

docker-compose 1.29 quirks handled here:
- it reads ``.env`` from the project directory (the compose file's folder, i.e. ``docker/.env``)
  unless ``--env-file`` is given, so every call passes ``--env-file`` with an empty temporary file
  (``--env-file /dev/null`` is rejected: "/dev/null is not a file.");
- variables from the process environment take precedence over the env file, so the subprocess
  gets a minimal environment (PATH, HOME, LANG) plus exactly the variables under test;
- a failed ``${VAR:?message}`` guard prints the raw environment mapping of the service (which may
  name other variables) followed by ``in service "<name>": <message>``; the message is the part
  after the last ``": "``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
WORKSPACE = DOCKER_DIR / "workspace.docker.yaml"
POLICY = DOCKER_DIR / "minio" / "platform-policy.json"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

CREDENTIALS = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "PLATFORM_S3_ACCESS_KEY",
    "PLATFORM_S3_SECRET_KEY",
    "POSTGRES_PASSWORD",
)
# Placeholder values only; long enough for MinIO's minimum lengths.
PLACEHOLDERS = {name: f"test-{name.lower().replace('_', '-')}" for name in CREDENTIALS}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|ROOT_USER")
PLATFORM_SERVICES = {"code-location", "webserver", "daemon", "mlflow"}
ROOT_USERS = {"root", "0", "root:root", "0:0", "root:0", "0:root"}

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose (Debian package `docker-compose`, v1.29) is not on PATH; CI installs it",
)


def _compose(
    tmp_path: Path, *args: str, env: dict[str, str], env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on docker/compose.yaml from the repository root, isolated from any
    docker/.env and from the caller's environment."""
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    assert DOCKER_COMPOSE is not None
    return subprocess.run(
        [DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _compose_text() -> str:
    """compose.yaml without comment lines (comments may show ${VAR:?...} as an example)."""
    lines = COMPOSE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _guard_message(stderr: str) -> str:
    """The message of the failed ${VAR:?message} guard (see the module docstring)."""
    lines = stderr.strip().splitlines()
    return lines[-1].rsplit('": ', 1)[-1] if lines else ""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`docker-compose config` output with every credential set to a placeholder."""
    if DOCKER_COMPOSE is None:
        pytest.skip("docker-compose (Debian package `docker-compose`, v1.29) is not on PATH")
    tmp_path = tmp_path_factory.mktemp("compose")
    result = _compose(tmp_path, "config", env=PLACEHOLDERS)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# ------------------------------------------------------------------------------ credentials


@needs_compose
def test_config_is_valid_with_all_credentials(tmp_path: Path) -> None:
    result = _compose(tmp_path, "config", "-q", env=PLACEHOLDERS)
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize("missing", CREDENTIALS)
def test_config_refuses_a_missing_credential(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in PLACEHOLDERS.items() if k != missing}
    result = _compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0, f"compose accepted a config without {missing}"
    assert "Missing mandatory value" in result.stderr, result.stderr
    assert missing in _guard_message(result.stderr), result.stderr


@needs_compose
@pytest.mark.parametrize("empty", CREDENTIALS)
def test_config_refuses_an_empty_credential(tmp_path: Path, empty: str) -> None:
    result = _compose(tmp_path, "config", "-q", env={**PLACEHOLDERS, empty: ""})
    assert result.returncode != 0, f"compose accepted an empty {empty}"
    assert empty in _guard_message(result.stderr), result.stderr


@needs_compose
def test_unedited_env_example_is_refused_and_filled_copy_is_accepted(tmp_path: Path) -> None:
    """The documented workflow: cp .env.example docker/.env, fill in, --env-file docker/.env."""
    refused = _compose(tmp_path, "config", "-q", env={}, env_file=ENV_EXAMPLE)
    assert refused.returncode != 0, "an unedited copy of .env.example must not start anything"
    assert "Missing mandatory value" in refused.stderr, refused.stderr

    filled = tmp_path / "filled.env"
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={PLACEHOLDERS[name]}" if name in PLACEHOLDERS else line)
    filled.write_text("\n".join(lines) + "\n")
    accepted = _compose(tmp_path, "config", "-q", env={}, env_file=filled)
    assert accepted.returncode == 0, accepted.stderr


def test_no_default_for_any_secret_in_compose() -> None:
    """Every secret is referenced as ${VAR:?...}: never ${VAR:-x}, ${VAR-x}, ${VAR} or $VAR."""
    text = _compose_text()
    braced = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text)
    assert braced, "compose.yaml references no variables at all"
    for name, modifier in braced:
        if name in CREDENTIALS or SECRET_NAME.search(name):
            assert modifier.startswith(":?"), f"${{{name}{modifier}}} must be ${{{name}:?...}}"
    bare = re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", text)
    assert not [n for n in bare if SECRET_NAME.search(n)], bare
    assert {name for name, _ in braced} >= set(CREDENTIALS)


def test_secret_values_come_only_from_the_environment(rendered: dict) -> None:
    """With placeholder credentials, every secret-looking variable in the rendered config holds a
    placeholder: nothing is hard-coded."""
    seen = set()
    for name, service in rendered["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment should render as a mapping"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert value in PLACEHOLDERS.values(), f"{name}: {key} is not from the env file"
                seen.add(value)
    assert seen == set(PLACEHOLDERS.values())


#: Every ${VAR} of the Feast profiles in feature_repo/profiles/.
FEAST_PROFILE_VARIABLES = sorted(
    {
        name
        for profile in (ROOT / "feature_repo" / "profiles").glob("*.yaml")
        for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", profile.read_text())
        if name != "VAR"
    }
)


def test_env_example_documents_every_variable() -> None:
    text = ENV_EXAMPLE.read_text()
    active = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line and not line.startswith("#") and "=" in line
    )
    for name in CREDENTIALS:
        assert active.get(name) == "", f"{name} must be listed in .env.example with no value"
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", _compose_text()))
    project = {
        "ML_PLATFORM_STORE_URL", "ML_PLATFORM_CONTRACT", "ML_PLATFORM_LABELS_CONTRACT",
        "ML_PLATFORM_SENSOR_INTERVAL_S", "ML_PLATFORM_MAX_REQUESTS_PER_TICK",
        "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
        "DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER",
        "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB", "ML_PLATFORM_FEAST_REPO", "FEAST_FS_YAML_FILE_PATH",
        *FEAST_PROFILE_VARIABLES,
    }  # fmt: skip
    assert not (referenced | project) - documented, (referenced | project) - documented


# ------------------------------------------------------------------------------ exposure


def _host_ip(port: object) -> str:
    if isinstance(port, dict):  # long syntax
        return str(port.get("host_ip", ""))
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else ""  # "ip:published:target[/proto]"


def test_every_published_port_binds_to_loopback(rendered: dict) -> None:
    published = []
    for name, service in rendered["services"].items():
        assert service.get("network_mode") != "host", f"{name} bypasses port bindings"
        for port in service.get("ports") or []:
            assert _host_ip(port) == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
            published.append(str(port))
    for expected in ("9000", "9001", "5432", "3000"):
        assert any(f"127.0.0.1:{expected}:" in p for p in published), (expected, published)


# ------------------------------------------------------------------------------ image / user


def _final_stage(dockerfile: str) -> list[str]:
    lines = [ln.strip() for ln in dockerfile.splitlines() if ln.strip() and not ln.startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    assert starts, "Dockerfile has no FROM"
    return lines[starts[-1] :]


def test_platform_image_runs_as_non_root(rendered: dict) -> None:
    users = [
        ln.split(None, 1)[1].strip()
        for ln in _final_stage(DOCKERFILE.read_text())
        if ln.upper().startswith("USER ")
    ]
    assert users, "the runtime stage of docker/Dockerfile sets no USER"
    assert users[-1] not in ROOT_USERS, f"runtime stage runs as {users[-1]}"

    uses_image = {
        name
        for name, service in rendered["services"].items()
        if str((service.get("build") or {}).get("dockerfile", "")).endswith("docker/Dockerfile")
    }
    assert uses_image == PLATFORM_SERVICES
    images = {rendered["services"][name].get("image") for name in uses_image}
    assert len(images) == 1, f"one image for the Dagster services, got {images}"
    for name, service in rendered["services"].items():
        if service.get("image") in images:
            assert str(service.get("user", "")) not in ROOT_USERS, f"{name} overrides USER to root"


def test_third_party_images_are_pinned(rendered: dict) -> None:
    for name, service in rendered["services"].items():
        if name in PLATFORM_SERVICES:
            continue
        image = service["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image} is not pinned to a tag"
    assert "python:3.11-slim-bookworm" in DOCKERFILE.read_text()


def test_dockerfile_installs_instance_config_and_workspace() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ENV .*DAGSTER_HOME=/opt/dagster/home", text, flags=re.MULTILINE | re.DOTALL)
    assert re.search(r"^COPY .*\bdagster\.yaml\s+\"?\$DAGSTER_HOME/dagster\.yaml", text, re.M)
    assert re.search(
        r"^COPY .*docker/workspace\.docker\.yaml\s+\"?\$DAGSTER_HOME/workspace\.yaml", text, re.M
    )
    assert "--no-cache-dir" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text


# ------------------------------------------------------------------------------ wiring


def test_workspace_points_at_the_code_location_service(rendered: dict) -> None:
    entries = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    assert len(entries) == 1
    grpc = entries[0]["grpc_server"]
    service = rendered["services"][grpc["host"]]
    command = [str(c) for c in service["command"]]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(grpc["port"])
    assert command[command.index("--location-name") + 1] == grpc["location_name"]


def test_start_order_is_gated_by_health_checks(rendered: dict) -> None:
    services = rendered["services"]
    for name in ("minio", "postgres", *PLATFORM_SERVICES):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    code_deps = services["code-location"]["depends_on"]
    assert code_deps["postgres"]["condition"] == "service_healthy"
    assert code_deps["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("webserver", "daemon"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["code-location"]["condition"] == "service_healthy"


def test_platform_env_uses_the_least_privilege_user(rendered: dict) -> None:
    for name in PLATFORM_SERVICES:
        env = rendered["services"][name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == PLACEHOLDERS["PLATFORM_S3_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == PLACEHOLDERS["PLATFORM_S3_SECRET_KEY"], name
        assert env["ML_PLATFORM_STORE_URL"] == "s3://ml-platform"
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert env["DAGSTER_PG_HOST"] == "postgres"
        assert not {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} & set(env), name


def test_platform_policy_is_least_privilege() -> None:
    import json

    policy = json.loads(POLICY.read_text())
    # Object read/write, listing, and cleaning up the multipart uploads boto3 makes for large files.
    allowed = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
               "s3:GetBucketLocation", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
               "s3:ListBucketMultipartUploads"}  # fmt: skip
    buckets = {"ml-platform", "mlflow-artifacts"}
    actions, resources = set(), set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions |= set(statement["Action"])
        resources |= set(statement["Resource"])
    assert actions == allowed
    assert not any("*" in a for a in actions)
    for resource in resources:
        bucket = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
        assert bucket in buckets, resource


def test_dockerignore_keeps_secrets_and_state_out_of_the_build_context() -> None:
    patterns = {
        ln.strip().rstrip("/")
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for required in (".venv", ".lake", ".dagster_home", ".git", "benchmarks/data", "*.log",
                     ".env", "docker/.env"):  # fmt: skip
        assert required in patterns, required
