"""Checks of the Docker deployment (docker/) without a Docker engine: compose.yaml, Dockerfile,
the lock files, the MinIO/PostgreSQL bootstrap, the Kubernetes Helm values and .env.example.

Debian's ``docker-compose`` 1.29 (``apt-get install docker-compose``) validates and renders the
compose file offline. The tests prove that the deployment starts only with every credential
supplied, binds every published port to 127.0.0.1, runs the platform images as a non-root user,
gates start-up on health checks and on the credential check, carries no default secrets, and
gives each service only its own credentials (one MinIO user and one PostgreSQL role per service,
with the policies and grants claimed in docker/README.md). ``docker/postgres/init.sql`` and
``roles.sh`` are run against a throwaway PostgreSQL with password authentication; what each role
can and cannot do is tried there, every connection string compose renders authenticates as its
role, and the statements MinIO's notification target issues are replayed as MinIO's role.
``docker/minio/init.sh`` runs against a recording stand-in for ``mc``.

docker-compose 1.29 quirks handled here:
- it reads ``.env`` from the project directory (the compose file's folder, i.e. ``docker/.env``)
  unless ``--env-file`` is given, so every call passes ``--env-file`` with an empty temporary file
  (``--env-file /dev/null`` is rejected: "/dev/null is not a file.");
- variables from the process environment take precedence over the env file, so the subprocess
  gets a minimal environment (PATH, HOME, LANG) plus exactly the variables under test;
- a failed ``${VAR:?message}`` guard prints the raw environment mapping of the service (which may
  name other variables) followed by ``in service "<name>": <message>``; the message is the part
  after the last ``": "``;
- one call takes 1-2 s (mostly interpreter start-up), so every call the module needs is started
  at once by one fixture and the tests read the results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ml_platform.lib import paths
from ml_platform_tests.helpers import tool_missing
from ml_platform_tests.servers import (
    ROLE_PASSWORDS,
    ROLES_SH,
    require_passwords,
    run_init_sql,
    run_roles_sh,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
WORKSPACE = DOCKER_DIR / "workspace.docker.yaml"
POLICY = DOCKER_DIR / "minio" / "platform-policy.json"
MLFLOW_POLICY = DOCKER_DIR / "minio" / "mlflow-policy.json"
API_POLICY = DOCKER_DIR / "minio" / "api-policy.json"
MINIO_INIT = DOCKER_DIR / "minio" / "init.sh"
INIT_SQL = DOCKER_DIR / "postgres" / "init.sql"
LOCK = DOCKER_DIR / "requirements.lock"
LOCK_DAGSTER = DOCKER_DIR / "requirements-dagster.lock"
LOCK_K8S = DOCKER_DIR / "requirements-k8s.lock"
HELM_VALUES = DOCKER_DIR / "k8s" / "values.yaml"
HELM_README = DOCKER_DIR / "k8s" / "README.md"
DOCKER_README = DOCKER_DIR / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
INSTANCE = DOCKER_DIR / "dagster.yaml"
PYPROJECT = ROOT / "pyproject.toml"

CREDENTIALS = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "PLATFORM_S3_ACCESS_KEY",
    "PLATFORM_S3_SECRET_KEY",
    "MLFLOW_S3_ACCESS_KEY",
    "MLFLOW_S3_SECRET_KEY",
    "API_S3_ACCESS_KEY",
    "API_S3_SECRET_KEY",
    "POSTGRES_PASSWORD",
    *ROLE_PASSWORDS.values(),
)
# Placeholder values only; long enough for MinIO's minimum lengths. None is part of another, so
# finding one in a rendered string identifies the credential.
PLACEHOLDERS = {name: f"test-{name.lower().replace('_', '-')}" for name in CREDENTIALS}
#: What each service may hold, and nothing more (the API key aside).
S3_KEYS = {
    "platform": ("PLATFORM_S3_ACCESS_KEY", "PLATFORM_S3_SECRET_KEY"),
    "mlflow": ("MLFLOW_S3_ACCESS_KEY", "MLFLOW_S3_SECRET_KEY"),
    "api": ("API_S3_ACCESS_KEY", "API_S3_SECRET_KEY"),
}
MINIO_ROOT = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
SERVICE_CREDENTIALS = {
    "credentials-check": set(CREDENTIALS),
    "postgres": {"POSTGRES_PASSWORD", *ROLE_PASSWORDS.values()},
    "minio": {*MINIO_ROOT, "MINIO_DB_PASSWORD"},
    "minio-init": {*MINIO_ROOT, *S3_KEYS["platform"], *S3_KEYS["mlflow"], *S3_KEYS["api"]},
    "mlflow": {*S3_KEYS["mlflow"], "MLFLOW_DB_PASSWORD"},
    "code-location": {*S3_KEYS["platform"], "DAGSTER_DB_PASSWORD", "FEAST_DB_PASSWORD",
                      "EVENTS_DB_PASSWORD"},
    "webserver": {*S3_KEYS["platform"], "DAGSTER_DB_PASSWORD"},
    "daemon": {*S3_KEYS["platform"], "DAGSTER_DB_PASSWORD"},
    "api": {*S3_KEYS["api"], "API_DB_PASSWORD"},
}  # fmt: skip
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|API_KEY|TOKEN|ROOT_USER")
#: Secrets that may be absent: ${VAR:-} (empty default), never a non-empty default.
OPTIONAL_SECRETS = {"ML_PLATFORM_API_KEY"}
API_KEY = "test-api-key"
ROOT_USERS = {"root", "0", "root:root", "0:0", "root:0", "0:root"}

#: Service -> (image, Dockerfile target).
FULL_IMAGE, SLIM_IMAGE = (
    ("ml-platform:local", "code-location"),
    ("ml-platform-dagster:local", "dagster"),
)
IMAGES = {"code-location": FULL_IMAGE, "api": FULL_IMAGE, "mlflow": FULL_IMAGE,
          "credentials-check": FULL_IMAGE, "webserver": SLIM_IMAGE,
          "daemon": SLIM_IMAGE}  # fmt: skip
DAGSTER_SERVICES = ("code-location", "webserver", "daemon")
PROJECT_SERVICES = ("code-location", "api")  # import ml_platform (mlflow runs `mlflow server`)
ONE_SHOT = {"minio-init", "credentials-check"}
EVENTS_TABLE = "minio_events"
EVENT_ARN = "arn:minio:sqs::PRIMARY:postgresql"

DOCKER_COMPOSE = shutil.which("docker-compose")
# Under CI a missing docker-compose is not skipped: the tests run and fail (tool_missing).
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None and not os.environ.get("CI"),
    reason="docker-compose (Debian package `docker-compose`, v1.29) is not on PATH; CI installs it",
)


# ------------------------------------------------------------------------------ compose runs


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    env: dict[str, str]
    env_file: str = ""  # "" an empty file, "example" .env.example, "filled" a filled-in copy,
    # "generated" the one docker/README.md's command writes


#: The credential whose empty value is tried for real (one call each costs 1-2 s; that ${VAR:?}
#: refuses an empty value is compose's semantics, and every credential uses it: checked below).
EMPTY_SAMPLE = "POSTGRES_PASSWORD"


def _scenarios() -> dict[str, Run]:
    runs = {
        # Placeholders from the environment, plus the optional API key to see it passed through.
        "rendered": Run(("config",), {**PLACEHOLDERS, "ML_PLATFORM_API_KEY": API_KEY}),
        "example": Run(("config", "-q"), {}, "example"),
        "example-filled": Run(("config", "-q"), {}, "filled"),
        "generated": Run(("config", "-q"), {}, "generated"),
        f"empty {EMPTY_SAMPLE}": Run(("config", "-q"), {**PLACEHOLDERS, EMPTY_SAMPLE: ""}),
    }
    for name in CREDENTIALS:
        runs[f"missing {name}"] = Run(
            ("config", "-q"), {k: v for k, v in PLACEHOLDERS.items() if k != name}
        )
    return runs


def _filled_env_example(path: Path) -> Path:
    """The documented workflow: cp .env.example docker/.env and fill in section 1."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={PLACEHOLDERS[name]}" if name in PLACEHOLDERS else line)
    path.write_text("\n".join(lines) + "\n")
    return path


#: The documented way to write docker/.env (docker/README.md, "Start").
GENERATE_SUFFIX = " > docker/.env"


def _generate_command() -> str:
    [command] = [ln for ln in DOCKER_README.read_text().splitlines() if ln.startswith("awk ")]
    assert command.endswith(GENERATE_SUFFIX), command
    return command.removesuffix(GENERATE_SUFFIX)


def _generated_env_file(path: Path) -> Path:
    """docker/README.md's command, run from the repository root with its output to ``path``
    (never to the real docker/.env)."""
    result = subprocess.run(["sh", "-c", _generate_command()], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="module")
def compose_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess]:
    """Every docker-compose call of this module, run concurrently, isolated from any docker/.env
    and from the caller's environment."""
    if DOCKER_COMPOSE is None:
        tool_missing("docker-compose (Debian package `docker-compose`, v1.29) is not on PATH")
    tmp = tmp_path_factory.mktemp("compose")
    env_files = {
        "": tmp / "empty.env",
        "example": ENV_EXAMPLE,
        "filled": _filled_env_example(tmp / "filled.env"),
        "generated": _generated_env_file(tmp / "generated.env"),
    }
    env_files[""].write_text("")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "LANG": "C.UTF-8"}

    def run(scenario: Run) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DOCKER_COMPOSE, "--env-file", str(env_files[scenario.env_file]), "-f", str(COMPOSE),
             *scenario.args],
            cwd=ROOT, env={**base, **scenario.env}, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip

    scenarios = _scenarios()
    with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        return dict(zip(scenarios, pool.map(run, scenarios.values()), strict=True))


