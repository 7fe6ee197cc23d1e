"""Object keys of every zone, in one place.

Keys are relative to the store root (a local folder or ``s3://bucket/prefix``). Every asset builds
its keys here so that the layout shown in the README and in metadata cannot drift from the code.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote


def project_root() -> Path:
    """The source checkout when running from one (``make dev``), else the working directory
    (the Docker image runs from /opt/dagster/app, where feature_repo/ is copied)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def default_store_url() -> str:
    """The embedded object store: ``.lake/`` of the project."""
    return (project_root() / ".lake").as_uri()


QUARANTINE = "landing/quarantine/"
BRONZE = "lake/bronze/"

#: Landing prefix of each dataset a user can drop files into.
LANDING_PREFIXES = {
    "readings": "landing/readings/",
    "labels": "landing/labels/",
    "scoring": "landing/scoring/",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape(relative_key: str) -> str:
    """Make an object key a valid Dagster partition key, reversibly.

    Dagster rejects ``...`` and control characters in partition keys, and one such key would fail
    every sensor tick; S3 allows both. ``%`` is escaped first so that unquoting is exact.
    """
    text = relative_key.replace("%", "%25")
    text = _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", text)
    while "..." in text:
        text = text.replace("...", "..%2E", 1)
    return text


def partition_key(relative_key: str, etag: str) -> str:
    """Dynamic partition key of one object version: its key below the landing prefix and ETag.

    A re-upload with changed content has a new ETag and so becomes a new partition; the same
    bytes re-put keep their key and are recognised (the run key is the same).
    """
    return f"{_escape(relative_key)}@{etag.strip(chr(34))}"


def split_partition_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`partition_key`: ``(relative_key, etag)``."""
    relative_key, sep, etag = key.rpartition("@")
    if not sep or not relative_key or not etag:
        raise ValueError(f"not a landing partition key (expected '<key>@<etag>'): {key!r}")
    return unquote(relative_key), etag


def file_id(partition: str) -> str:
    """A short, path-safe, unique id of one landed object version, readable by its file name."""
    relative_key, _ = split_partition_key(partition)
    stem = relative_key.rsplit("/", 1)[-1]
    for suffix in (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq"):
        stem = stem.removesuffix(suffix)
    slug = _UNSAFE.sub("-", stem).strip("-.")[:48] or "file"
    digest = hashlib.sha256(partition.encode()).hexdigest()[:12]
    return f"{slug}-{digest}"


def landing_object(dataset: str, relative_key: str) -> str:
    return LANDING_PREFIXES[dataset] + relative_key


def bronze_day_prefix(dataset: str, day: str) -> str:
    return f"{BRONZE}{dataset}/date={day}/"


def bronze_day(key: str) -> str | None:
    """The day of a bronze part (``.../date=YYYY-MM-DD/file=...parquet``), None for other keys."""
    match = re.search(r"/date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$", key)
    return match.group(1) if match else None


def bronze_part(dataset: str, day: str, file_identifier: str) -> str:
    """``lake/bronze/<dataset>/date=YYYY-MM-DD/file=<file_id>.parquet``: one upload's rows of one day."""
    return f"{bronze_day_prefix(dataset, day)}file={file_identifier}.parquet"


#: Longest file name kept as is in a derived key: local filesystems allow 255 bytes per path
#: component (S3 allows 1024-byte keys), and ``.error.json`` or a temporary prefix is added to it.
MAX_NAME_BYTES = 200


def local_name(name: str) -> str:
    """``name`` (the last segment of an object key) as one safe file name: unchanged when it is
    one, else a slug of it with a hash (so two names never collide) and its short suffix.

    Unsafe are ``""``, ``.``, ``..``, control characters (NUL), backslashes, and names longer
    than :data:`MAX_NAME_BYTES` bytes: S3 accepts all of them in a key, a local folder does not,
    or reads them as another place.
    """
    if (
        name not in {"", ".", ".."}
        and not _CONTROL.search(name)
        and "\\" not in name
        and len(name.encode()) <= MAX_NAME_BYTES
    ):
        return name
    suffix = "".join(Path(name).suffixes[-2:]) if name not in {".", ".."} else ""
    if len(suffix) > 16 or _UNSAFE.search(suffix):
        suffix = ""
    stem = _UNSAFE.sub("-", name.removesuffix(suffix)).strip("-.")[:64] or "file"
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:12]}{suffix}"


def quarantine_object(dataset: str, file_identifier: str, relative_key: str) -> str:
    """Where a rejected upload is copied: one folder per object version, original name kept
    when it is a safe file name (else :func:`local_name`), so the copy stays in its folder."""
    name = local_name(relative_key.rsplit("/", 1)[-1])
    return f"{QUARANTINE}{dataset}/{file_identifier}/{name}"


def quarantine_record(dataset: str, file_identifier: str, relative_key: str) -> str:
    """The ``.error.json`` written beside the quarantined copy."""
    return quarantine_object(dataset, file_identifier, relative_key) + ".error.json"


