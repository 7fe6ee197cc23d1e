"""Refuse well-known default, placeholder, short and reused credentials in the deployed profile.

Pure functions over an environment mapping (no I/O, standard library only), used at three points:

- ``python -m ml_platform check-credentials --distinct``: the compose one-shot service
  ``credentials-check`` that every other service waits for (docker/compose.yaml); it receives
  every credential of the env file and exits non-zero, naming each offending variable, before
  PostgreSQL, MinIO or anything else starts;
- the code location (``ml_platform.definitions``) and the prediction API (``create_app``) call
  :func:`require_safe_environment` when ``ML_PLATFORM_PROFILE=deployed`` (set by compose and by
  the Helm values), so a process started some other way refuses its own weak credentials too.

The local profile (``ML_PLATFORM_PROFILE`` unset or ``local``), ``make dev-prod`` and the tests
check nothing. Messages name variables, never their values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PROFILE_ENV = "ML_PLATFORM_PROFILE"
PROFILES = ("local", "deployed")
#: Shortest accepted secret (passwords, secret keys, API keys, tokens). ``openssl rand -hex 24``
#: gives 48 characters.
MIN_SECRET_LENGTH = 12

#: Variables whose value is a secret: every rule applies, the length rule included.
_SECRET = re.compile(r"PASSWORD|PASSWD|SECRET|API_KEY|TOKEN", re.I)
#: Variables naming a principal (user name, access key id): not secret, but never a default.
_IDENTITY = re.compile(r"(?:^|_)(?:ROOT_USER|ACCESS_KEY|ACCESS_KEY_ID)$", re.I)
#: Secrets that may be empty, meaning "off" (the prediction API's key: empty = no key).
OPTIONAL = frozenset({"ML_PLATFORM_API_KEY"})
#: ``scheme://user:password@host``: the password of a connection URL is a secret as well.
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.I)

#: Values shipped as defaults by the images and tools of the stack, or found in every tutorial.
WELL_KNOWN = frozenset(
    {
        "minioadmin", "minio", "minio123", "minio1234", "minio12345", "minioadmin123",
        "postgres", "postgresql", "pgpassword", "password", "password1", "password123",
        "passw0rd", "p@ssw0rd", "pass", "admin", "admin123", "administrator", "root", "toor",
        "changeme", "change-me", "change_me", "secret", "secret123", "secretkey", "s3cret",
        "default", "test", "testing", "example", "guest", "user", "username", "letmein",
        "qwerty", "123456", "12345678", "123456789", "1234567890", "dagster", "mlflow",
        "feast", "api", "platform", "events", "none", "null", "empty", "token", "apikey",
        "mysecretpassword",  # the postgres image's documented example
    }
)  # fmt: skip
#: Placeholder shapes: ``change-me``, ``<password>``, ``xxx``, ``your-secret``, ``${VAR}``,
#: AWS's documented example keys, one character repeated.
_PLACEHOLDER = re.compile(
    r"""(?ix)
    change[\W_]*me | example | placeholder | replace[\W_]*me | fill[\W_]*in | ^todo$ | ^fixme$
    | ^<.*>$ | ^\$\{.*\}$ | ^\$[A-Z_]+$ | ^[.]{3,}$ | ^(.)\1*$
    | ^your[\W_]*(?:password|secret|key|token|user)
    | ^(.+?)\2+$
    """
)
#: What is left of a value once trailing digits and symbols are taken off (``password1234!``).
_TRAILING = "0123456789!@#$%^&*?._-"
#: Variables of this platform and its services: an empty one is a missing credential. Other
#: variables a container inherits (``GITHUB_TOKEN=`` ...) are skipped when empty.
_OWN = re.compile(r"^(?:ML_PLATFORM|DAGSTER|AWS|MLFLOW|MINIO|POSTGRES|PLATFORM|API|FEAST|EVENTS)_")


class InsecureCredentialsError(RuntimeError):
    """Raised by :func:`require_safe_environment`; the message names every offending variable."""


@dataclass(frozen=True)
class Problem:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} {self.reason}"


def is_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def is_identity(name: str) -> bool:
    return bool(_IDENTITY.search(name)) and not is_secret(name)


def checked_names(env: Mapping[str, str]) -> list[str]:
    """Every variable of ``env`` holding a secret or an identity, and every URL embedding a
    password, sorted (an optional secret left empty is not a credential in use)."""
    return sorted(
        name
        for name, value in env.items()
        if (is_secret(name) or is_identity(name) or _URL_PASSWORD.match(value or ""))
        and not (not value and (name in OPTIONAL or not _OWN.match(name)))
    )


def _url_password(value: str) -> str | None:
    if not _URL_PASSWORD.match(value):
        return None
    try:
        password = urlsplit(value).password
    except ValueError:
        return None
    return unquote(password) if password is not None else None


def weakness(value: str, *, secret: bool) -> str | None:
    """Why ``value`` is not acceptable as a credential, or None. ``secret`` adds the length
    rule (identities such as user names and access key ids may be short)."""
    stripped = value.strip()
    if not stripped:
        return "is empty"
    lowered = stripped.lower()
    if (
        lowered in WELL_KNOWN
        or lowered.rstrip(_TRAILING) in WELL_KNOWN
        or _PLACEHOLDER.search(stripped)
    ):
        return "is a well-known default or a placeholder"
    if secret and stripped.isdigit():
        return "is only digits"
    if stripped != value:
        return "starts or ends with whitespace"
    if secret and len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def check(
    env: Mapping[str, str], names: Iterable[str] | None = None, *, distinct: bool = False
) -> list[Problem]:
    """Every problem of the credentials in ``env``, one per variable (in name order).

    ``names``: the variables to check, each required (missing is a problem); default: every
    secret, identity and password-bearing URL present in ``env``. ``distinct``: two checked
    variables may not hold the same value (each credential belongs to one principal; in the
    env file, a password reused for two PostgreSQL roles or a secret key equal to a user name
    defeats the separation). Off inside a process, where a URL legitimately repeats a password.
    """
    wanted = sorted(set(names)) if names is not None else checked_names(env)
    problems: list[Problem] = []
    seen: dict[str, str] = {}  # value -> first variable holding it
    for name in wanted:
        if name not in env:
            problems.append(Problem(name, "is not set"))
            continue
        value = env[name]
        secret_value, label = value, name
        if not (is_secret(name) or is_identity(name)):
            url_password = _url_password(value)
            if url_password is None:  # a plain setting: nothing to check
                continue
            secret_value, label = url_password, f"{name} (the password in the URL)"
        if name in OPTIONAL and not value:
            continue
        reason = weakness(secret_value, secret=not is_identity(name))
        if reason:
            problems.append(Problem(label, reason))
        elif distinct and secret_value in seen:
            problems.append(Problem(label, f"has the same value as {seen[secret_value]}"))
        if secret_value:
            seen.setdefault(secret_value, name)
    return problems


def profile(env: Mapping[str, str]) -> str:
    """``local`` (the default) or ``deployed``; a typo is refused rather than read as local."""
    value = (env.get(PROFILE_ENV) or "local").strip().lower()
    if value not in PROFILES:
        raise ValueError(f"{PROFILE_ENV} must be one of {', '.join(PROFILES)}, not {value!r}")
    return value


def require_safe_environment(env: Mapping[str, str]) -> None:
    """In the deployed profile, raise :class:`InsecureCredentialsError` naming every default,
    placeholder, empty or short credential of ``env``; in the local profile do nothing."""
    if profile(env) != "deployed":
        return
    problems = check(env)
    if problems:
        raise InsecureCredentialsError(report(problems))


def report(problems: Iterable[Problem]) -> str:
    lines = [f"  {p}" for p in problems]
    return (
        "refusing to start the deployed profile with unsafe credentials "
        "(set each to a random value, e.g. `openssl rand -hex 24`):\n" + "\n".join(lines)
    )