@pytest.fixture(scope="module")
def rendered(compose_runs: dict) -> dict:
    """`docker-compose config` output with every credential set to a placeholder."""
    result = compose_runs["rendered"]
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _compose_text() -> str:
    """compose.yaml without comment lines (comments may show ${VAR:?...} as an example)."""
    lines = COMPOSE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _guard_message(stderr: str) -> str:
    """The message of the failed ${VAR:?message} guard (see the module docstring)."""
    lines = stderr.strip().splitlines()
    return lines[-1].rsplit('": ', 1)[-1] if lines else ""


# ------------------------------------------------------------------------------ credentials


@needs_compose
def test_config_is_valid_with_a_filled_env_file(compose_runs: dict) -> None:
    """The documented workflow: cp .env.example docker/.env, fill in section 1, config -q."""
    result = compose_runs["example-filled"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", "config -q prints nothing on success"


@needs_compose
def test_the_documented_env_file_is_accepted_and_passes_the_credential_check(
    compose_runs: dict, tmp_path: Path
) -> None:
    """docker/README.md's one-liner (also in README.md and .env.example) gives every credential
    its own random value: compose accepts the file and the credentials-check command passes."""
    command = _generate_command()
    assert command + GENERATE_SUFFIX in (ROOT / "README.md").read_text()
    assert command + GENERATE_SUFFIX in ENV_EXAMPLE.read_text()
    result = compose_runs["generated"]
    assert result.returncode == 0, result.stderr
    values = dict(
        line.split("=", 1)
        for line in _generated_env_file(tmp_path / "env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(values) == set(CREDENTIALS)
    assert all(re.fullmatch(r"[0-9a-f]{48}", v) for v in values.values())
    assert len(set(values.values())) == len(values), "each credential gets its own value"
    check = subprocess.run(
        [sys.executable, "-m", "ml_platform", "check-credentials", "--distinct"], cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), **values}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert f"{len(CREDENTIALS)} credentials checked" in check.stdout


@needs_compose
@pytest.mark.parametrize("missing", CREDENTIALS)
def test_config_refuses_a_missing_credential(compose_runs: dict, missing: str) -> None:
    result = compose_runs[f"missing {missing}"]
    assert result.returncode != 0, f"compose accepted a config without {missing}"
    assert "Missing mandatory value" in result.stderr, result.stderr
    assert missing in _guard_message(result.stderr), result.stderr


@needs_compose
def test_config_refuses_an_empty_credential(compose_runs: dict) -> None:
    result = compose_runs[f"empty {EMPTY_SAMPLE}"]
    assert result.returncode != 0, f"compose accepted an empty {EMPTY_SAMPLE}"
    assert EMPTY_SAMPLE in _guard_message(result.stderr), result.stderr


@needs_compose
def test_unedited_env_example_is_refused(compose_runs: dict) -> None:
    refused = compose_runs["example"]
    assert refused.returncode != 0, "an unedited copy of .env.example must not start anything"
    assert "Missing mandatory value" in refused.stderr, refused.stderr


def test_no_default_for_any_secret_in_compose() -> None:
    """Every secret is ${VAR:?...} (refused when unset or empty): never ${VAR?x}, ${VAR:-x},
    ${VAR-x}, ${VAR} or $VAR. The one optional secret (the API key) defaults to empty only."""
    text = _compose_text()
    braced = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text)
    assert braced, "compose.yaml references no variables at all"
    for name, modifier in braced:
        if name in OPTIONAL_SECRETS:
            assert modifier == ":-", f"${{{name}{modifier}}} must be ${{{name}:-}}"
        elif name in CREDENTIALS or SECRET_NAME.search(name):
            assert modifier.startswith(":?"), f"${{{name}{modifier}}} must be ${{{name}:?...}}"
    bare = re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", text)
    assert not [n for n in bare if SECRET_NAME.search(n)], bare
    assert {name for name, _ in braced} >= set(CREDENTIALS) | OPTIONAL_SECRETS


@needs_compose
def test_secret_values_come_only_from_the_environment(rendered: dict) -> None:
    """With placeholder credentials, every secret-looking variable in the rendered config holds a
    placeholder (or the API key passed through): nothing is hard-coded."""
    seen = set()
    for name, service in rendered["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment should render as a mapping"
        for key, value in env.items():
            if key in OPTIONAL_SECRETS:
                assert value == API_KEY, f"{name}: {key} = {value!r} is not passed through"
            elif SECRET_NAME.search(key):
                assert value in PLACEHOLDERS.values(), f"{name}: {key} is not from the env file"
                seen.add(value)
            # Connection strings embed a role's password: the placeholder of that very role.
            for user, password in _connection_credentials(str(value)):
                assert user in ROLE_PASSWORDS, f"{name}: {key} connects as {user}"
                assert password == PLACEHOLDERS[ROLE_PASSWORDS[user]], f"{name}: {key}"
    assert seen == set(PLACEHOLDERS.values())
    assert rendered["services"]["api"]["environment"]["ML_PLATFORM_API_KEY"] == API_KEY


def _connection_credentials(value: str) -> list[tuple[str, str]]:
    """(user, password) of every ``scheme://user:password@`` URL and libpq ``user=... password=...``
    string in ``value``."""
    found = re.findall(r"://([^:/@\s]+):([^@\s]+)@", value)
    libpq = dict(re.findall(r"\b(user|password)=(\S+)", value))
    if libpq:
        found.append((libpq.get("user", ""), libpq.get("password", "")))
    return found


def _service_text(service: dict) -> str:
    """Everything of a rendered service a credential could hide in: environment and command."""
    return json.dumps([service.get("environment") or {}, service.get("command") or []])


@needs_compose
def test_each_service_gets_only_its_own_credentials(rendered: dict) -> None:
    """Per-service least privilege: every credential a service receives (in its environment or
    its command) is in its row of SERVICE_CREDENTIALS and every one of the row is used; in
    particular the API and MLflow never see the PostgreSQL superuser's password, the MinIO root
    user or the platform's read-write keys."""
    placeholders = list(PLACEHOLDERS.values())
    assert not [a for a in placeholders for b in placeholders if a != b and a in b]
    services = rendered["services"]
    assert set(services) == set(SERVICE_CREDENTIALS), set(services) ^ set(SERVICE_CREDENTIALS)
    for name, service in services.items():
        text = _service_text(service)
        holds = {cred for cred, value in PLACEHOLDERS.items() if value in text}
        assert holds == SERVICE_CREDENTIALS[name], (name, holds ^ SERVICE_CREDENTIALS[name])
    for name in ("api", "mlflow"):
        text = _service_text(services[name])
        for forbidden in ("POSTGRES_PASSWORD", "PLATFORM_S3_SECRET_KEY", *MINIO_ROOT):
            assert PLACEHOLDERS[forbidden] not in text, (name, forbidden)
    assert API_KEY in _service_text(services["api"])
    assert API_KEY not in _service_text(services["code-location"])


#: Every ${VAR} of the Feast profiles in feature_repo/profiles/.
FEAST_PROFILE_VARIABLES = sorted(
    {
        name
        for profile in (ROOT / "feature_repo" / "profiles").glob("*.yaml")
        for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", profile.read_text())
        if name != "VAR"
    }
)


def _instance_env_names() -> set[str]:
    """Every {env: NAME} of docker/dagster.yaml."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if set(node) == {"env"}:
                names.add(node["env"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(INSTANCE.read_text()))
    return names


def test_env_example_documents_every_variable() -> None:
    text = ENV_EXAMPLE.read_text()
    active = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line and not line.startswith("#") and "=" in line
    )
    for name in CREDENTIALS:
        assert active.get(name) == "", f"{name} must be listed in .env.example with no value"
    assert set(active) == set(CREDENTIALS), "only the credentials are active lines"
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", _compose_text()))
    project = {
        "ML_PLATFORM_STORE_URL", "ML_PLATFORM_CONTRACT", "ML_PLATFORM_LABELS_CONTRACT",
        "ML_PLATFORM_SENSOR_INTERVAL_S", "ML_PLATFORM_MAX_REQUESTS_PER_TICK",
        "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
        "DAGSTER_HOME", "ML_PLATFORM_FEAST_REPO", "FEAST_FS_YAML_FILE_PATH",
        "ML_PLATFORM_EVENTS_URL", "ML_PLATFORM_EVENTS_TABLE", "ML_PLATFORM_API_KEY",
        "ML_PLATFORM_PROFILE", *_instance_env_names(), *FEAST_PROFILE_VARIABLES,
    }  # fmt: skip
    assert {"DAGSTER_COMPUTE_LOGS_BUCKET", "DAGSTER_PG_PASSWORD"} <= project
    assert not (referenced | project) - documented, (referenced | project) - documented


# ------------------------------------------------------------------------------ exposure


def _host_ip(port: object) -> str:
    if isinstance(port, dict):  # long syntax
        return str(port.get("host_ip", ""))
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else ""  # "ip:published:target[/proto]"


@needs_compose
def test_every_published_port_binds_to_loopback(rendered: dict) -> None:
    published = []
    for name, service in rendered["services"].items():
        assert service.get("network_mode") != "host", f"{name} bypasses port bindings"
        for port in service.get("ports") or []:
            assert _host_ip(port) == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
            published.append(str(port))
    for expected in ("9000", "9001", "5432", "3000", "5000", "8000"):
        assert any(f"127.0.0.1:{expected}:" in p for p in published), (expected, published)


# ------------------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    name: str
    base: str  # another stage's name or an image reference
    instructions: list[str]


def _dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order), with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        keyword = line.split(" ", 1)[0].upper()
        if keyword == "FROM":
            match = re.fullmatch(r"FROM (?:--platform=\S+ )?(\S+) AS (\S+)", line, flags=re.I)
            assert match, f"every stage is named: {line}"
            stages.append(Stage(match[2], match[1], []))
        elif keyword == "ARG" and not stages:
            name, _, default = line.split(" ", 1)[1].partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append(line)
    return args, stages


def _chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its ancestors, base first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def _user(stages: dict[str, Stage], name: str) -> str:
    users = [
        line.split(" ", 1)[1]
        for stage in _chain(stages, name)
        for line in stage.instructions
        if line.upper().startswith("USER ")
    ]
    return users[-1] if users else "root"


def _copied(stages: dict[str, Stage], name: str) -> list[str]:
    """Every COPY that ends up in the image of stage `name`, following COPY --from stages."""
    copies = []
    for stage in _chain(stages, name):
        for line in stage.instructions:
            if line.upper().startswith("COPY "):
                copies.append(line)
                source = re.search(r"--from=(\S+)", line)
                if source and source[1] in stages:
                    copies += _copied(stages, source[1])
    return copies


TARGETS = {"code-location", "dagster", "code-location-k8s"}


def test_dockerfile_targets_run_as_non_root() -> None:
    _, ordered = _dockerfile()
    stages = {stage.name: stage for stage in ordered}
    assert set(stages) >= TARGETS, set(stages)
    assert ordered[-1].name == "code-location", "the default (last) target is the code location"
    for target in TARGETS:
        assert _user(stages, target) not in ROOT_USERS, f"{target} runs as root"
        assert _user(stages, target) == "dagster:dagster", target


def test_base_image_is_pinned_to_an_exact_release() -> None:
    args, ordered = _dockerfile()
    stage_names = {stage.name for stage in ordered}
    bases = {stage.base for stage in ordered if stage.base not in stage_names}
    assert bases == {"${PYTHON_IMAGE}"}, f"one pinned base image for every stage: {bases}"
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image


def test_slim_dagster_image_has_no_project_code() -> None:
    """webserver/daemon image: the four Dagster packages from their own lock, and of the project
    only the instance storage module its dagster.yaml names (no other source, no feature repo,
    no full lock)."""
    _, ordered = _dockerfile()
    stages = {stage.name: stage for stage in ordered}
    copied = " ".join(_copied(stages, "dagster"))
    sources = set(re.findall(r"\bml_platform/\S*", copied))
    # The two files, and the end of their destination (/opt/dagster/lib/ml_platform/).
    assert sources == {"ml_platform/__init__.py", "ml_platform/instance_storage.py", "ml_platform/"}
    for forbidden in ("pyproject.toml", "feature_repo", "requirements.lock",
                      "requirements-k8s.lock"):  # fmt: skip
        assert forbidden not in copied, f"the dagster target copies {forbidden}"
    assert "requirements-dagster.lock" in copied
    full = " ".join(_copied(stages, "code-location"))
    assert "ml_platform" in full and "feature_repo" in full and "requirements.lock" in full
    assert "requirements-k8s.lock" in " ".join(_copied(stages, "code-location-k8s"))


def test_every_pip_install_is_locked() -> None:
    """Either a lock with --require-hashes --no-deps, or the project itself without deps."""
    _, ordered = _dockerfile()
    installs = [
        part.strip()
        for stage in ordered
        for line in stage.instructions
        if line.upper().startswith("RUN ")
        for part in line[4:].split("&&")
        if re.search(r"\bpip install\b", part)
    ]
    assert len(installs) == 4, installs
    for command in installs:
        lock = re.search(r"-r (\S+)", command)
        if lock:
            assert "--require-hashes" in command and "--no-deps" in command, command
            assert Path(lock[1]).name in {LOCK.name, LOCK_DAGSTER.name, LOCK_K8S.name}, command
        else:
            assert command.endswith(" .") and "--no-deps" in command, command
    assert "--upgrade" not in DOCKERFILE.read_text(), "nothing is upgraded from the network"


def test_dockerfile_installs_instance_config_and_workspace() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ENV .*DAGSTER_HOME=/opt/dagster/home", text, flags=re.MULTILINE | re.DOTALL)
    assert re.search(r"^COPY .*\bdagster\.yaml\s+\"?\$DAGSTER_HOME/dagster\.yaml", text, re.M)
    assert re.search(
        r"^COPY .*docker/workspace\.docker\.yaml\s+\"?\$DAGSTER_HOME/workspace\.yaml", text, re.M
    )
    assert "--no-cache-dir" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text


@needs_compose
def test_services_use_the_intended_image_and_target(rendered: dict) -> None:
    _, ordered = _dockerfile()
    stage_names = {stage.name for stage in ordered}
    built = {}
    for name, service in rendered["services"].items():
        build = service.get("build")
        if build:
            assert Path(build["context"]) == ROOT, name
            assert build["dockerfile"] == "docker/Dockerfile", name
            assert build.get("target") in stage_names, f"{name}: unknown target"
            built[name] = (service["image"], build["target"])
        assert str(service.get("user", "")) not in ROOT_USERS, f"{name} overrides USER to root"
    assert built == IMAGES


@needs_compose
def test_third_party_images_are_pinned(rendered: dict) -> None:
    for name, service in rendered["services"].items():
        if name in IMAGES:
            continue
        image = service["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image} is not pinned to a tag"
        assert re.search(r"\d", tag), f"{name}: {image} has a moving tag"


# ------------------------------------------------------------------------------ locks


def _lock(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, marker) of a uv/pip-compile lock; every entry must carry hashes."""
    entries: dict[str, tuple[str, str]] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    for block in blocks:
        head = block.split("\n", 1)[0]
        if head.startswith("#") or not head.strip():
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?: ; (.+?))? \\", head)
        assert match, f"{path.name}: not an exact pin: {head}"
        assert "--hash=sha256:" in block, f"{path.name}: {match[1]} has no hash"
        entries[canonicalize_name(match[1])] = (match[2], match[3] or "")
    assert entries, path
    return entries


DEV_ONLY = {"pytest", "pytest-timeout", "moto", "ruff", "schemathesis", "hypothesis", "ml-platform"}


def test_locks_pin_and_hash_everything_and_leave_dev_tools_out() -> None:
    for path in (LOCK, LOCK_DAGSTER, LOCK_K8S):
        entries = _lock(path)
        assert not DEV_ONLY & set(entries), f"{path.name}: {DEV_ONLY & set(entries)}"


def test_lock_satisfies_the_project_dependencies() -> None:
    """Every dependency of pyproject.toml is in the lock at a version it accepts (fails when a
    dependency was added or tightened without running docker/lock.sh)."""
    import tomllib

    lock = _lock(LOCK)
    environment = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
                   "platform_system": "Linux"}  # fmt: skip
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for line in [*dependencies, "setuptools>=68", "wheel"]:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is missing from {LOCK.name}: run docker/lock.sh"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), (line, lock[name])


