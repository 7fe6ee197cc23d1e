"""The deployed profile refuses default, placeholder, empty, short and reused credentials
(ml_platform/lib/credentials.py): the pure rules, then the real start points — the compose
one-shot ``python -m ml_platform check-credentials --distinct``, the code location's definitions
and the prediction API under uvicorn — run as subprocesses with unsafe and with random values.

No value used here is a real credential; safe ones are generated with ``secrets`` per run.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ml_platform.lib import credentials as cr

ROOT = Path(__file__).resolve().parents[2]
#: Section 1 of .env.example: what compose's credentials-check receives.
SECTION_1 = re.findall(r"^([A-Z][A-Z0-9_]+)=$", (ROOT / ".env.example").read_text(), re.M)
IDENTITIES = {"MINIO_ROOT_USER", "PLATFORM_S3_ACCESS_KEY", "MLFLOW_S3_ACCESS_KEY",
              "API_S3_ACCESS_KEY"}  # fmt: skip


#: The images' own defaults, assembled so that the repository's credential scanner
#: (test_security.py) does not mistake this file for one holding credentials.
MINIO_DEFAULT, POSTGRES_DEFAULT = "minio" + "admin", "post" + "gres"


def strong(length: int = 48) -> str:
    # A letter first: a random hex string of 11 or 12 characters is all digits about once in 200 draws.
    return "k" + secrets.token_hex(length // 2)[: length - 1]


def safe_env() -> dict[str, str]:
    return {name: strong() for name in SECTION_1}


# ------------------------------------------------------------------------------ the rules


def test_section_1_is_what_the_check_covers():
    assert len(SECTION_1) == 15 and "POSTGRES_PASSWORD" in SECTION_1
    assert set(cr.checked_names(safe_env())) == set(SECTION_1)
    assert {n for n in SECTION_1 if cr.is_identity(n)} == IDENTITIES
    assert all(cr.is_secret(n) for n in set(SECTION_1) - IDENTITIES)
    assert cr.check(safe_env(), distinct=True) == []


@pytest.mark.parametrize("value", sorted(cr.WELL_KNOWN))
def test_every_well_known_default_is_refused_in_any_case(value):
    for variant in (value, value.upper(), value.title()):
        for name in ("MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER"):
            [problem] = cr.check({name: variant})
            assert problem.name == name and "well-known default" in problem.reason


@pytest.mark.parametrize(
    "value",
    ["change-me", "CHANGE_ME_PLEASE", "changeme123456", "<your password>", "${POSTGRES_PASSWORD}",
     "$POSTGRES_PASSWORD", "...", "xxxxxxxxxxxxxxxx", "****************", "your-secret-key-here",
     "example-secret-0123", "replace-me-0123456", "placeholder-value", "aaaaaaaaaaaaaaaaaaaa",
     "wJalrXUtnFEMI-K7MDENG-bPxRfiCY" + "EXAMPLEKEY", "todo"],
)  # fmt: skip
def test_placeholders_are_refused(value):
    [problem] = cr.check({"API_DB_PASSWORD": value})
    assert "placeholder" in problem.reason, value


def test_the_example_values_of_env_example_are_refused():
    """Every commented example of .env.example whose variable is a credential (the change-me
    values of section 3, in URLs too) is refused."""
    text = (ROOT / ".env.example").read_text()
    examples = dict(re.findall(r"^#\s*([A-Z][A-Z0-9_]+)=(\S*)$", text, re.M))
    env = {name: value for name, value in examples.items() if name in cr.checked_names(examples)}
    assert {"AWS_SECRET_ACCESS_KEY", "DAGSTER_PG_PASSWORD", "ML_PLATFORM_FEAST_REGISTRY_URL",
            "ML_PLATFORM_EVENTS_URL", "ML_PLATFORM_API_KEY"} <= set(env)  # fmt: skip
    assert {p.name.split(" ")[0] for p in cr.check(env)} == set(env)


def test_short_empty_and_padded_secrets_are_refused():
    short = strong(cr.MIN_SECRET_LENGTH - 1)
    assert len(short) == cr.MIN_SECRET_LENGTH - 1
    env = dict(zip(["POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "API_DB_PASSWORD",
                    "FEAST_DB_PASSWORD"], [short, "", f" {strong()}", "   "], strict=True))  # fmt: skip
    assert sorted((p.name, p.reason) for p in cr.check(env)) == [
        ("API_DB_PASSWORD", "starts or ends with whitespace"),
        ("FEAST_DB_PASSWORD", "is empty"),
        ("MINIO_ROOT_PASSWORD", "is empty"),
        ("POSTGRES_PASSWORD", f"is shorter than {cr.MIN_SECRET_LENGTH} characters"),
    ]
    assert cr.check({"POSTGRES_PASSWORD": strong(cr.MIN_SECRET_LENGTH)}) == []


@pytest.mark.parametrize(
    "value", ["mysecretpassword", "Password1234!", "minioadmin2024", "123456789012",
              "testtesttest", "abcabcabcabc"],
)  # fmt: skip
def test_defaults_with_digits_appended_repeats_and_only_digits_are_refused(value):
    [problem] = cr.check({"POSTGRES_PASSWORD": value})
    assert problem.name == "POSTGRES_PASSWORD"


def test_an_inherited_empty_token_is_not_a_credential_of_the_platform():
    assert cr.check({"GITHUB_TOKEN": "", "POSTGRES_PASSWORD": strong()}) == []
    assert [p.name for p in cr.check({"DAGSTER_PG_PASSWORD": ""})] == ["DAGSTER_PG_PASSWORD"]


def test_identities_may_be_short_but_not_defaults():
    assert cr.check(dict.fromkeys(["MINIO_ROOT_USER", "PLATFORM_S3_ACCESS_KEY"], "ops")) == []
    assert [p.name for p in cr.check({"MINIO_ROOT_USER": "admin"})] == ["MINIO_ROOT_USER"]


def test_required_names_must_be_set():
    problems = cr.check({"POSTGRES_PASSWORD": strong()}, ["POSTGRES_PASSWORD", "API_DB_PASSWORD"])
    assert [(p.name, p.reason) for p in problems] == [("API_DB_PASSWORD", "is not set")]


def test_the_optional_api_key_may_be_empty_but_not_weak():
    assert cr.check({"ML_PLATFORM_API_KEY": ""}) == []
    assert cr.check({"ML_PLATFORM_API_KEY": strong()}) == []
    [problem] = cr.check({"ML_PLATFORM_API_KEY": "change-me"})
    assert problem.name == "ML_PLATFORM_API_KEY"


def test_passwords_inside_urls_are_checked():
    good = strong()
    env = {
        "ML_PLATFORM_EVENTS_URL": f"postgresql://events:{POSTGRES_DEFAULT}@db:5432/events",
        "ML_PLATFORM_FEAST_REGISTRY_URL": f"postgresql+psycopg://feast:{good}@db:5432/feast",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",  # no password: not a credential
        "OTHER_URL": "postgresql://u:change-me@db/x",  # a placeholder
    }
    assert cr.checked_names(env) == ["ML_PLATFORM_EVENTS_URL", "ML_PLATFORM_FEAST_REGISTRY_URL",
                                     "OTHER_URL"]  # fmt: skip
    assert [p.name for p in cr.check(env)] == [
        "ML_PLATFORM_EVENTS_URL (the password in the URL)",
        "OTHER_URL (the password in the URL)",
    ]


def test_distinct_refuses_a_value_used_twice_naming_both():
    env = safe_env()
    env["API_DB_PASSWORD"] = env["FEAST_DB_PASSWORD"]
    env["MINIO_ROOT_PASSWORD"] = env["MINIO_ROOT_USER"]
    assert cr.check(env) == []  # inside a process a repeated value is legitimate (URL + var)
    assert [str(p) for p in cr.check(env, distinct=True)] == [
        "FEAST_DB_PASSWORD has the same value as API_DB_PASSWORD",
        "MINIO_ROOT_USER has the same value as MINIO_ROOT_PASSWORD",
    ]


def test_the_report_names_variables_and_never_values():
    env = {"POSTGRES_PASSWORD": secrets.token_hex(4), "MINIO_ROOT_USER": MINIO_DEFAULT,
           "DAGSTER_DB_PASSWORD": (reused := strong()), "MLFLOW_DB_PASSWORD": reused}  # fmt: skip
    text = cr.report(cr.check(env, distinct=True))
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MLFLOW_DB_PASSWORD"):
        assert name in text
    for value in env.values():
        assert value not in text


def test_the_profile_switch():
    weak = dict.fromkeys(["POSTGRES_PASSWORD"], POSTGRES_DEFAULT)
    cr.require_safe_environment(weak)  # local by default: nothing is checked
    cr.require_safe_environment({**weak, cr.PROFILE_ENV: "local"})
    cr.require_safe_environment({**safe_env(), cr.PROFILE_ENV: "deployed"})
    with pytest.raises(cr.InsecureCredentialsError, match="POSTGRES_PASSWORD"):
        cr.require_safe_environment({**weak, cr.PROFILE_ENV: " Deployed "})
    with pytest.raises(ValueError, match="ML_PLATFORM_PROFILE must be one of"):
        cr.require_safe_environment({**weak, cr.PROFILE_ENV: "deploy"})  # a typo is not local


def test_create_app_refuses_to_start_in_the_deployed_profile(monkeypatch):
    from ml_platform.serving.app import create_app

    monkeypatch.setenv(cr.PROFILE_ENV, "deployed")
    monkeypatch.setenv("ML_PLATFORM_FEAST_PG_PASSWORD", "change-me")
    with pytest.raises(cr.InsecureCredentialsError, match="ML_PLATFORM_FEAST_PG_PASSWORD"):
        create_app()


# ------------------------------------------------------------------------------ real start points


def _unsafe_env() -> dict[str, str]:
    """Section 1 filled the way people do it wrong: the images' defaults, placeholders, a short
    value, one value reused for two roles."""
    env = safe_env()
    reused = strong()
    env.update({
        "MINIO_ROOT_USER": MINIO_DEFAULT, "MINIO_ROOT_PASSWORD": MINIO_DEFAULT,
        "POSTGRES_PASSWORD": POSTGRES_DEFAULT, "PLATFORM_S3_SECRET_KEY": "change-me",
        "API_S3_SECRET_KEY": secrets.token_hex(4), "DAGSTER_DB_PASSWORD": reused,
        "MLFLOW_DB_PASSWORD": reused,
    })  # fmt: skip
    return env


UNSAFE = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "PLATFORM_S3_SECRET_KEY",
          "API_S3_SECRET_KEY", "MLFLOW_DB_PASSWORD")  # fmt: skip


def _run(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    return subprocess.run(args, cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


CHECK = [sys.executable, "-m", "ml_platform", "check-credentials", "--distinct"]


def test_the_compose_check_refuses_unsafe_credentials_naming_each():
    env = _unsafe_env()
    result = _run(CHECK, env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    named = set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", result.stderr, re.M))
    assert named == set(UNSAFE), named ^ set(UNSAFE)
    assert "MLFLOW_DB_PASSWORD has the same value as DAGSTER_DB_PASSWORD" in result.stderr
    for name in UNSAFE:
        assert env[name] not in output.replace(name, ""), f"the value of {name} is echoed"
    assert "Traceback" not in output


def test_the_compose_check_passes_random_credentials():
    env = safe_env()
    result = _run(CHECK, {**env, "ML_PLATFORM_API_KEY": ""})  # optional: empty is "no key"
    assert result.returncode == 0, result.stderr
    assert f"{len(SECTION_1)} credentials checked" in result.stdout
    for name, value in env.items():
        assert name in result.stdout and value not in result.stdout


def test_the_check_refuses_an_environment_without_credentials():
    result = _run([sys.executable, "-m", "ml_platform", "check-credentials"], {})
    assert result.returncode == 1 and "nothing was checked" in result.stderr


@pytest.mark.integration
def test_the_code_location_and_the_api_refuse_to_start_with_unsafe_credentials(tmp_path):
    """What compose runs in the code-location and api containers, with ML_PLATFORM_PROFILE=
    deployed: the definitions do not load and uvicorn exits, each naming the variables (never
    their values); in the local profile the same environment loads."""
    weak = {
        "ML_PLATFORM_FEAST_PG_PASSWORD": POSTGRES_DEFAULT,
        "ML_PLATFORM_EVENTS_URL": "postgresql://events:change-me@127.0.0.1:9/events",
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(3),
        "DAGSTER_HOME": str(tmp_path),
        "ML_PLATFORM_STORE_URL": (tmp_path / "lake").as_uri(),
    }
    names = ("ML_PLATFORM_FEAST_PG_PASSWORD", "ML_PLATFORM_EVENTS_URL", "AWS_SECRET_ACCESS_KEY")
    deployed = {**weak, cr.PROFILE_ENV: "deployed"}
    load = [sys.executable, "-c", "import ml_platform.definitions"]
    serve = [str(Path(sys.executable).with_name("uvicorn")), "--factory",
             "ml_platform.serving.app:create_app", "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    strong_env = {**weak, **{name: strong() for name in names}, cr.PROFILE_ENV: "deployed"}
    strong_env["ML_PLATFORM_EVENTS_URL"] = f"postgresql://events:{strong()}@127.0.0.1:9/events"
    with ThreadPoolExecutor(4) as pool:
        code, api, local, safe = pool.map(lambda a: _run(*a), [
            (load, deployed), (serve, deployed), (load, weak), (load, strong_env)
        ])  # fmt: skip
    for result in (code, api):
        assert result.returncode != 0, result.stdout[-2000:]
        assert "InsecureCredentialsError" in result.stderr, result.stderr[-3000:]
        for name in names:
            assert name in result.stderr, name
        assert weak["AWS_SECRET_ACCESS_KEY"] not in result.stderr
    assert local.returncode == 0, local.stderr[-3000:]
    # The deployed profile with random credentials loads.
    assert safe.returncode == 0, safe.stderr[-3000:]