SILVER_CHUNKS = "lake/silver/sensor_chunks/"
GOLD_AGGREGATES = "lake/gold/daily_aggregates/"


def chunks_day_prefix(day: str) -> str:
    return f"{SILVER_CHUNKS}date={day}/"


def chunk_object(day: str, sensor_file: str) -> str:
    """``lake/silver/sensor_chunks/date=D/sensor_id=S.parquet``: one sensor's readings of one day.

    ``sensor_file`` is the ``sensor_id=S`` name DuckDB gives the partition (special characters
    escaped), so the key is safe whatever the sensor id.
    """
    return f"{chunks_day_prefix(day)}{sensor_file}.parquet"


def aggregates_day_prefix(day: str) -> str:
    return f"{GOLD_AGGREGATES}date={day}/"


def aggregates_object(day: str) -> str:
    """``lake/gold/daily_aggregates/date=D/aggregates.parquet``: one row per sensor of one day."""
    return f"{aggregates_day_prefix(day)}aggregates.parquet"


RUN_INPUTS = "lake/_inputs/"
LEDGER = "lake/_ledger/"


def ledger_object(dataset: str, file_identifier: str) -> str:
    """``lake/_ledger/<dataset>/<file_id>.json``: what became of one landed object version
    (ingested into which bronze parts, or quarantined with which reason), by which run."""
    return f"{LEDGER}{dataset}/{file_identifier}.json"


def landing_day(last_modified: datetime) -> str:
    """The landing-day partition of an object version: the UTC day it was written."""
    return last_modified.astimezone(UTC).date().isoformat()


def run_inputs_object(asset: str, run_id: str) -> str:
    """``lake/_inputs/<asset>/run=<id>.json``: what one run of a lakehouse asset read, per day,
    recorded by the asset so that its checks judge those inputs and not a later listing."""
    return f"{RUN_INPUTS}{asset}/run={run_id}.json"


ML = "lake/ml/"


def _training_folder(week: str, rejected_run: str | None) -> str:
    folder = f"{ML}training_sets/week={week}/"
    return folder + f"rejected/run={rejected_run}/" if rejected_run else folder


def training_set_object(week: str, rejected_run: str | None = None) -> str:
    """``lake/ml/training_sets/week=W/training_set.parquet``: the rows and feature values used.
    A set that failed a blocking check goes to ``week=W/rejected/run=<id>/`` instead."""
    return _training_folder(week, rejected_run) + "training_set.parquet"


def training_manifest_object(week: str, rejected_run: str | None = None) -> str:
    """The manifest beside a training set: inputs, their data versions, registry hash, code."""
    return _training_folder(week, rejected_run) + "manifest.json"


def model_holdout_object(model: str, week: str, run_id: str) -> str:
    """``lake/ml/<model>/week=W/run=<id>/holdout.parquet``: the frozen holdout a version is judged
    on (per run, so re-training a week never changes an earlier version's holdout)."""
    return f"{ML}{model}/week={week}/run={run_id}/holdout.parquet"


def promotion_ledger_object(model: str) -> str:
    """``lake/ml/<model>/promotions.json``: every champion decision, oldest first."""
    return f"{ML}{model}/promotions.json"


RESULTS = "results/"


def predictions_object(day: str, suffix: str = "parquet") -> str:
    """``results/predictions/date=D/predictions.<parquet|csv>``: one row per sensor of day D."""
    return f"{RESULTS}predictions/date={day}/predictions.{suffix}"


def scored_object(relative_key: str) -> str:
    """``results/scored/<name>.csv`` for a request uploaded as ``landing/scoring/<name>[.csv]``.

    Sub-folders are kept; ``..`` and other unsafe characters are replaced and over-long names
    cut, so the key stays inside the zone and each name fits a local filesystem.
    """
    parts = [
        _UNSAFE.sub("-", p).strip("-.")[:MAX_NAME_BYTES] or "file"
        for p in relative_key.split("/")
        if p
    ]
    name = "/".join(parts).removesuffix(".csv")
    if name + ".csv" != relative_key.strip("/") and name != relative_key.strip("/"):
        # The name was changed to be safe: a short hash keeps different uploads apart.
        name += "-" + hashlib.sha256(relative_key.encode()).hexdigest()[:8]
    return f"{RESULTS}scored/{name}.csv"


def drift_report_object(day: str) -> str:
    """``lake/ml/monitoring/drift/date=D/drift.json``: the day's drift report and its gate."""
    return f"{ML}monitoring/drift/date={day}/drift.json"


def label_queue_object(day: str) -> str:
    """``results/to_label/date=D/to_label.csv``: the least confident sensor-days, to be labelled."""
    return f"{RESULTS}to_label/date={day}/to_label.csv"


def live_performance_object(day: str) -> str:
    return f"{ML}monitoring/live_performance/date={day}/performance.json"


def alert_marker_object(day: str, key: str) -> str:
    """One marker per alert sent (deduplication per asset, partition and day)."""
    return f"{ML}monitoring/alerts/date={day}/{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