def test_slim_and_k8s_locks_agree_with_the_main_lock() -> None:
    main, slim, k8s = _lock(LOCK), _lock(LOCK_DAGSTER), _lock(LOCK_K8S)
    assert {"dagster", "dagster-webserver", "dagster-postgres", "dagster-aws"} <= set(slim)
    assert not {"mlflow", "feast", "scikit-learn", "duckdb"} & set(slim), "slim lock is not slim"
    # Same versions (markers of a universal resolution may differ between the two inputs).
    assert {n: slim[n][0] for n in slim} == {n: main[n][0] for n in slim}
    assert set(k8s) - set(main) >= {"dagster-k8s", "kubernetes"}
    assert {n: k8s[n][0] for n in main} == {n: main[n][0] for n in main}
    assert k8s["dagster-k8s"][0] == main["dagster-aws"][0], "dagster-* libraries move together"


def test_slim_image_has_every_module_of_the_instance_config() -> None:
    """The webserver and daemon load docker/dagster.yaml: every class it names must be importable from
    the slim lock (e.g. S3ComputeLogManager -> dagster-aws)."""
    instance = yaml.safe_load(INSTANCE.read_text())
    slim = _lock(LOCK_DAGSTER)
    modules = {
        node["module"] for node in instance.values() if isinstance(node, dict) and "module" in node
    }
    if "postgres" in (instance.get("storage") or {}):
        modules.add("dagster_postgres")
    assert modules, "dagster.yaml names no module at all"
    for module in modules:
        if module.startswith("ml_platform."):
            _assert_slim_image_carries(module, slim)
        else:
            assert canonicalize_name(module.split(".", 1)[0]) in slim, module


