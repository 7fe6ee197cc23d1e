"""Security checks of the repository and of object keys (docs/security.md, docs/reliability.md).

1. No credential is committed: every git-tracked text file is scanned for AWS access key ids,
   private key blocks, ``password=``/``secret:``-style assignments of literal values, URLs with
   an embedded ``user:password@``, and Slack webhooks/tokens. Test-only values are allowlisted
   below, each with the reason. Planted strings prove the scanner flags what it should.
2. ``.env.example`` documents every environment variable the code and the deployment read.
3. Object keys (spaces, unicode, ``..``, absolute-looking, backslashes, NUL, very long) never
   escape their zone when turned into local paths, partition keys or derived keys, and an upload
   under such a key is ingested or quarantined with a reason, never crashing on an OSError.
"""

from __future__ import annotations

import fnmatch
import io
import json
import posixpath
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from ml_platform.lib import paths
from ml_platform.lib.store import LocalStore, S3Store
from ml_platform_tests.helpers import ingest_landed, ingest_versions, outcomes, tool_missing

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------
# 1. No credential in the repository
# ------------------------------------------------------------------------------------------------

_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_SLACK = re.compile(
    r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]+"
    r"|\bxox[abposr]-[0-9A-Za-z-]{10,}"
)
#: ``scheme://user:password@``: the password group is checked against the placeholders.
_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:(?P<value>[^\s/@'\"]+)@")
#: ``NAME = value`` / ``name: value`` / ``name="value"`` where NAME ends in a secret-ish word.
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?<![\w${.-])  # a whole name: not the VAR of a shell ${VAR:?message}
    (?P<name>[a-z0-9_.-]*(?:password|passwd|secret|secret[_-]?key|token|api[_-]?key|access[_-]?key(?:[_-]?id)?))
    ["']?\s*(?::|=)\s*
    (?P<quote>["']?)(?P<value>[^\s"'`,;)}\]]*)
    """
)
#: Values that are not secrets: empty, elided, placeholders, references to another variable.
_PLACEHOLDER = re.compile(
    r"""(?ix)^(?:
        | \.\.\.+ | change-?me\S* | <[^>]*> | x{3,} | \*+ | none | null | true | false | =
        | pw | pass | password  # as in the docs' postgresql://user:password@host
        | \$.* | \{.* | %\(.* | .*\$\{.* | .*\{env:.*
    )$"""
)

#: Test-only literal values, allowed only in the files named. Nothing here is a real credential.
ALLOWED: dict[tuple[str, str], str] = {
    # DSNs that are parsed or pointed at a closed port, never connected to; "s3cret" is the
    # value the tests check is hidden from reprs and descriptions.
    ("ml_platform_tests/defs/test_notifications.py", "p"): "dummy DSN in unit tests",
    ("ml_platform_tests/defs/test_notifications.py", "s3cret"): "dummy DSN in unit tests",
    # Dummy S3 keys of a client pointed at a closed port (store-down test).
    ("ml_platform_tests/defs/test_sensor_s3.py", "x"): "dummy key, closed port",
    ("ml_platform_tests/defs/test_sensor_s3.py", "y"): "dummy key, closed port",
    # API keys of the prediction API tests (the right one, a wrong one, a non-ASCII one).
    ("ml_platform_tests/serving/test_serving.py", "s3cret-for-tests"): "API key of the API tests",
    ("ml_platform_tests/serving/test_serving.py", "nope"): "wrong API key of the API tests",
    ("ml_platform_tests/serving/test_serving.py", "s3crét"): "non-ASCII API key of the API tests",
    # The API key the compose test passes to `docker compose config`.
    ("ml_platform_tests/deploy/test_docker_compose.py", "test-api-key"): "compose rendering test",
    # The hand-written environment of the settings tests (values checked to map and to stay
    # out of reprs).
    ("ml_platform_tests/test_settings.py", "platform"): "settings test environment",
    ("ml_platform_tests/test_settings.py", "a-secret-key-for-tests"): "settings test environment",
    ("ml_platform_tests/test_settings.py", "an-api-key-for-tests"): "settings test environment",
    ("ml_platform_tests/test_settings.py", "for-the-child-only"): "settings test environment",
    # Prose in a comment: "key postgresql-password: the instance database password".
    ("docker/k8s/values.yaml", "the"): "comment, not a value",
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.value[:60]!r}"


def _allowed(path: str, value: str) -> bool:
    return any(fnmatch.fnmatch(path, p) and value == v for p, v in ALLOWED)


def scan_text(path: str, text: str) -> list[Finding]:
    """Every credential-looking string of one file (allowlisted test values left out)."""
    findings = []
    is_python = path.endswith(".py")
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, kind in (
            (_AWS_KEY_ID, "AWS access key id"),
            (_PRIVATE_KEY, "private key block"),
            (_SLACK, "Slack webhook or token"),
        ):
            findings += [Finding(path, number, kind, m.group()) for m in pattern.finditer(line)]
        for m in _URL_CREDENTIALS.finditer(line):
            value = m.group("value")
            if not _PLACEHOLDER.match(value) and not _allowed(path, value):
                findings.append(Finding(path, number, "password in URL", m.group()))
        for m in _ASSIGNMENT.finditer(line):
            value = m.group("value")
            # In Python an unquoted value is a name (a variable, a call, a type), not a literal.
            if (is_python and not m.group("quote")) or _PLACEHOLDER.match(value):
                continue
            if not _allowed(path, value):
                findings.append(Finding(path, number, f"literal {m.group('name')}", value))
    return findings


def tracked_text_files() -> list[tuple[str, str]]:
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        tool_missing(f"not a git checkout ({exc})")
    files = []
    for name in listing.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        files.append((name, data.decode("utf-8", errors="replace")))
    return files


SELF = Path(__file__).relative_to(REPO).as_posix()


def test_no_credential_in_any_tracked_file():
    files = tracked_text_files()
    assert len(files) > 50, "git ls-files returned too few files: the scan would prove nothing"
    assert any(name == ".env.example" for name, _ in files)
    # This file is left out: it holds the planted credentials that prove the scanner flags them
    # (test_the_scanner_flags_planted_credentials) and the names of the variables it looks for.
    findings = [f for name, text in files if name != SELF for f in scan_text(name, text)]
    assert not findings, "credentials committed:\n" + "\n".join(map(str, findings))


# Planted strings are assembled at run time, so this file itself never matches the scanner.
_PLANTED = {
    "AWS access key id": "aws_key = " + "AKIA" + "Z7Q3" * 4,
    "AWS STS key id": "key: " + "ASIA" + "ABCDEFGHIJKLMNOP",
    "private key block": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
    "RSA private key block": "-----BEGIN " + "RSA PRIVATE KEY-----",
    "Slack webhook": "url = 'https://hooks.slack" + ".com/services/T000/B000/XXXXabcd1234'",
    "Slack token": "SLACK=" + "xoxb-" + "1234567890-abcdef",
    "URL with password": "DSN=postgresql://admin:" + "s3cr3tPa55@db.internal:5432/prod",
    "env password": "POSTGRES_PASS" + "WORD=hunter2hunter2",
    "yaml secret": "  aws_secret_access" + "_key: wJalrXUtnFEMIK7MDENG",
    "python secret": 'client(aws_secret_access_key="' + 'wJalrXUtnFEMIK7MDENG")',
    "API key": 'headers = {"X-Api-Key": "' + 'live-1f2e3d4c5b6a"}',
    "test value outside its file": 'password = "test' + '-only"',
}


@pytest.mark.parametrize("text", _PLANTED.values(), ids=_PLANTED.keys())
def test_the_scanner_flags_planted_credentials(text):
    assert scan_text("docs/planted.py" if "(" in text else "docs/planted.env", text)


@pytest.mark.parametrize(
    "text",
    [
        "MINIO_ROOT_PASSWORD=",
        "# AWS_SECRET_ACCESS_KEY=change-me",
        "ML_PLATFORM_EVENTS_URL=postgresql://postgres:change-me@127.0.0.1:5432/events",
        'POSTGRES_PASSWORD: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"',
        "      password: {env: DAGSTER_PG_PASSWORD}",
        "secret_access_key=_env_or_none('AWS_SECRET_ACCESS_KEY', env),",
        "AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...",
        'url = f"postgresql+psycopg://postgres:{self.password}@127.0.0.1/feast"',
        "generatePostgresqlPasswordSecret: false",
    ],
)
def test_the_scanner_leaves_placeholders_and_references_alone(text):
    path = "ml_platform/x.py" if "(" in text or "{self" in text else "docs/x.env"
    assert scan_text(path, text) == []


def test_allowlisted_test_values_are_only_allowed_in_their_file():
    line = 'aws_secret_access_key="x",'
    assert scan_text("ml_platform_tests/defs/test_sensor_s3.py", line) == []
    assert scan_text("ml_platform/lib/store.py", line)


# ------------------------------------------------------------------------------------------------
# 2. .env.example documents every environment variable read
# ------------------------------------------------------------------------------------------------

_PY_READS = re.compile(
    # setdefault too: the platform's default yields to a value the user sets.
    r"""(?:environ\.get|environ\.setdefault|getenv|\benv\.get|EnvVar|_env_or_none)"""
    r"""\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    r"""|(?:environ|\benv)\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]"""
)
#: Module constants naming a variable read through them (``YAML_ENV = "FEAST_FS_YAML_FILE_PATH"``).
_PY_ENV_CONSTANT = re.compile(r"""^[A-Z_]*ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", re.M)
_DAGSTER_YAML_ENV = re.compile(r"\{\s*env:\s*([A-Z][A-Z0-9_]*)\s*\}")
_DOLLAR_BRACE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")

#: Read by the code but not the platform's to document (none at the moment: prefer documenting).
NOT_DOCUMENTED: dict[str, str] = {}


def env_reads_of_python(text: str) -> set[str]:
    names = {a or b for a, b in _PY_READS.findall(text)}
    return names | set(_PY_ENV_CONSTANT.findall(text))


def env_vars_read() -> dict[str, set[str]]:
    """Each variable read, with the files reading it."""
    found: dict[str, set[str]] = {}

    def add(names: set[str], path: Path) -> None:
        for name in names:
            found.setdefault(name, set()).add(path.relative_to(REPO).as_posix())

    for path in sorted((REPO / "ml_platform").rglob("*.py")):
        add(env_reads_of_python(path.read_text()), path)
    add(
        set(_DAGSTER_YAML_ENV.findall((REPO / "docker" / "dagster.yaml").read_text())),
        REPO / "docker" / "dagster.yaml",
    )
    for path in [REPO / "docker/compose.yaml", *sorted((REPO / "feature_repo").rglob("*.yaml"))]:
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )  # comments say "every ${VAR} must be set"
        add(set(_DOLLAR_BRACE.findall(code)), path)
    return found


def documented_in_env_example() -> set[str]:
    """``NAME=`` lines of .env.example, set or commented out (``# NAME=example``)."""
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))


def test_the_env_collector_finds_reads_in_every_form():
    snippet = (
        'a = os.environ.get("VAR_A")\nb = os.getenv(\'VAR_B\', "x")\nc = env.get("VAR_C", 1)\n'
        'd = dg.EnvVar("VAR_D")\ne = os.environ["VAR_E"]\nYAML_ENV = "VAR_F"\n'
        'g = _env_or_none("VAR_G", env)\nos.environ.setdefault("VAR_H", "x")\n'
    )
    assert env_reads_of_python(snippet) == {f"VAR_{c}" for c in "ABCDEFGH"}
    assert _DAGSTER_YAML_ENV.findall("password: {env: DAGSTER_PG_PASSWORD}") == [
        "DAGSTER_PG_PASSWORD"
    ]
    assert _DOLLAR_BRACE.findall(
        'X: "${POSTGRES_PASSWORD:?required}" ${ML_PLATFORM_API_KEY:-}'
    ) == [
        "POSTGRES_PASSWORD",
        "ML_PLATFORM_API_KEY",
    ]
    read = env_vars_read()
    # Each source is really read: a regex broken for one of them fails here, not silently.
    for name, source in {
        "ML_PLATFORM_STORE_URL": "ml_platform/settings.py",
        "ML_PLATFORM_API_KEY": "ml_platform/settings.py",
        "FEAST_FS_YAML_FILE_PATH": "ml_platform/settings.py",
        "AWS_SECRET_ACCESS_KEY": "ml_platform/defs/resources.py",
        "MLFLOW_DISABLE_TELEMETRY": "ml_platform/settings.py",
        "DAGSTER_PG_PASSWORD": "docker/dagster.yaml",
        "MINIO_ROOT_PASSWORD": "docker/compose.yaml",
        "ML_PLATFORM_FEAST_PG_SSLMODE": "feature_repo/profiles/postgres.yaml",
    }.items():
        assert source in read.get(name, set()), (name, source)


def test_env_example_documents_every_variable_read():
    read = env_vars_read()
    missing = {
        name: sorted(files)
        for name, files in read.items()
        if name not in documented_in_env_example() and name not in NOT_DOCUMENTED
    }
    assert not missing, f".env.example does not document: {missing}"


def test_env_example_holds_no_value_for_any_credential():
    """Section 1 is left empty on purpose (compose refuses an unedited copy); examples of the
    other sections use ``change-me``. The scanner above finds any other literal too."""
    text = (REPO / ".env.example").read_text()
    for name in ("MINIO_ROOT_PASSWORD", "PLATFORM_S3_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert re.search(rf"^{name}=$", text, re.M), name
    assert scan_text(".env.example", text) == []


# ------------------------------------------------------------------------------------------------
# 3. Object keys never escape their zone (scenario 10)
# ------------------------------------------------------------------------------------------------

ZONE = "landing/readings/"
LONG_SEGMENT = "L" * 251 + ".csv"  # 255 bytes: the longest name a local filesystem holds
LONG_UNICODE = "é" * 127 + ".csv"  # 258 bytes in UTF-8 (131 characters)

#: Keys a local folder can hold as the same object: written and read back under the zone.
LOCAL_OK = [
    "with space.csv",
    "ünïcödé 😀 名前.csv",
    "a\\..\\..\\b.csv",  # backslashes are ordinary characters on POSIX: one file name
    "C:\\Windows\\win.ini",
    "...csv",
    "..hidden",
    "dir/with space/../x.csv".replace("/../", "/.../"),  # "..." is a name, not a parent
    LONG_SEGMENT,
    "/".join(["d" * 200] * 5) + "/f.csv",  # a 1000-byte key in 200-byte folders
]
#: Keys S3 accepts that a folder would resolve elsewhere or cannot hold: refused, nothing written.
LOCAL_REFUSED = [
    "../escape.csv",
    "../../../../../../tmp/escape.csv",
    "sub/../../labels/x.csv",
    "./x.csv",
    "..",
    "nul\x00.csv",
    "L" * 300 + ".csv",
    LONG_UNICODE,
]
#: Everything S3 allows in a key below a landing prefix (up to 1024 bytes in all).
S3_KEYS = [
    *LOCAL_OK,
    *LOCAL_REFUSED,  # not "": the landing prefix itself is a folder marker the sensors skip
    ".",
    "/etc/passwd",
    "//double//slash.csv",
    "trailing/",
    "ctrl\x01\x1f\x7f.csv",
    "percent%2F..%2F%00.csv",
    "at@sign@etag.csv",
    "x" * (1024 - len(ZONE)),
]


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize("relative", LOCAL_OK, ids=range(len(LOCAL_OK)))
def test_local_store_keeps_odd_keys_as_one_object_inside_its_zone(tmp_path, relative):
    store = LocalStore(tmp_path / "lake")
    key = ZONE + relative
    store.put_bytes(b"payload", key)
    [written] = _files_under(tmp_path)
    assert written.resolve().is_relative_to((tmp_path / "lake" / ZONE).resolve())
    assert written.relative_to(store.root).as_posix() == key  # the same key, not an alias
    assert [o.key for o in store.list(ZONE)] == [key]
    assert store.read_bytes(key) == b"payload" and store.exists(key)
    with store.local_copy(key) as local:
        assert local == written
    store.delete(key)
    assert _files_under(tmp_path) == []


@pytest.mark.parametrize("relative", LOCAL_REFUSED, ids=range(len(LOCAL_REFUSED)))
def test_local_store_refuses_keys_it_cannot_hold_with_a_clear_error(tmp_path, relative):
    store = LocalStore(tmp_path / "lake")
    (tmp_path / "src.csv").write_bytes(b"payload")
    before = _files_under(tmp_path)
    key = ZONE + relative
    for action in (
        lambda: store.put_bytes(b"payload", key),
        lambda: store.put_file(tmp_path / "src.csv", key),
        lambda: store.put_file(tmp_path / "src.csv", key, move=True),
        lambda: store.read_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError, match="object key"):  # not an OSError, not a write
            action()
    assert _files_under(tmp_path) == before


def test_local_store_refuses_absolute_keys(tmp_path):
    store = LocalStore(tmp_path / "lake")
    inside = (store.root / "landing" / "x.csv").as_posix()  # absolute but inside the root
    for key in ("/etc/passwd", inside):
        with pytest.raises(ValueError, match="object key"):
            store.put_bytes(b"x", key)
    assert _files_under(tmp_path) == []


def _assert_single_name(name: str) -> None:
    assert name not in {"", ".", ".."} and "/" not in name and "\\" not in name
    assert "\x00" not in name and not re.search(r"[\x00-\x1f\x7f]", name)
    assert len(name.encode()) <= 255 - len(".error.json")


@pytest.mark.parametrize("relative", S3_KEYS, ids=range(len(S3_KEYS)))
def test_derived_keys_of_any_s3_key_stay_in_their_zone(tmp_path, relative):
    partition = paths.partition_key(relative, '"0123abcd"')
    assert paths.split_partition_key(partition) == (relative, "0123abcd")  # exact round trip
    assert "..." not in partition and not re.search(r"[\x00-\x1f\x7f]", partition)
    file_id = paths.file_id(partition)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", file_id)
    quarantine = "landing/quarantine/readings/"
    derived = [
        (quarantine, paths.quarantine_object("readings", file_id, relative)),
        (quarantine, paths.quarantine_record("readings", file_id, relative)),
        ("lake/bronze/readings/", paths.bronze_part("readings", "2024-03-01", file_id)),
        ("lake/_ledger/readings/", paths.ledger_object("readings", file_id)),
        ("results/scored/", paths.scored_object(relative)),
    ]
    store = LocalStore(tmp_path / "lake")
    for zone, key in derived:
        assert key.startswith(zone) and posixpath.normpath(key) == key, key
        for segment in key.split("/"):
            _assert_single_name(segment)
        store.put_bytes(b"x", key)  # a valid local path: no ValueError, no OSError
    written = {p.relative_to(store.root).as_posix() for p in _files_under(tmp_path)}
    assert written == {key for _, key in derived}
    # The quarantined copy and its record sit in the object version's own folder.
    for _, key in derived[:2]:
        assert posixpath.dirname(key) == f"{quarantine}{file_id}"


def test_dagster_accepts_the_version_id_of_any_s3_key():
    """Version ids are scoring partitions (one per file) and the raw assets' batch run config."""
    from ml_platform.definitions import defs

    versions = [paths.partition_key(k, "0123abcd") for k in S3_KEYS]
    assert len(set(versions)) == len(S3_KEYS)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("scoring_files", versions)
        assert set(instance.get_dynamic_partitions("scoring_files")) == set(versions)
    for dataset in ("readings", "labels"):
        job = defs.resolve_job_def(f"ingest_{dataset}_job")
        config = {"ops": {f"raw_{dataset}": {"config": {"versions": versions, "files": S3_KEYS}}}}
        validated = dg.validate_run_config(job, config)
        assert validated["ops"][f"raw_{dataset}"]["config"]["versions"] == versions
        assert validated["ops"][f"raw_{dataset}"]["config"]["files"] == S3_KEYS


class _DownloadOnlyClient:
    """The calls S3Store.local_copy (``download_file``) and fetch (``get_object``, whose body the
    store writes itself) make; writes go where the store asks."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        Path(filename).write_bytes(b"object")  # raises OSError on an invalid local name
        self.paths.append(Path(filename))

    def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 - boto3's names
        return {"Body": io.BytesIO(b"object")}


@pytest.mark.parametrize(
    "relative",
    ["..", ".", "L" * 300 + ".csv", "ü" * 400, "nul\x00.csv", "a\\b.csv", "with space.csv"],
    ids=["dotdot", "dot", "300-bytes", "800-bytes-unicode", "nul", "backslash", "space"],
)
def test_s3_downloads_of_odd_keys_stay_in_their_temporary_folder(tmp_path, relative):
    client = _DownloadOnlyClient()
    store = S3Store("bucket", "", client)
    with store.local_copy(ZONE + relative) as local:
        assert local.read_bytes() == b"object"
        assert local.parent.name.startswith("ml-platform-")
        _assert_single_name(local.name)
    [fetched] = store.fetch([ZONE + relative], tmp_path / "into")
    assert fetched.parent == tmp_path / "into" and fetched.read_bytes() == b"object"
    _assert_single_name(fetched.name)


GOOD = (
    b"timestamp,sensor_id,temperature,vibration,pressure,current\n"
    b"2024-03-01T10:00:00Z,s1,50,2,5,20\n"
    b"2024-03-02T10:00:00Z,s2,51,2,5,20\n"
)
BAD = b"not,the,contract\n1,2,3\n"  # required columns missing: rejected
BAD_REASON = "missing_columns"
GOOD_DAYS = ("2024-03-01", "2024-03-02")


def _land_and_ingest(instance, store: LocalStore, relative: str, body: bytes):
    key = paths.landing_object("readings", relative)
    store.put_bytes(body, key)
    return ingest_landed(instance, relative, store.etag(key))


def _rejected_not_crashed(result, version: str) -> None:
    """The run succeeded (an OSError or any other error would fail its step) and the version
    was quarantined for its contract violation."""
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert outcomes(result) == {version: "quarantined"}
    [row] = (
        result.asset_materializations_for_node("raw_readings")[0]
        .metadata["file_outcomes"]
        .value.records
    )
    assert row.data["reason"] == BAD_REASON
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN


ODD_LOCAL_UPLOADS = [
    ("ünïcödé 😀 plant a.csv", GOOD),
    ("a\\..\\..\\b.csv", GOOD),
    ("...csv", BAD),
    ("sub dir/ünï\\..\\x.csv", BAD),
    (LONG_SEGMENT, BAD),  # its .error.json would be 266 bytes: the record name is hashed
    (LONG_SEGMENT.replace("L", "G"), GOOD),
]


@pytest.mark.parametrize(
    ("relative", "body"),
    ODD_LOCAL_UPLOADS,
    ids=["unicode-good", "backslash-good", "dots-bad", "unicode-bad", "255-bytes-bad", "255-good"],
)
def test_ingest_of_an_odd_key_is_ingested_or_quarantined_inside_its_zones(
    tmp_path, store, instance, relative, body
):
    version, result = _land_and_ingest(instance, store, relative, body)
    file_id = paths.file_id(version)
    written = [p.relative_to(store.root).as_posix() for p in _files_under(tmp_path / "lake")]
    landed = paths.landing_object("readings", relative)
    ledger_key = paths.ledger_object("readings", file_id)
    entry = json.loads(store.read_bytes(ledger_key))
    assert entry["version"] == version
    if body is GOOD:
        assert result.success and outcomes(result) == {version: "ingested"}
        bronze = [paths.bronze_part("readings", day, file_id) for day in GOOD_DAYS]
        assert sorted(written) == sorted([landed, ledger_key, *bronze])
        assert all(k.startswith("lake/bronze/readings/date=") for k in bronze)
        assert (entry["outcome"], sorted(entry["parts"])) == ("ingested", sorted(bronze))
    else:
        _rejected_not_crashed(result, version)
        copy = paths.quarantine_object("readings", file_id, relative)
        record_key = paths.quarantine_record("readings", file_id, relative)
        assert sorted(written) == sorted([landed, copy, record_key, ledger_key])
        record = json.loads(store.read_bytes(record_key))
        assert record["reason"] == BAD_REASON and record["partition_key"] == version
        assert store.read_bytes(copy) == body
        assert (entry["outcome"], entry["reason"], entry["parts"]) == (
            "quarantined",
            BAD_REASON,
            [],
        )


def test_odd_keys_in_one_batch_each_end_inside_their_own_zones(tmp_path, store, instance):
    """The landing sensor batches uploads: the odd keys above in one run, each version with the
    outcome it has alone and its outputs in its own folders."""
    versions = []
    for relative, body in ODD_LOCAL_UPLOADS:
        key = paths.landing_object("readings", relative)
        store.put_bytes(body, key)
        versions.append(paths.partition_key(relative, store.etag(key)))
    result = ingest_versions(instance, "readings", versions)
    assert result.success
    assert outcomes(result) == {
        v: "ingested" if body is GOOD else "quarantined"
        for v, (_, body) in zip(versions, ODD_LOCAL_UPLOADS, strict=True)
    }
    expected = set()
    for version, (relative, body) in zip(versions, ODD_LOCAL_UPLOADS, strict=True):
        file_id = paths.file_id(version)
        expected |= {
            paths.landing_object("readings", relative),
            paths.ledger_object("readings", file_id),
        }
        if body is GOOD:
            expected |= {paths.bronze_part("readings", day, file_id) for day in GOOD_DAYS}
        else:
            expected |= {
                paths.quarantine_object("readings", file_id, relative),
                paths.quarantine_record("readings", file_id, relative),
            }
            assert store.read_bytes(paths.quarantine_object("readings", file_id, relative)) == body
    written = {p.relative_to(store.root).as_posix() for p in _files_under(tmp_path / "lake")}
    assert written == expected


@pytest.mark.integration
@pytest.mark.parametrize(
    ("relative", "body"),
    [
        ("../../escape.csv", BAD),
        ("sub/./..", BAD),
        ("L" * 300 + ".csv", BAD),  # S3 holds it; no local folder can
        ("ü" * 300 + ".csv", GOOD),
    ],
    ids=["dotdot-bad", "dot-segments-bad", "300-bytes-bad", "604-bytes-unicode-good"],
)
def test_s3_only_keys_are_ingested_or_quarantined_under_their_literal_key(
    s3_server, s3_env, instance, relative, body
):
    """Keys a folder cannot hold, on the real S3 API: downloaded under a safe local name, and the
    outputs land under their zone prefixes with the key kept literally (no ``..`` resolved)."""
    client, bucket = s3_server.client(), s3_env["ML_PLATFORM_STORE_URL"][5:]
    landed = paths.landing_object("readings", relative)
    etag = client.put_object(Bucket=bucket, Key=landed, Body=body)["ETag"]
    version, result = ingest_landed(instance, relative, etag)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    file_id = paths.file_id(version)
    assert landed in keys  # the key as uploaded, not normalised
    ledger_key = paths.ledger_object("readings", file_id)
    entry = json.loads(client.get_object(Bucket=bucket, Key=ledger_key)["Body"].read())
    others = [k for k in keys if k not in (landed, ledger_key)]
    if body is GOOD:
        assert result.success and outcomes(result) == {version: "ingested"}
        assert others == sorted(paths.bronze_part("readings", d, file_id) for d in GOOD_DAYS)
        assert entry["outcome"] == "ingested"
    else:
        _rejected_not_crashed(result, version)
        copy = paths.quarantine_object("readings", file_id, relative)
        record = paths.quarantine_record("readings", file_id, relative)
        assert others == sorted([copy, record])
        record_data = json.loads(client.get_object(Bucket=bucket, Key=record)["Body"].read())
        assert record_data["reason"] == BAD_REASON and record_data["partition_key"] == version
        assert client.get_object(Bucket=bucket, Key=copy)["Body"].read() == body
        assert entry["outcome"] == "quarantined"