def _assert_slim_image_carries(module: str, slim: dict) -> None:
    """A project module the instance config names: the slim image copies its file onto its
    PYTHONPATH, and it imports only the standard library and packages of the slim lock."""
    import ast

    source = Path(ROOT, *module.split(".")).with_suffix(".py")
    stage = (
        DOCKERFILE.read_text().split("FROM runtime-base AS dagster", 1)[1].split("\nFROM ", 1)[0]
    )
    copied = re.search(r"^COPY .*\s(\S+)/ml_platform/$", stage, re.M)
    assert copied, "the slim image copies no ml_platform module"
    assert f" {source.relative_to(ROOT)} " in copied[0], (module, copied[0])
    assert f"ENV PYTHONPATH={copied[1]}" in stage, copied[1]
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    outside = {
        name
        for name in imported - sys.stdlib_module_names
        if canonicalize_name(name.replace("_", "-")) not in slim
    }
    assert not outside, f"{module} imports {sorted(outside)}, which the slim image lacks"


# ------------------------------------------------------------------------------ wiring


@needs_compose
def test_workspace_points_at_the_code_location_service(rendered: dict) -> None:
    entries = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    assert len(entries) == 1
    grpc = entries[0]["grpc_server"]
    service = rendered["services"][grpc["host"]]
    command = [str(c) for c in service["command"]]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(grpc["port"])
    assert command[command.index("--location-name") + 1] == grpc["location_name"]


def _condition(services: dict, name: str, dependency: str) -> str:
    return services[name]["depends_on"][dependency]["condition"]


@needs_compose
def test_start_order_is_gated_by_health_checks(rendered: dict) -> None:
    services = rendered["services"]
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
            assert service.get("restart") == "unless-stopped", name
        for dependency, spec in (service.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck"), (name, dependency)
            else:
                assert spec["condition"] == "service_completed_successfully", (name, dependency)
                assert dependency in ONE_SHOT, (name, dependency)
    assert _condition(services, "minio", "postgres") == "service_healthy"
    assert _condition(services, "minio-init", "minio") == "service_healthy"
    for name in ("code-location", "mlflow"):
        assert _condition(services, name, "postgres") == "service_healthy"
        assert _condition(services, name, "minio-init") == "service_completed_successfully"
    for name in ("webserver", "daemon"):
        assert _condition(services, name, "postgres") == "service_healthy"
        assert _condition(services, name, "code-location") == "service_healthy"
    assert _condition(services, "api", "mlflow") == "service_healthy"
    assert _condition(services, "api", "postgres") == "service_healthy"
    for name in ("postgres", "minio"):
        assert _condition(services, name, "credentials-check") == "service_completed_successfully"


def _dependencies(services: dict, name: str) -> set[str]:
    """Every service ``name`` waits for, directly or not."""
    found: set[str] = set()
    todo = list(services[name].get("depends_on") or {})
    while todo:
        dependency = todo.pop()
        if dependency not in found:
            found.add(dependency)
            todo += list(services[dependency].get("depends_on") or {})
    return found


@needs_compose
def test_nothing_starts_before_the_credential_check_passed(rendered: dict) -> None:
    """The one-shot check (python -m ml_platform check-credentials --distinct) gets every
    credential of the env file and no network; every other service waits for it."""
    services = rendered["services"]
    check = services["credentials-check"]
    assert [str(c) for c in check["command"]] == [
        "python", "-m", "ml_platform", "check-credentials", "--distinct"]  # fmt: skip
    assert check.get("network_mode") == "none"
    assert check.get("restart") == "no"
    assert not check.get("ports") and not check.get("depends_on")
    assert set(check["environment"]) == set(CREDENTIALS) | OPTIONAL_SECRETS
    for name in set(services) - {"credentials-check"}:
        assert "credentials-check" in _dependencies(services, name), name


@needs_compose
def test_project_services_run_the_deployed_profile(rendered: dict) -> None:
    """The code location and the API check their own credentials again at start-up (a process
    started without compose, e.g. `docker compose run --no-deps`, or under Kubernetes)."""
    for name in PROJECT_SERVICES:
        assert rendered["services"][name]["environment"]["ML_PLATFORM_PROFILE"] == "deployed"
    deployment = _helm_values()["dagster-user-deployments"]["deployments"][0]
    assert deployment["env"]["ML_PLATFORM_PROFILE"] == "deployed"


@needs_compose
def test_api_service(rendered: dict) -> None:
    api = rendered["services"]["api"]
    assert [str(c) for c in api["command"]] == [
        "uvicorn", "--factory", "ml_platform.serving.app:create_app",
        "--host", "0.0.0.0", "--port", "8000", "--workers", "1",
    ]  # fmt: skip
    assert [str(p) for p in api["ports"]] in (["127.0.0.1:8000:8000/tcp"], ["127.0.0.1:8000:8000"])
    probe = " ".join(api["healthcheck"]["test"])
    assert "urllib" in probe and "http://127.0.0.1:8000/health" in probe, probe
    env = api["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    platform = rendered["services"]["code-location"]["environment"]
    assert not set(FEAST_PROFILE_VARIABLES) - set(env), set(FEAST_PROFILE_VARIABLES) - set(env)
    # The same feature store, read as the read-only role api; point-in-time queries put their
    # entity table in the API's own schema.
    for name in ("FEAST_FS_YAML_FILE_PATH", "ML_PLATFORM_FEAST_PG_HOST", "ML_PLATFORM_FEAST_PG_PORT",
                 "ML_PLATFORM_FEAST_PG_DB", "ML_PLATFORM_FEAST_PG_SSLMODE",
                 "ML_PLATFORM_FEAST_ONLINE_SCHEMA"):  # fmt: skip
        assert env[name] == platform[name], name
    assert env["ML_PLATFORM_FEAST_PG_USER"] == "api"
    assert env["ML_PLATFORM_FEAST_PG_PASSWORD"] == PLACEHOLDERS["API_DB_PASSWORD"]
    assert env["ML_PLATFORM_FEAST_REGISTRY_URL"] == platform[
        "ML_PLATFORM_FEAST_REGISTRY_URL"
    ].replace(
        f"feast:{PLACEHOLDERS['FEAST_DB_PASSWORD']}@", f"api:{PLACEHOLDERS['API_DB_PASSWORD']}@"
    )
    assert env["ML_PLATFORM_FEAST_OFFLINE_SCHEMA"] == "api_scratch"
    assert "api_scratch" in ROLES_SH.read_text()
    # Nothing of Dagster, the events table or the lake: the API serves, it does not run assets.
    assert not [k for k in env if k.startswith(("DAGSTER_", "ML_PLATFORM_EVENTS"))], env


@needs_compose
def test_each_service_uses_its_own_minio_user_and_postgres_role(rendered: dict) -> None:
    users = {**dict.fromkeys(DAGSTER_SERVICES, "platform"), "mlflow": "mlflow", "api": "api"}
    for name, user in users.items():
        env = rendered["services"][name]["environment"]
        access, secret = S3_KEYS[user]
        assert env["AWS_ACCESS_KEY_ID"] == PLACEHOLDERS[access], name
        assert env["AWS_SECRET_ACCESS_KEY"] == PLACEHOLDERS[secret], name
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert not set(MINIO_ROOT) & set(env), name
    for name in DAGSTER_SERVICES:
        env = rendered["services"][name]["environment"]
        assert (env["DAGSTER_PG_HOST"], env["DAGSTER_PG_USER"]) == ("postgres", "dagster"), name
        assert env["DAGSTER_PG_PASSWORD"] == PLACEHOLDERS["DAGSTER_DB_PASSWORD"], name
    platform = rendered["services"]["code-location"]["environment"]
    assert platform["ML_PLATFORM_STORE_URL"] == "s3://ml-platform"
    assert platform["ML_PLATFORM_FEAST_PG_USER"] == "feast"
    mlflow = rendered["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql+psycopg2://mlflow:{PLACEHOLDERS['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow"
    )
    assert "--backend-store-uri" not in mlflow["command"], "no password in the process list"
    # The MLflow server runs no project code: none of the platform's settings.
    assert not [k for k in mlflow["environment"] if k.startswith(("ML_PLATFORM_", "FEAST_",
                                                                  "DAGSTER_"))]  # fmt: skip
    for name in ("webserver", "daemon"):  # never import the project: no project settings
        env = rendered["services"][name]["environment"]
        assert not [k for k in env if k.startswith(("ML_PLATFORM_", "FEAST_", "MLFLOW_"))], name


def _grants(path: Path) -> set[tuple[str, str, str]]:
    """(action, resource, condition as JSON) of every statement of a MinIO policy; Allow only."""
    grants = set()
    for statement in json.loads(path.read_text())["Statement"]:
        assert statement["Effect"] == "Allow", statement
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, statement
        condition = json.dumps(statement.get("Condition"), sort_keys=True)
        for action in statement["Action"]:
            assert "*" not in action, action
            grants |= {(action, resource, condition) for resource in statement["Resource"]}
    return grants


#: Object read/write, listing, and cleaning up the multipart uploads boto3 makes for large files.
READ_WRITE_BUCKET = ("s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads")
READ_WRITE_OBJECTS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                      "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")  # fmt: skip
NO_CONDITION = json.dumps(None)


def _read_write(bucket: str) -> set[tuple[str, str, str]]:
    arn = f"arn:aws:s3:::{bucket}"
    return {(a, arn, NO_CONDITION) for a in READ_WRITE_BUCKET} | {
        (a, f"{arn}/*", NO_CONDITION) for a in READ_WRITE_OBJECTS
    }


def test_platform_policy_is_least_privilege() -> None:
    """The platform (code location, webserver, daemon) reads and writes bucket ml-platform only:
    it reaches models through the MLflow server's artifact proxy, never the artifact bucket."""
    assert _grants(POLICY) == _read_write("ml-platform")


def test_mlflow_policy_covers_the_artifact_bucket_only() -> None:
    assert _grants(MLFLOW_POLICY) == _read_write("mlflow-artifacts")


def test_api_policy_reads_models_and_gold_features_only() -> None:
    """The API's MinIO user: GetObject and listing on the model artifacts and on the gold zone
    Feast's s3 profile reads; no write, no delete, nothing else of ml-platform."""
    gold = paths.GOLD_AGGREGATES.split("daily_aggregates")[0]  # lake/gold/
    assert gold == "lake/gold/"
    prefix = json.dumps({"StringLike": {"s3:prefix": [f"{gold}*"]}}, sort_keys=True)
    assert _grants(API_POLICY) == {
        ("s3:GetBucketLocation", "arn:aws:s3:::mlflow-artifacts", NO_CONDITION),
        ("s3:GetBucketLocation", "arn:aws:s3:::ml-platform", NO_CONDITION),
        ("s3:ListBucket", "arn:aws:s3:::mlflow-artifacts", NO_CONDITION),
        ("s3:GetObject", "arn:aws:s3:::mlflow-artifacts/*", NO_CONDITION),
        ("s3:ListBucket", "arn:aws:s3:::ml-platform", prefix),
        ("s3:GetObject", f"arn:aws:s3:::ml-platform/{gold}*", NO_CONDITION),
    }
    assert {action for action, _, _ in _grants(API_POLICY)} <= {
        "s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}  # fmt: skip


def test_dockerignore_keeps_secrets_and_state_out_of_the_build_context() -> None:
    patterns = {
        ln.strip().rstrip("/")
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for required in (".venv", ".lake", ".dagster_home", ".git", "benchmarks/data", "*.log",
                     ".env", "docker/.env"):  # fmt: skip
        assert required in patterns, required
    for needed in ("docker", "ml_platform", "feature_repo", "pyproject.toml", "README.md",
                   "docker/dagster.yaml", "*.lock", "docker/requirements.lock"):  # fmt: skip
        assert needed not in patterns, f"the build needs {needed}"


# ------------------------------------------------------------------------------ compute logs


@needs_compose
def test_dagster_services_get_what_the_instance_config_reads(rendered: dict) -> None:
    """docker/dagster.yaml reads its settings from {env: ...}: every Dagster process must have them,
    and compute logs go to the platform bucket under logs/compute."""
    instance = yaml.safe_load(INSTANCE.read_text())
    assert instance["compute_logs"]["class"] == "S3ComputeLogManager"
    needed = _instance_env_names()
    for name in DAGSTER_SERVICES:
        env = rendered["services"][name]["environment"]
        assert not needed - set(env), (name, needed - set(env))
        assert env["DAGSTER_COMPUTE_LOGS_BUCKET"] == "ml-platform", name
        assert env["DAGSTER_COMPUTE_LOGS_PREFIX"] == "logs/compute", name
    writable = {
        resource
        for statement in json.loads(POLICY.read_text())["Statement"]
        if "s3:PutObject" in statement["Action"]
        for resource in statement["Resource"]
    }
    assert "arn:aws:s3:::ml-platform/*" in writable


@needs_compose
def test_no_state_volume_for_dagster_home(rendered: dict) -> None:
    """Runs, events and schedules live in PostgreSQL and compute logs in S3: no volume is mounted
    under $DAGSTER_HOME, and every named volume is used."""
    declared = set(rendered.get("volumes") or {})
    assert "dagster-storage" not in declared
    used = set()
    for name, service in rendered["services"].items():
        for mount in service.get("volumes") or []:
            source, target = str(mount).split(":")[:2]
            assert not target.startswith("/opt/dagster"), f"{name} mounts {target}"
            if not source.startswith(("/", ".")):
                assert source in declared, (name, source)
                used.add(source)
    assert used == declared, declared - used


# ------------------------------------------------------------------------------ notifications


def _libpq_params(dsn: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in dsn.split())


@needs_compose
def test_minio_publishes_landing_puts_to_postgres(rendered: dict) -> None:
    services = rendered["services"]
    env = services["minio"]["environment"]
    assert env["MINIO_NOTIFY_POSTGRES_ENABLE_PRIMARY"] == "on"
    assert env["MINIO_NOTIFY_POSTGRES_TABLE_PRIMARY"] == EVENTS_TABLE
    assert env["MINIO_NOTIFY_POSTGRES_FORMAT_PRIMARY"] == "access"
    assert _libpq_params(env["MINIO_NOTIFY_POSTGRES_CONNECTION_STRING_PRIMARY"]) == {
        "host": "postgres", "port": "5432", "dbname": "events", "user": "minio",
        "password": PLACEHOLDERS["MINIO_DB_PASSWORD"], "sslmode": "disable",
    }  # fmt: skip
    queue = env.get("MINIO_NOTIFY_POSTGRES_QUEUE_DIR_PRIMARY")
    if queue:  # the undelivered-event queue must survive a container restart
        assert any(str(m).split(":")[1] == queue for m in services["minio"]["volumes"]), queue
    assert _condition(services, "minio", "postgres") == "service_healthy"
    # Every target configured by environment is ENABLE/CONNECTION_STRING/... + _<ID>; the ID in
    # the ARN that minio-init attaches must be one of them.
    ids = {k.rsplit("_", 1)[1] for k in env if k.startswith("MINIO_NOTIFY_POSTGRES_ENABLE_")}
    assert EVENT_ARN.split(":")[4] in ids and EVENT_ARN.endswith(":postgresql"), ids


@needs_compose
def test_platform_services_follow_the_events_table(rendered: dict) -> None:
    env = rendered["services"]["code-location"]["environment"]
    assert env["ML_PLATFORM_EVENTS_URL"] == (
        f"postgresql://events:{PLACEHOLDERS['EVENTS_DB_PASSWORD']}@postgres:5432/events"
    )
    assert env["ML_PLATFORM_EVENTS_TABLE"] == EVENTS_TABLE
    for name in ("api", "mlflow", "webserver", "daemon"):
        assert "ML_PLATFORM_EVENTS_URL" not in rendered["services"][name]["environment"], name


def test_minio_init_adds_the_notification_rule() -> None:
    script = MINIO_INIT.read_text()
    lines = [ln.strip() for ln in script.splitlines() if not ln.lstrip().startswith("#")]
    expected = f"mc event add local/ml-platform {EVENT_ARN} --event put --prefix landing/"
    assert any(re.search(re.escape(expected) + r"(\s|$)", line) for line in lines), expected
    assert "already exists" in script, "a re-run must not fail on the existing rule"
    syntax = subprocess.run(["sh", "-n", str(MINIO_INIT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


#: A stand-in for `mc` that records its arguments (one call per line, tab-separated).
FAKE_MC = """#!/bin/sh
printf '%s\t' "$@" >> "$MC_LOG"
printf '\n' >> "$MC_LOG"
"""


def _run_minio_init(
    tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, list]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    log.write_text("")
    result = subprocess.run(
        ["sh", str(MINIO_INIT)], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "MC_LOG": str(log), **env},
    )  # fmt: skip
    calls = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]
    return result, calls


def _random_minio_env() -> dict[str, str]:
    import secrets

    return {name: secrets.token_hex(12) for name in (*MINIO_ROOT, *S3_KEYS["platform"],
                                                     *S3_KEYS["mlflow"], *S3_KEYS["api"])}  # fmt: skip


def test_minio_init_creates_one_user_per_service_with_its_policy(tmp_path) -> None:
    """init.sh against a recording `mc`: it logs in as root, then gives each service's access key
    its own secret and exactly its own policy file; no service gets the root user."""
    env = _random_minio_env()
    result, calls = _run_minio_init(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert calls[0] == ["alias", "set", "local", "http://minio:9000", env["MINIO_ROOT_USER"],
                        env["MINIO_ROOT_PASSWORD"]]  # fmt: skip
    policies = {
        call[4]: Path(call[5]) for call in calls if call[:3] == ["admin", "policy", "create"]
    }
    users = {call[4]: call[5] for call in calls if call[:3] == ["admin", "user", "add"]}
    attached = {call[6]: call[4] for call in calls if call[:3] == ["admin", "policy", "attach"]}
    expected = {"platform": ("ml-platform-rw", POLICY), "mlflow": ("mlflow-artifacts-rw", MLFLOW_POLICY),
                "api": ("ml-platform-api-read", API_POLICY)}  # fmt: skip
    assert set(policies) == {name for name, _ in expected.values()}
    for service, (policy, path) in expected.items():
        access, secret = (env[k] for k in S3_KEYS[service])
        assert policies[policy].resolve() == path.resolve(), service
        assert users[access] == secret, service
        assert attached[access] == policy, service
    assert env["MINIO_ROOT_USER"] not in users
    assert ["mb", "--ignore-existing", "local/mlflow-artifacts"] in calls


@pytest.mark.parametrize("variable", [*S3_KEYS["mlflow"][:1], *S3_KEYS["api"][:1]])
def test_minio_init_refuses_a_service_user_equal_to_root_or_another(tmp_path, variable) -> None:
    env = _random_minio_env()
    for other in ("MINIO_ROOT_USER", "PLATFORM_S3_ACCESS_KEY"):
        result, calls = _run_minio_init(tmp_path, {**env, variable: env[other]})
        assert result.returncode != 0 and variable in result.stderr, result.stderr
        assert calls == [], "nothing is done with a shared user"
    missing = {k: v for k, v in env.items() if k != variable}
    result, calls = _run_minio_init(tmp_path, missing)
    assert result.returncode != 0 and f"{variable} is not set" in result.stderr
    assert calls == []


def test_init_sql_declares_the_events_table() -> None:
    sql = INIT_SQL.read_text()
    for database in ("dagster", "mlflow", "feast", "events"):
        assert f"CREATE DATABASE {database}" in sql, database
    assert re.search(r"^\\connect events$", sql, flags=re.M)
    assert re.search(
        r"CREATE TABLE IF NOT EXISTS public\.minio_events \(\s*id\s+bigserial\s+PRIMARY KEY,"
        r"\s*event_time\s+timestamptz\s+NOT NULL,\s*event_data\s+jsonb\s+NOT NULL\s*\)",
        sql,
        flags=re.I,
    ), "table contract: id bigserial pk, event_time timestamptz not null, event_data jsonb not null"


ROLE_PASSWORD_PLACEHOLDERS = {v: PLACEHOLDERS[v] for v in ROLE_PASSWORDS.values()}


@pytest.fixture(scope="module")
def initialised_postgres():
    """A throwaway PostgreSQL cluster of its own (init.sql creates fixed database names, which
    must not collide with the session-wide cluster of the other tests), initialised with
    docker/postgres/init.sql and roles.sh the way the postgres image's entrypoint runs them, each
    twice (idempotent), with the placeholder passwords compose renders; then every role but the
    superuser must authenticate with its password, as in the image."""
    from ml_platform_tests.servers import postgres_bin_dir, postgres_cluster

    if postgres_bin_dir() is None:
        tool_missing("PostgreSQL server binaries (initdb/pg_ctl) are not installed")
    with postgres_cluster() as pg:
        for attempt in ("first start", "re-run"):
            result = run_init_sql(pg)
            assert result.returncode == 0, f"init.sql, {attempt}: {result.stderr}"
            result = run_roles_sh(pg, ROLE_PASSWORD_PLACEHOLDERS)
            assert result.returncode == 0, f"roles.sh, {attempt}: {result.stderr}"
            assert result.stderr == "", result.stderr
        require_passwords(pg)
        yield pg


def _connect(pg, role: str, database: str, password: str | None = None):
    import psycopg2

    if role == "postgres":
        password = None  # trust, as the image's own socket
    elif password is None:
        password = PLACEHOLDERS[ROLE_PASSWORDS[role]]
    return psycopg2.connect(host=pg.host, port=pg.port, user=role, password=password,
                            dbname=database, connect_timeout=10)  # fmt: skip


def _run(pg, role: str, database: str, *statements: str) -> list:
    """Run ``statements`` in one autocommit session as ``role``; the last one's rows (or None)."""
    conn = _connect(pg, role, database)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def _refused(pg, role: str, database: str, statement: str) -> str:
    """The error of ``statement`` as ``role``, which must be a missing privilege."""
    import psycopg2

    with pytest.raises(psycopg2.Error) as caught:
        _run(pg, role, database, statement)
    assert caught.value.pgcode == "42501", (role, statement, caught.value)  # insufficient_privilege
    return str(caught.value)


#: Databases each role may connect to; every other connection is refused.
ROLE_DATABASES = {"dagster": {"dagster"}, "mlflow": {"mlflow"}, "feast": {"feast"},
                  "events": {"events"}, "minio": {"events"}, "api": {"feast"}}  # fmt: skip
DATABASES = ("postgres", "dagster", "mlflow", "feast", "events")


def test_roles_connect_only_to_their_own_database_with_their_password(initialised_postgres):
    import psycopg2

    pg = initialised_postgres
    for role, allowed in ROLE_DATABASES.items():
        for database in DATABASES:
            if database in allowed:
                assert _run(pg, role, database, "SELECT current_user")[0][0] == role
                continue
            with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
                _connect(pg, role, database)
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _connect(
                pg, role, next(iter(allowed)), password=PLACEHOLDERS[ROLE_PASSWORDS[role]] + "x"
            )
    attributes = _run(pg, "postgres", "postgres",
                      "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
                      "rolbypassrls FROM pg_roles WHERE rolname = ANY(ARRAY"
                      f"{sorted(ROLE_PASSWORDS)!r})")  # fmt: skip
    assert sorted(attributes) == [(role, False, False, False, False, False)
                                  for role in sorted(ROLE_PASSWORDS)]  # fmt: skip


def test_component_roles_own_their_database(initialised_postgres):
    """Dagster, MLflow and Feast create and migrate their own schema: each role may run DDL in
    its database (tables in public, and schemas for Feast's offline and online tables)."""
    pg = initialised_postgres
    for role in ("dagster", "mlflow", "feast"):
        table = f"probe_{role}"
        rows = _run(pg, role, role, f"CREATE TABLE {table} (id serial PRIMARY KEY, v text)",
                    f"INSERT INTO {table} (v) VALUES ('x')", f"ALTER TABLE {table} ADD w int",
                    f"SELECT count(*) FROM {table}")  # fmt: skip
        assert rows == [(1,)], role
        _run(pg, role, role, f"DROP TABLE {table}")
    _run(pg, "feast", "feast", "CREATE SCHEMA IF NOT EXISTS probe_schema",
         "CREATE TABLE probe_schema.t (x int)", "DROP SCHEMA probe_schema CASCADE")  # fmt: skip
    _refused(pg, "feast", "feast", "CREATE DATABASE another")


def test_api_role_reads_the_feature_store_and_writes_nothing(initialised_postgres):
    """What role feast creates (registry tables in public, tables in schemas it creates later,
    as Feast's online store does) the API can read, never change; the only tables it can create
    are in its own schema api_scratch."""
    pg = initialised_postgres
    _run(pg, "feast", "feast",
         "CREATE TABLE IF NOT EXISTS public.probe_registry (name text PRIMARY KEY)",
         "CREATE SCHEMA IF NOT EXISTS probe_online",
         "CREATE TABLE IF NOT EXISTS probe_online.probe_view (entity_key bytea, v double precision)",
         "INSERT INTO public.probe_registry VALUES ('view') ON CONFLICT DO NOTHING",
         "INSERT INTO probe_online.probe_view VALUES ('\\x01', 1.5)")  # fmt: skip
    try:
        assert _run(pg, "api", "feast", "SELECT name FROM public.probe_registry") == [("view",)]
        assert _run(pg, "api", "feast", "SELECT v FROM probe_online.probe_view")[0] == (1.5,)
        for statement in (
            "INSERT INTO probe_online.probe_view VALUES ('\\x02', 2)",
            "UPDATE probe_online.probe_view SET v = 0",
            "DELETE FROM public.probe_registry",
            "TRUNCATE probe_online.probe_view",
            "CREATE TABLE public.api_table (x int)",
            "CREATE TABLE probe_online.api_table (x int)",
            "CREATE SCHEMA api_own",
            "ALTER TABLE public.probe_registry ADD x int",
            "DROP TABLE probe_online.probe_view",
            "CREATE TEMPORARY TABLE api_temp (x int)",
        ):
            _refused(pg, "api", "feast", statement)
        _run(
            pg,
            "api",
            "feast",
            "CREATE TABLE api_scratch.entity_df (sensor_id text)",
            "INSERT INTO api_scratch.entity_df VALUES ('s1')",
            "DROP TABLE api_scratch.entity_df",
        )
    finally:
        _run(pg, "feast", "feast", "DROP SCHEMA probe_online CASCADE",
             "DROP TABLE public.probe_registry")  # fmt: skip


def test_events_roles_append_and_read_only(initialised_postgres):
    """MinIO (role minio) appends events and the landing sensors (role events) read them;
    neither can change or remove one, or create anything."""
    pg = initialised_postgres
    _run(pg, "minio", "events", f"SELECT 1 FROM {EVENTS_TABLE}")
    for statement in (f"UPDATE {EVENTS_TABLE} SET event_data = '{{}}'", f"DELETE FROM {EVENTS_TABLE}",
                      f"TRUNCATE {EVENTS_TABLE}", "CREATE TABLE public.other (x int)"):  # fmt: skip
        _refused(pg, "minio", "events", statement)
    _run(pg, "events", "events", f"SELECT max(id) FROM {EVENTS_TABLE}")
    for statement in (f"INSERT INTO {EVENTS_TABLE} (event_time, event_data) VALUES (now(), '{{}}')",
                      f"DELETE FROM {EVENTS_TABLE}", "CREATE TABLE public.other (x int)"):  # fmt: skip
        _refused(pg, "events", "events", statement)


def test_roles_sh_reapplies_passwords_and_hands_over_superuser_objects(initialised_postgres):
    """A re-run (upgrade of an existing volume): a changed password takes effect, the old one no
    longer works, and what the superuser created in a component's database before the roles
    existed now belongs to the component's role."""
    import secrets

    import psycopg2

    pg = initialised_postgres
    _run(pg, "postgres", "mlflow", "CREATE TABLE legacy_runs (id serial PRIMARY KEY)",
         "CREATE SCHEMA legacy", "CREATE TABLE legacy.t (x int)")  # fmt: skip
    changed = {**ROLE_PASSWORD_PLACEHOLDERS, "MLFLOW_DB_PASSWORD": secrets.token_hex(16)}
    try:
        result = run_roles_sh(pg, changed)
        assert result.returncode == 0, result.stderr
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _connect(pg, "mlflow", "mlflow")
        _connect(pg, "mlflow", "mlflow", password=changed["MLFLOW_DB_PASSWORD"]).close()
        owners = _run(pg, "postgres", "mlflow",
                      "SELECT c.relname, c.relowner::regrole::text FROM pg_class c "
                      "WHERE c.relname IN ('legacy_runs', 'legacy_runs_id_seq', 't') "
                      "UNION ALL SELECT nspname, nspowner::regrole::text FROM pg_namespace "
                      "WHERE nspname = 'legacy' ORDER BY 1")  # fmt: skip
        assert owners == [("legacy", "mlflow"), ("legacy_runs", "mlflow"),
                          ("legacy_runs_id_seq", "mlflow"), ("t", "mlflow")]  # fmt: skip
    finally:
        assert run_roles_sh(pg, ROLE_PASSWORD_PLACEHOLDERS).returncode == 0
        _run(pg, "mlflow", "mlflow", "DROP TABLE legacy_runs", "DROP SCHEMA legacy CASCADE")


@pytest.mark.parametrize("variable", sorted(ROLE_PASSWORDS.values()))
def test_roles_sh_refuses_a_missing_password(initialised_postgres, variable):
    result = run_roles_sh(initialised_postgres, {**ROLE_PASSWORD_PLACEHOLDERS, variable: ""})
    assert result.returncode != 0 and variable in result.stderr, result.stderr
    # Nothing changed: the role still authenticates with its old password.
    role = next(r for r, v in ROLE_PASSWORDS.items() if v == variable)
    _connect(initialised_postgres, role, next(iter(ROLE_DATABASES[role]))).close()


def test_roles_sh_keeps_passwords_off_command_lines() -> None:
    """Passwords reach psql through \\getenv inside a quoted here-document, never as arguments or
    shell-expanded text (the process list and `set -x` would show them)."""
    script = ROLES_SH.read_text()
    for role, variable in ROLE_PASSWORDS.items():
        assert f"\\getenv {role}_password {variable}" in script, variable
        assert f"('{role}', :'{role}_password')" in script, role
        assert f"${variable}" not in script and f"${{{variable}" not in script, variable
    assert all(line.rstrip().endswith("<<'SQL'") for line in script.splitlines()
               if "<<" in line), "every here-document is quoted"  # fmt: skip
    assert os.access(ROLES_SH, os.X_OK), "executable: the entrypoint runs it instead of sourcing it"
    syntax = subprocess.run(["sh", "-n", str(ROLES_SH)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


@needs_compose
def test_postgres_service_runs_both_init_files_in_order(rendered: dict) -> None:
    postgres = rendered["services"]["postgres"]
    mounts = {str(m).split(":")[1]: Path(str(m).split(":")[0]) for m in postgres["volumes"]
              if str(m).startswith("/")}  # fmt: skip
    init = "/docker-entrypoint-initdb.d/"
    assert mounts[f"{init}10-databases.sql"] == INIT_SQL
    assert mounts[f"{init}20-roles.sh"] == ROLES_SH
    assert set(ROLE_PASSWORDS.values()) <= set(postgres["environment"])


@needs_compose
def test_every_rendered_connection_authenticates_as_its_role(initialised_postgres, rendered):
    """Each PostgreSQL connection compose renders (host and port swapped for the throwaway
    server) logs in, with the password roles.sh set, as the role the service should use, in the
    database it should reach."""
    import psycopg2

    pg = initialised_postgres
    services = rendered["services"]
    local = f"@{pg.host}:{pg.port}/"

    def url(value: str) -> str:  # SQLAlchemy URL -> libpq URL
        return re.sub(r"^postgresql\+\w+://", "postgresql://", value).replace(
            "@postgres:5432/", local
        )

    expected = {  # (service, what) -> (role, database)
        ("minio", "notifications"): ("minio", "events"),
        ("code-location", "events"): ("events", "events"),
        ("code-location", "feast registry"): ("feast", "feast"),
        ("code-location", "feast stores"): ("feast", "feast"),
        ("api", "feast registry"): ("api", "feast"),
        ("api", "feast stores"): ("api", "feast"),
        ("mlflow", "backend store"): ("mlflow", "mlflow"),
        **{(name, "instance"): ("dagster", "dagster") for name in DAGSTER_SERVICES},
    }
    for (name, what), (role, database) in expected.items():
        env = services[name]["environment"]
        if what == "notifications":
            dsn = env["MINIO_NOTIFY_POSTGRES_CONNECTION_STRING_PRIMARY"].replace(
                "host=postgres port=5432", f"host={pg.host} port={pg.port}")  # fmt: skip
            conn = psycopg2.connect(dsn)
        elif what == "events":
            conn = psycopg2.connect(url(env["ML_PLATFORM_EVENTS_URL"]))
        elif what == "feast registry":
            conn = psycopg2.connect(url(env["ML_PLATFORM_FEAST_REGISTRY_URL"]))
        elif what == "backend store":
            conn = psycopg2.connect(url(env["MLFLOW_BACKEND_STORE_URI"]))
        elif what == "feast stores":
            conn = psycopg2.connect(host=pg.host, port=pg.port,
                                    user=env["ML_PLATFORM_FEAST_PG_USER"],
                                    password=env["ML_PLATFORM_FEAST_PG_PASSWORD"],
                                    dbname=env["ML_PLATFORM_FEAST_PG_DB"])  # fmt: skip
        else:
            conn = psycopg2.connect(host=pg.host, port=pg.port, user=env["DAGSTER_PG_USER"],
                                    password=env["DAGSTER_PG_PASSWORD"],
                                    dbname=env["DAGSTER_PG_DB"])  # fmt: skip
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user, current_database()")
                assert cur.fetchone() == (role, database), (name, what)
        finally:
            conn.close()


def _minio_record(key: str, sequencer: str) -> dict:
    """An S3 event record as MinIO publishes it (object key URL-encoded)."""
    return {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": "2025-05-01T12:00:00.123Z", "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": "platform"},
        "requestParameters": {"principalId": "platform", "region": "", "sourceIPAddress": "10.0.0.5"},
        "responseElements": {"x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                             "x-amz-request-id": "1837E5A4E4F1B1C2", "x-minio-deployment-id": "x",
                             "x-minio-origin-endpoint": "http://172.18.0.2:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": "ml-platform", "ownerIdentity": {"principalId": "platform"},
                          "arn": "arn:aws:s3:::ml-platform"},
               "object": {"key": key, "size": 1234, "eTag": "0f343b0931126a20f133d67c2b018a3b",
                          "contentType": "text/csv", "userMetadata": {"content-type": "text/csv"},
                          "sequencer": sequencer}},
        "source": {"host": "10.0.0.5", "port": "", "userAgent": "Boto3/1.35"},
    }  # fmt: skip


def test_init_sql_events_table_accepts_minio_inserts(initialised_postgres) -> None:
    """Replays what MinIO's PostgreSQL target (access format) does, as MinIO's role `minio`: the
    table-exists probe, then its prepared INSERT; readers (role `events`) get the events back in
    insertion order by id."""
    import psycopg2

    pg = initialised_postgres
    admin = psycopg2.connect(host=pg.host, port=pg.port, user="postgres", dbname="postgres")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            assert {"dagster", "mlflow", "feast", "events"} <= {row[0] for row in cur.fetchall()}
    finally:
        admin.close()

    keys = ["landing%2Freadings%2Fday+1.csv", "landing%2Flabels%2Flabels.csv", "landing%2Fx.csv"]
    _run(pg, "postgres", "events", f"TRUNCATE {EVENTS_TABLE}")  # this test's rows only
    conn = _connect(pg, "minio", "events")
    conn.autocommit = True  # MinIO's statements run outside transactions
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT 1 FROM {EVENTS_TABLE};")  # MinIO: psqlTableExists
            cur.execute(  # MinIO: psqlInsertRow, prepared, then executed per event
                f"PREPARE minio_insert AS INSERT INTO {EVENTS_TABLE} (event_time, event_data) "
                "VALUES ($1, $2);"
            )
            for n, key in enumerate(keys):
                record = _minio_record(key, f"1837E5A4E4F1B1C{n}")
                cur.execute(
                    "EXECUTE minio_insert (%s, %s)",
                    (datetime(2025, 5, 1, 12, 0, n, tzinfo=UTC), json.dumps({"Records": [record]})),
                )
            # The brief's literal form works too (MinIO's bytes arrive as text for jsonb).
            cur.execute(
                f"INSERT INTO {EVENTS_TABLE} (event_time, event_data) VALUES (now(), %s)",
                (json.dumps({"Records": [_minio_record("landing%2Flast.csv", "Z")]}),),
            )
    finally:
        conn.close()
    rows = _run(pg, "events", "events",
                f"SELECT id, event_data->'Records'->0->'s3'->'object'->>'key' FROM {EVENTS_TABLE} "
                "ORDER BY id")  # fmt: skip
    conn = _connect(pg, "events", "events")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                (EVENTS_TABLE,),
            )
            columns = cur.fetchall()
    finally:
        conn.close()
    assert [key for _, key in rows] == [*keys, "landing%2Flast.csv"]
    ids = [row_id for row_id, _ in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] >= 1, ids
    assert columns == [("id", "bigint", "NO"), ("event_time", "timestamp with time zone", "NO"),
                       ("event_data", "jsonb", "NO")]  # fmt: skip


@needs_compose
def test_compose_connection_strings_reach_the_events_table(initialised_postgres, rendered) -> None:
    """MinIO's libpq string and the platform's URL, as compose renders them (host and port
    swapped for the throwaway server), authenticate and reach the `events` database holding the
    table."""
    import psycopg2

    pg = initialised_postgres
    minio = rendered["services"]["minio"]["environment"]
    dsn = minio["MINIO_NOTIFY_POSTGRES_CONNECTION_STRING_PRIMARY"].replace(
        "host=postgres port=5432", f"host={pg.host} port={pg.port}"
    )
    url = rendered["services"]["code-location"]["environment"]["ML_PLATFORM_EVENTS_URL"].replace(
        "@postgres:5432/", f"@{pg.host}:{pg.port}/"
    )
    table = rendered["services"]["code-location"]["environment"]["ML_PLATFORM_EVENTS_TABLE"]
    for target in (dsn, url):
        conn = psycopg2.connect(target)  # the password roles.sh set from the placeholders
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_database(), to_regclass(%s) IS NOT NULL", (table,))
                assert cur.fetchone() == ("events", True), target
        finally:
            conn.close()


# ------------------------------------------------------------------------------ Kubernetes


def _helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def _walk(node: object, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, node


#: Keys of the chart's values that this file may use, from the chart's schema
#: (helm/dagster/schema/schema/charts/dagster/values.py and subschema/*.py in dagster-io/dagster;
#: the chart's values.schema.json forbids unknown keys in most sections).
HELM_TOP_LEVEL = {
    "global", "postgresql", "generatePostgresqlPasswordSecret", "dagster-user-deployments",
    "dagsterWebserver", "dagsterDaemon", "concurrency", "runLauncher", "computeLogManager",
    "telemetry", "serviceAccount", "imagePullSecrets", "ingress", "pythonLogs", "retention",
    "migrate", "additionalInstanceConfig",
}  # fmt: skip
HELM_K8S_RUN_LAUNCHER = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
    "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
}  # fmt: skip
HELM_S3_COMPUTE_LOGS = {
    "bucket", "localDir", "prefix", "useSsl", "verify", "verifyCertPath", "endpointUrl",
    "skipEmptyFiles", "uploadInterval", "uploadExtraArgs", "showUrlOnly", "region",
}  # fmt: skip
#: Values that must come from a Kubernetes Secret, never from values.yaml.
K8S_SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DAGSTER_PG_PASSWORD",
                  "ML_PLATFORM_FEAST_PG_PASSWORD", "ML_PLATFORM_FEAST_REGISTRY_URL",
                  "ML_PLATFORM_EVENTS_URL"}  # fmt: skip


def test_helm_values_parse_and_use_the_k8s_run_launcher() -> None:
    values = _helm_values()
    assert set(values) <= HELM_TOP_LEVEL, set(values) - HELM_TOP_LEVEL
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]) == {"k8sRunLauncher"}
    assert set(values["runLauncher"]["config"]["k8sRunLauncher"]) <= HELM_K8S_RUN_LAUNCHER
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlHost"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]
    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    assert set(logs["config"]) == {"s3ComputeLogManager"}
    assert set(logs["config"]["s3ComputeLogManager"]) <= HELM_S3_COMPUTE_LOGS
    assert values["telemetry"]["enabled"] is False


def test_helm_values_hold_no_secret_values() -> None:
    values = _helm_values()
    for path, value in _walk(values):
        if not isinstance(value, str):  # flags such as generatePostgresqlPasswordSecret: false
            continue
        key = path.rsplit(".", 1)[-1].split("[", 1)[0]
        secret_key = re.search(r"(?i)password|secret|token|api_?key|access_?key", key)
        if secret_key and not key.endswith("SecretName"):
            assert value == "", f"{path} holds a literal secret"
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"{path}: credentials in URL"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = deployment["env"]
    assert not K8S_SECRET_ENV & set(env), K8S_SECRET_ENV & set(env)
    assert not [name for name in env if SECRET_NAME.search(name)], env
    secrets = {s["name"] for s in deployment["envSecrets"]}
    assert {
        s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]
    } == secrets


def test_helm_code_location_runs_the_compose_code() -> None:
    values = _helm_values()
    users = values["dagster-user-deployments"]
    assert users["enabled"] is True
    (deployment,) = users["deployments"]
    args = deployment["codeServerArgs"]
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["code-location"]["command"]
    for flag in ("-m", "-a"):
        assert args[args.index(flag) + 1] == compose[compose.index(flag) + 1], flag
    assert deployment["image"]["tag"] not in ("", "latest")
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True
    _, ordered = _dockerfile()
    assert "code-location-k8s" in {stage.name for stage in ordered}
    assert "--target code-location-k8s" in HELM_README.read_text()


@needs_compose
def test_helm_code_location_gets_every_compose_setting(rendered: dict) -> None:
    """What compose gives the code location, Kubernetes gives it too: in the deployment's env or
    in the Secrets the README creates (the DAGSTER_* instance variables are replaced by the
    chart's own instance config)."""
    values = _helm_values()
    deployment = values["dagster-user-deployments"]["deployments"][0]
    readme = HELM_README.read_text()
    from_secrets = set(re.findall(r"--from-literal=([A-Z][A-Z0-9_]*)=", readme))
    assert K8S_SECRET_ENV - {"DAGSTER_PG_PASSWORD"} <= from_secrets
    assert f"secret generic {values['global']['postgresqlSecretName']}" in readme
    for secret in deployment["envSecrets"]:
        assert f"secret generic {secret['name']}" in readme, secret
    compose_env = rendered["services"]["code-location"]["environment"]
    wanted = {name for name in compose_env if not name.startswith("DAGSTER_")}
    missing = wanted - set(deployment["env"]) - from_secrets
    assert not missing, missing


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def test_helm_instance_settings_match_dagster_yaml() -> None:
    """Same run queue, limits, retries, monitoring and threading as the compose instance."""
    instance = yaml.safe_load(INSTANCE.read_text())
    values = _helm_values()
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]
    assert queued["enabled"] is True and queued["type"] == "QueuedRunCoordinator"
    assert (queued["config"]["queuedRunCoordinator"]["dequeueIntervalSeconds"]
            == instance["run_queue"]["dequeue_interval_seconds"])  # fmt: skip
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    runs = instance["concurrency"]["runs"]
    assert concurrency["runs"]["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert concurrency["runs"]["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert concurrency["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    for section in ("run_retries", "run_monitoring"):
        helm = daemon[_camel(section)]
        for key, value in instance[section].items():
            assert helm[_camel(key)] == value, (section, key)
    for section in ("sensors", "schedules"):
        for key, value in instance[section].items():
            assert daemon[section][_camel(key)] == value, (section, key)
    assert values["telemetry"]["enabled"] == instance["telemetry"]["enabled"]
    assert (
        values["postgresql"]["postgresqlScheme"]
        == (instance["run_storage"]["config"]["postgres_db"]["scheme"])
    )
    s3_logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    compose = yaml.safe_load(COMPOSE.read_text())["x-instance-env"]
    assert s3_logs["bucket"] == compose["DAGSTER_COMPUTE_LOGS_BUCKET"]
    assert s3_logs["prefix"] == compose["DAGSTER_COMPUTE_LOGS_PREFIX"]
    for key, value in instance["compute_logs"]["config"].items():
        if not isinstance(value, dict):  # literal settings, not {env: ...}
            assert s3_logs[_camel(key)] == value, key


DEV_LOCK = ROOT / "requirements-dev.lock"


def test_dev_lock_holds_every_dependency_and_the_image_locks_follow_it() -> None:
    """`make install` installs uv.lock (requirements-dev.lock is its pip export): every runtime
    and dev dependency of pyproject.toml is locked at a version the range accepts, the export
    and every package the images install have uv.lock's versions (fails when pyproject.toml
    changed without `make lock`)."""
    import tomllib

    dev = _lock(DEV_LOCK)
    uv_lock = {canonicalize_name(p["name"]): p["version"]
               for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}  # fmt: skip
    assert {n: v for n, (v, _) in dev.items()} == {n: uv_lock[n] for n in dev}
    assert set(uv_lock) - set(dev) == {"ml-platform"}, "the export leaves only the project out"
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    environment = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
                   "platform_system": "Linux", "extra": "dev"}  # fmt: skip
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in dev, f"{name} is missing from {DEV_LOCK.name}: run make lock"
        assert requirement.specifier.contains(dev[name][0], prereleases=True), (line, dev[name])
    for path in (LOCK, LOCK_DAGSTER, LOCK_K8S):
        image = _lock(path)
        followed = {n: v for n, (v, _) in image.items() if n in dev}
        assert followed == {n: dev[n][0] for n in followed}, f"{path.name}: run make lock"
    # Only the build backend, and dagster-k8s with its closure, are not in the dev environment.
    assert set(_lock(LOCK)) - set(dev) <= {"setuptools", "wheel"}
