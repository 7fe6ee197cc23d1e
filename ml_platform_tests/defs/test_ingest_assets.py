"""``raw_readings``/``raw_labels`` materialized against the real S3 API: one run per batch of
landed object versions, bronze parts, quarantine and the ledger of what became of each version."""

import hashlib
import io
import json
import time
import uuid
from datetime import UTC, datetime
from importlib import resources

import dagster as dg
import pandas as pd
import pytest
import yaml

from ml_platform.defs.ingest.assets import raw_labels, raw_readings
from ml_platform.defs.resources import build_resources
from ml_platform.lib import paths
from ml_platform_tests.helpers import READINGS_HEADER as HEADER
from ml_platform_tests.helpers import table_column, table_rows
from ml_platform_tests.servers import S3Server, free_port

pytestmark = pytest.mark.integration
THREE_DAYS = HEADER + (
    "2024-03-01T10:00:00Z,s1,50,2,5,20\n"
    "2024-03-02T10:00:00Z,s1,51,2,5,20\n"
    "2024-03-02T10:00:00Z,s2,52,2,5,20\n"
    "2024-03-03T23:59:59Z,s2,53,2,5,20\n"
)
ASSETS = {"readings": raw_readings, "labels": raw_labels}
CHECK = "landed_files_pass_their_contract"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def bucket_of(s3_env) -> str:
    return s3_env["ML_PLATFORM_STORE_URL"][5:]


def land(s3_server, s3_env, dataset: str, name: str, body: bytes) -> str:
    """Upload to the landing zone; return the version id the sensor would give it."""
    client = s3_server.client()
    key = paths.landing_object(dataset, name)
    response = client.put_object(Bucket=bucket_of(s3_env), Key=key, Body=body)
    return paths.partition_key(name, response["ETag"])


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def run_batch(
    instance,
    dataset: str = "readings",
    *,
    versions: list[str] | None = None,
    files: list[str] | None = None,
    reingest: bool = False,
    partition: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One ingest run of the landing-day ``partition`` (default today) with this config; with
    neither ``versions`` nor ``files`` the run config is empty (every version of the day)."""
    asset = ASSETS[dataset]
    config: dict = {}
    if versions is not None:
        config["versions"] = versions
    if files is not None:
        config["files"] = files
    if reingest:
        config["reingest"] = True
    return dg.materialize(
        [asset],
        instance=instance,
        partition_key=partition or today(),
        run_config={"ops": {asset.key.path[-1]: {"config": config}}} if config else None,
        resources=build_resources(),
        raise_on_error=False,
    )


def metadata(result, dataset: str = "readings") -> dict:
    [mat] = result.asset_materializations_for_node(ASSETS[dataset].key.path[-1])
    return {k: v.value for k, v in mat.metadata.items()}


def file_outcomes(result, dataset: str = "readings") -> dict[str, dict]:
    """Version id -> its row of the run's ``file_outcomes`` table."""
    rows = [r.data for r in metadata(result, dataset)["file_outcomes"].records]
    by_version = {r["version"]: r for r in rows}
    assert len(by_version) == len(rows), "a version is listed twice"
    return by_version


def outcome_of(result, dataset: str = "readings") -> dict[str, str]:
    return {v: r["outcome"] for v, r in file_outcomes(result, dataset).items()}


def contract_check(result, dataset: str = "readings") -> dg.AssetCheckEvaluation:
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == CHECK and e.asset_key == ASSETS[dataset].key
    ]
    return evaluation


def keys_under(s3_server, s3_env, prefix: str) -> list[str]:
    pages = (
        s3_server.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket_of(s3_env), Prefix=prefix)
    )
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def read(s3_server, s3_env, key: str) -> bytes:
    return s3_server.client().get_object(Bucket=bucket_of(s3_env), Key=key)["Body"].read()


def ledger(s3_server, s3_env, dataset: str, version: str) -> dict:
    key = paths.ledger_object(dataset, paths.file_id(version))
    return json.loads(read(s3_server, s3_env, key))


def bucket_snapshot(s3_server, s3_env) -> dict[str, tuple]:
    """Every object of the bucket with its ETag (content) and LastModified (any rewrite)."""
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket_of(s3_env))
    return {
        o["Key"]: (o["ETag"], o["LastModified"], o["Size"])
        for page in pages
        for o in page.get("Contents", [])
    }


def test_a_three_day_file_writes_bronze_parts_for_exactly_those_days(s3_server, s3_env, instance):
    version = land(s3_server, s3_env, "readings", "plant-a/2024-03.csv", THREE_DAYS.encode())
    result = run_batch(instance, versions=[version])
    assert result.success
    fid = paths.file_id(version)
    parts = [
        paths.bronze_part("readings", day, fid)
        for day in ("2024-03-01", "2024-03-02", "2024-03-03")
    ]
    assert keys_under(s3_server, s3_env, "lake/bronze/readings/") == parts
    # The parts hold the file's rows, by UTC day of their timestamp (counted by hand above).
    frames = [pd.read_parquet(io.BytesIO(read(s3_server, s3_env, p))) for p in parts]
    assert [len(f) for f in frames] == [1, 2, 1]
    assert sorted(frames[1]["sensor_id"]) == ["s1", "s2"]
    assert sorted(pd.concat(frames)["temperature"]) == [50, 51, 52, 53]

    meta = metadata(result)
    assert meta["dates"] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert table_column(meta["rows_by_date"], "date", "rows") == {
        "2024-03-01": 1,
        "2024-03-02": 2,
        "2024-03-03": 1,
    }
    schema = meta["rows_by_date"].schema.columns
    assert {c.name: c.type for c in schema} == {"date": "string", "rows": "int"}
    assert (meta["files"], meta["dagster/row_count"], meta["bronze_parts"]) == (1, 4, 3)
    assert meta["outcomes"] == {"ingested": 1}
    first = meta["first_file"]
    assert (first["rows_in"], first["duplicate_rows_dropped"], first["rejected_rows"]) == (4, 0, {})
    assert first["sha256"] == hashlib.sha256(THREE_DAYS.encode()).hexdigest()
    assert first["bytes"] == len(THREE_DAYS)
    [row] = file_outcomes(result).values()
    assert row["object"].endswith("landing/readings/plant-a/2024-03.csv")
    assert (row["outcome"], row["rows"], row["days"]) == (
        "ingested",
        4,
        "2024-03-01,2024-03-02,2024-03-03",
    )
    assert contract_check(result).passed

    entry = ledger(s3_server, s3_env, "readings", version)
    assert (entry["version"], entry["outcome"], entry["rows"]) == (version, "ingested", 4)
    assert sorted(entry["parts"]) == parts and entry["run_id"] == result.run_id
    assert entry["rows_by_date"] == {"2024-03-01": 1, "2024-03-02": 2, "2024-03-03": 1}

    # A later batch naming it again leaves it alone; a re-ingest overwrites the same objects.
    assert outcome_of(run_batch(instance, versions=[version])) == {version: "already_ingested"}
    again = run_batch(instance, versions=[version], reingest=True)
    assert outcome_of(again) == {version: "ingested"}
    assert keys_under(s3_server, s3_env, "lake/bronze/readings/") == parts
    assert ledger(s3_server, s3_env, "readings", version)["run_id"] == again.run_id


BAD_FILES = {
    "corrupt.parquet": (b"PAR1 this is not parquet", "unreadable"),
    "empty.csv": (b"", "empty_file"),
    "header-only.csv": (HEADER.encode(), "no_rows"),
    "missing-column.csv": (
        b"timestamp,sensor_id,temperature\n2024-03-01T00:00:00Z,s1,4\n",
        "missing_columns",
    ),
    "wrong-type.csv": ((HEADER + "2024-03-01T00:00:00Z,s1,warm,2,5,20\n").encode(), "wrong_type"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_quarantined_with_a_reason_and_warn_without_failing_the_run(
    name, s3_server, s3_env, instance
):
    body, reason = BAD_FILES[name]
    version = land(s3_server, s3_env, "readings", name, body)
    result = run_batch(instance, versions=[version])
    assert result.success  # a rejected file no longer fails its run
    [row] = file_outcomes(result).values()
    assert (row["version"], row["outcome"], row["reason"]) == (version, "quarantined", reason)
    check = contract_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    [listed] = table_rows(check.metadata["quarantined"].value)
    assert listed["object"].endswith(f"landing/readings/{name}") and listed["reason"] == reason
    assert list(listed) == ["object", "reason", "message"] and listed["message"]
    meta = metadata(result)
    assert (meta["dagster/row_count"], meta["dates"], meta["outcomes"]) == (
        0,
        [],
        {"quarantined": 1},
    )

    fid = paths.file_id(version)
    assert read(s3_server, s3_env, paths.quarantine_object("readings", fid, name)) == body
    record = json.loads(read(s3_server, s3_env, paths.quarantine_record("readings", fid, name)))
    assert record["reason"] == reason and record["partition_key"] == version and record["message"]
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["bytes"] == len(body)
    entry = ledger(s3_server, s3_env, "readings", version)
    assert (entry["outcome"], entry["reason"], entry["parts"]) == ("quarantined", reason, [])
    # The landed original is untouched and nothing reached bronze.
    assert read(s3_server, s3_env, paths.landing_object("readings", name)) == body
    assert keys_under(s3_server, s3_env, "lake/bronze/") == []


def test_labels_are_ingested_with_their_own_contract(s3_server, s3_env, instance):
    body = b"sensor_id,timestamp,failure\ns1,2024-03-02T04:00:00Z,1\ns2,2024-03-05T00:00:00Z,1\n"
    version = land(s3_server, s3_env, "labels", "labels.csv", body)
    result = run_batch(instance, "labels", versions=[version])
    assert result.success
    assert outcome_of(result, "labels") == {version: "ingested"}
    assert keys_under(s3_server, s3_env, "lake/bronze/labels/") == [
        paths.bronze_part("labels", d, paths.file_id(version)) for d in ("2024-03-02", "2024-03-05")
    ]
    assert keys_under(s3_server, s3_env, "lake/bronze/readings/") == []
    assert ledger(s3_server, s3_env, "labels", version)["outcome"] == "ingested"
    assert keys_under(s3_server, s3_env, "lake/_ledger/") == [
        paths.ledger_object("labels", paths.file_id(version))
    ]


def test_an_overwritten_object_is_not_ingested_under_its_old_version(s3_server, s3_env, instance):
    old = land(s3_server, s3_env, "readings", "r.csv", THREE_DAYS.encode())
    newer = THREE_DAYS + "2024-03-04T00:00:00Z,s1,1,1,1,1\n"
    new = land(s3_server, s3_env, "readings", "r.csv", newer.encode())
    gone = land(s3_server, s3_env, "readings", "deleted.csv", THREE_DAYS.encode())
    s3_server.client().delete_object(
        Bucket=bucket_of(s3_env), Key=paths.landing_object("readings", "deleted.csv")
    )
    result = run_batch(instance, versions=[old, gone])
    assert result.success
    rows = file_outcomes(result)
    assert {v: r["outcome"] for v, r in rows.items()} == {old: "gone", gone: "gone"}
    assert "overwritten" in rows[old]["reason"] and "no longer exists" in rows[gone]["reason"]
    assert keys_under(s3_server, s3_env, "lake/") == []  # no part, no ledger entry
    # The new version is its own, with its own rows.
    result = run_batch(instance, versions=[new])
    assert outcome_of(result) == {new: "ingested"}
    assert table_column(metadata(result)["rows_by_date"], "date", "rows") == {
        "2024-03-01": 1,
        "2024-03-02": 2,
        "2024-03-03": 1,
        "2024-03-04": 1,
    }


GOOD_BATCH = {
    "g1.csv": HEADER + "2024-03-01T01:00:00Z,s1,50,2,5,20\n",
    "g2.csv": HEADER + "2024-03-02T01:00:00Z,s2,51,2,5,20\n",
    "g3.csv": HEADER + "2024-03-02T02:00:00Z,s3,52,2,5,20\n2024-03-03T02:00:00Z,s3,53,2,5,20\n",
}
BAD_IN_BATCH = ("bad.csv", b"timestamp,sensor_id,temperature\n2024-03-01T00:00:00Z,s1,4\n")


def _land_mixed_batch(s3_server, s3_env) -> tuple[dict[str, str], str]:
    good = {
        name: land(s3_server, s3_env, "readings", name, body.encode())
        for name, body in GOOD_BATCH.items()
    }
    bad = land(s3_server, s3_env, "readings", *BAD_IN_BATCH)
    return good, bad


def test_a_bad_file_is_quarantined_and_the_rest_of_its_batch_is_ingested(
    s3_server, s3_env, instance
):
    good, bad = _land_mixed_batch(s3_server, s3_env)
    versions = [good["g1.csv"], bad, good["g2.csv"], good["g3.csv"]]
    result = run_batch(instance, versions=versions)
    assert result.success
    assert len(instance.get_runs()) == 1  # one run for the batch

    rows = file_outcomes(result)
    assert {v: r["outcome"] for v, r in rows.items()} == {
        good["g1.csv"]: "ingested",
        good["g2.csv"]: "ingested",
        good["g3.csv"]: "ingested",
        bad: "quarantined",
    }
    assert rows[bad]["reason"] == "missing_columns" and rows[bad]["object"].endswith("/bad.csv")
    assert [rows[good[n]]["rows"] for n in sorted(good)] == [1, 1, 2]
    assert rows[good["g3.csv"]]["days"] == "2024-03-02,2024-03-03"

    expected_parts = sorted(
        [paths.bronze_part("readings", "2024-03-01", paths.file_id(good["g1.csv"]))]
        + [paths.bronze_part("readings", "2024-03-02", paths.file_id(good["g2.csv"]))]
        + [
            paths.bronze_part("readings", d, paths.file_id(good["g3.csv"]))
            for d in ("2024-03-02", "2024-03-03")
        ]
    )
    assert keys_under(s3_server, s3_env, "lake/bronze/") == expected_parts
    fid = paths.file_id(bad)
    assert keys_under(s3_server, s3_env, paths.QUARANTINE) == sorted(
        [
            paths.quarantine_object("readings", fid, "bad.csv"),
            paths.quarantine_record("readings", fid, "bad.csv"),
        ]
    )
    assert (
        read(s3_server, s3_env, paths.quarantine_object("readings", fid, "bad.csv"))
        == (BAD_IN_BATCH[1])
    )
    record = json.loads(
        read(s3_server, s3_env, paths.quarantine_record("readings", fid, "bad.csv"))
    )
    assert record["reason"] == "missing_columns" and record["partition_key"] == bad

    for name, version in good.items():
        entry = ledger(s3_server, s3_env, "readings", version)
        assert entry["outcome"] == "ingested", name
        assert sorted(entry["parts"]) == [p for p in expected_parts if paths.file_id(version) in p]
    entry = ledger(s3_server, s3_env, "readings", bad)
    assert (entry["outcome"], entry["reason"], entry["parts"]) == (
        "quarantined",
        "missing_columns",
        [],
    )
    # Bronze XOR quarantine: no version has both.
    bronze, quarantine = (
        " ".join(expected_parts),
        " ".join(keys_under(s3_server, s3_env, "landing/quarantine/")),
    )
    for version in versions:
        assert (paths.file_id(version) in bronze) != (paths.file_id(version) in quarantine)

    check = contract_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["quarantined_count"].value == 1
    [listed] = table_rows(check.metadata["quarantined"].value)
    assert listed["object"].endswith("landing/readings/bad.csv")
    assert listed["reason"] == "missing_columns"

    meta = metadata(result)
    assert meta["files"] == 4 and meta["outcomes"] == {"ingested": 3, "quarantined": 1}
    assert meta["dagster/row_count"] == 4 and meta["bronze_parts"] == 4
    assert meta["dates"] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert table_column(meta["rows_by_date"], "date", "rows") == {
        "2024-03-01": 1,
        "2024-03-02": 2,
        "2024-03-03": 1,
    }


def test_a_second_run_of_the_same_versions_skips_them_and_writes_nothing(
    s3_server, s3_env, instance
):
    good, bad = _land_mixed_batch(s3_server, s3_env)
    versions = [*good.values(), bad]
    first = run_batch(instance, versions=versions)
    assert first.success
    before = bucket_snapshot(s3_server, s3_env)
    assert len([k for k in before if k.startswith("lake/bronze/")]) == 4
    time.sleep(1.1)  # LastModified has second resolution: a rewrite would change it

    second = run_batch(instance, versions=[*reversed(versions), versions[0]])
    assert second.success
    rows = file_outcomes(second)
    assert {v: r["outcome"] for v, r in rows.items()} == {
        **{v: "already_ingested" for v in good.values()},
        bad: "already_quarantined",
    }
    assert rows[bad]["reason"] == "missing_columns"
    assert bucket_snapshot(s3_server, s3_env) == before  # no part, copy or ledger rewritten
    meta = metadata(second)
    assert meta["dagster/row_count"] == 0 and meta["files"] == 4
    assert meta["outcomes"] == {"already_ingested": 3, "already_quarantined": 1}
    for version in versions:
        assert ledger(s3_server, s3_env, "readings", version)["run_id"] == first.run_id


def _contract_file(tmp_path, extra_columns: str):
    bundled = yaml.safe_load(
        (resources.files("ml_platform") / "contracts/readings.yaml").read_text()
    )
    bundled["extra_columns"] = extra_columns
    path = tmp_path / f"readings-{extra_columns}.yaml"
    path.write_text(yaml.safe_dump(bundled))
    return path


def test_reingest_under_a_looser_contract_releases_the_quarantined_version(
    s3_server, s3_env, instance, tmp_path, monkeypatch
):
    strict, loose = _contract_file(tmp_path, "reject"), _contract_file(tmp_path, "report")
    body = (
        b"timestamp,sensor_id,temperature,vibration,pressure,current,humidity\n"
        b"2024-03-01T10:00:00Z,s1,50,2,5,20,40\n"
        b"2024-03-02T10:00:00Z,s1,51,2,5,20,41\n"
    )
    version = land(s3_server, s3_env, "readings", "wide.csv", body)
    fid = paths.file_id(version)
    quarantined = sorted(
        [
            paths.quarantine_object("readings", fid, "wide.csv"),
            paths.quarantine_record("readings", fid, "wide.csv"),
        ]
    )
    parts = [paths.bronze_part("readings", d, fid) for d in ("2024-03-01", "2024-03-02")]

    monkeypatch.setenv("ML_PLATFORM_CONTRACT", str(strict))
    result = run_batch(instance, versions=[version])
    assert outcome_of(result) == {version: "quarantined"}
    assert file_outcomes(result)[version]["reason"] == "extra_columns"
    assert keys_under(s3_server, s3_env, paths.QUARANTINE) == quarantined
    assert keys_under(s3_server, s3_env, "lake/bronze/") == []

    # The looser contract alone changes nothing: the ledger has the version.
    monkeypatch.setenv("ML_PLATFORM_CONTRACT", str(loose))
    assert outcome_of(run_batch(instance, versions=[version])) == {version: "already_quarantined"}
    assert keys_under(s3_server, s3_env, paths.QUARANTINE) == quarantined

    result = run_batch(instance, versions=[version], reingest=True)
    assert result.success and outcome_of(result) == {version: "ingested"}
    assert contract_check(result).passed
    assert metadata(result)["first_file"]["extra_columns"] == ["humidity"]
    assert keys_under(s3_server, s3_env, paths.QUARANTINE) == []  # copy and record removed
    assert keys_under(s3_server, s3_env, "lake/bronze/") == parts
    entry = ledger(s3_server, s3_env, "readings", version)
    assert (entry["outcome"], sorted(entry["parts"]), entry["rows"]) == ("ingested", parts, 2)
    assert read(s3_server, s3_env, paths.landing_object("readings", "wide.csv")) == body

    # And back: a re-ingest that rejects it withdraws its parts (bronze XOR quarantine).
    monkeypatch.setenv("ML_PLATFORM_CONTRACT", str(strict))
    result = run_batch(instance, versions=[version], reingest=True)
    assert outcome_of(result) == {version: "quarantined"}
    assert keys_under(s3_server, s3_env, "lake/bronze/") == []
    assert keys_under(s3_server, s3_env, paths.QUARANTINE) == quarantined
    entry = ledger(s3_server, s3_env, "readings", version)
    assert (entry["outcome"], entry["parts"]) == ("quarantined", [])


@pytest.fixture
def clocked_s3(monkeypatch):
    """An S3 API (moto) in this process, so that the server's clock can be set for one upload:
    an object landed on another day has that day's LastModified, as on a real server."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3Server(f"http://127.0.0.1:{port}", process=None)
        bucket = f"lake-{uuid.uuid4().hex[:10]}"
        s3.client().create_bucket(Bucket=bucket)
        env = s3.env(bucket)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield s3, env
    finally:
        server.stop()


def _put_at(monkeypatch, s3, env, name: str, body: bytes, when: datetime | None) -> str:
    import moto.s3.models

    with monkeypatch.context() as patch:
        if when is not None:
            patch.setattr(moto.s3.models, "utcnow", lambda: when.replace(tzinfo=None))
        return land(s3, env, "readings", name, body)


def test_an_empty_config_ingests_every_version_landed_on_the_partition_day(
    clocked_s3, instance, monkeypatch
):
    s3, env = clocked_s3
    body = THREE_DAYS.encode()
    earlier = _put_at(
        monkeypatch, s3, env, "earlier.csv", body, datetime(2024, 5, 1, 23, 59, tzinfo=UTC)
    )
    now_a = _put_at(monkeypatch, s3, env, "a.csv", body, None)
    now_b = _put_at(
        monkeypatch, s3, env, "sub/b.csv", body + b"2024-03-04T00:00:00Z,s9,1,1,1,1\n", None
    )
    # The landing days as the S3 API reports them (not as the platform computes them).
    listed = {
        o["Key"]: o["LastModified"].astimezone(UTC).date().isoformat()
        for o in s3.client().list_objects_v2(Bucket=bucket_of(env))["Contents"]
    }
    assert listed["landing/readings/earlier.csv"] == "2024-05-01"
    day = listed["landing/readings/a.csv"]
    assert listed["landing/readings/sub/b.csv"] == day != "2024-05-01"

    result = run_batch(instance, partition=day)
    assert result.success
    assert outcome_of(result) == {now_a: "ingested", now_b: "ingested"}
    assert metadata(result)["files"] == 2

    result = run_batch(instance, partition="2024-05-01")
    assert outcome_of(result) == {earlier: "ingested"}
    for partition in ("2024-04-30", "2024-05-02"):
        result = run_batch(instance, partition=partition)
        assert result.success and outcome_of(result) == {} and metadata(result)["files"] == 0
    ledgers = keys_under(s3, env, "lake/_ledger/readings/")
    assert ledgers == sorted(
        paths.ledger_object("readings", paths.file_id(v)) for v in (earlier, now_a, now_b)
    )


def test_files_in_the_config_ingest_the_current_version_of_each_key(s3_server, s3_env, instance):
    first = HEADER + "2024-03-01T10:00:00Z,s1,50,2,5,20\n"
    current = HEADER + "2024-03-05T10:00:00Z,s1,50,2,5,20\n2024-03-06T10:00:00Z,s2,51,2,5,20\n"
    old = land(s3_server, s3_env, "readings", "name.csv", first.encode())
    new = land(s3_server, s3_env, "readings", "name.csv", current.encode())
    other = land(s3_server, s3_env, "readings", "other.csv", first.encode())
    assert old != new

    result = run_batch(instance, files=["name.csv"])
    assert result.success
    assert outcome_of(result) == {new: "ingested"}  # not the old version, not other.csv
    assert file_outcomes(result)[new]["rows"] == 2
    assert keys_under(s3_server, s3_env, "lake/bronze/") == [
        paths.bronze_part("readings", d, paths.file_id(new)) for d in ("2024-03-05", "2024-03-06")
    ]
    # Files and versions together: each version once, the one already done skipped.
    result = run_batch(instance, files=["name.csv"], versions=[new, other])
    assert outcome_of(result) == {new: "already_ingested", other: "ingested"}


def test_the_local_store_only_yields_the_expected_version(tmp_path):
    """A folder store's ETag is a content hash: the copy holds exactly that version, and a re-put
    while it is read replaces the name, not the bytes being read."""
    from ml_platform.lib.store import LocalStore, ObjectChangedError

    store = LocalStore(tmp_path / "lake")
    store.put_bytes(b"v1", "landing/readings/v.csv")
    etag = store.etag("landing/readings/v.csv")
    with store.local_copy("landing/readings/v.csv", if_match=etag) as path:
        store.put_bytes(b"v2", "landing/readings/v.csv")
        assert path.read_bytes() == b"v1"
        assert [o.key for o in store.list("")] == ["landing/readings/v.csv"]
    with (
        pytest.raises(ObjectChangedError),
        store.local_copy("landing/readings/v.csv", if_match=etag),
    ):
        pass
    assert [p.name for p in (tmp_path / "lake" / "landing" / "readings").iterdir()] == ["v.csv"]


def test_the_s3_download_only_accepts_the_expected_version(s3_server, s3_env):
    from ml_platform.lib.store import ObjectChangedError, open_store

    store = open_store(s3_env["ML_PLATFORM_STORE_URL"])
    store.put_bytes(b"v1", "landing/readings/v.csv")
    etag = store.etag("landing/readings/v.csv")
    with store.local_copy("landing/readings/v.csv", if_match=etag) as path:
        assert path.read_bytes() == b"v1"
    store.put_bytes(b"v2", "landing/readings/v.csv")
    with (
        pytest.raises(ObjectChangedError),
        store.local_copy("landing/readings/v.csv", if_match=etag),
    ):
        pass


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_create_only_write_lets_exactly_one_of_racing_writers_in(kind, tmp_path, request):
    from concurrent.futures import ThreadPoolExecutor

    from ml_platform.lib.store import LocalStore, open_store

    if kind == "local":
        store = LocalStore(tmp_path / "lake")
    else:
        store = open_store(request.getfixturevalue("s3_env")["ML_PLATFORM_STORE_URL"])
    key = "lake/ledger/readings/x.json"
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store.create_bytes(f"writer {i}".encode(), key), range(8)))
    assert won.count(True) == 1, won
    assert store.read_bytes(key) == f"writer {won.index(True)}".encode()
    assert store.create_bytes(b"late", key) is False
    assert store.read_bytes(key) == f"writer {won.index(True)}".encode()
    assert [o.key for o in store.list("lake/")] == [key]  # no temporary file left behind


def test_a_run_that_loses_the_ledger_race_reports_the_other_runs_decision(
    s3_server, s3_env, instance, monkeypatch
):
    """Two runs of one batch at once (two daemons' ticks can both submit it): the second read
    the ledger before the first wrote it, ingests the same bytes, and then finds the first run's
    entry: it reports that run's decision instead of a second "ingested"."""
    from ml_platform.defs.ingest import assets as ingest_assets

    version = land(s3_server, s3_env, "readings", "race/a.csv", THREE_DAYS.encode())
    first = run_batch(instance, versions=[version])
    assert outcome_of(first) == {version: "ingested"}
    parts = {k: read(s3_server, s3_env, k) for k in keys_under(s3_server, s3_env, "lake/bronze/")}
    real = ingest_assets._ledger_entry
    reads: list[dict | None] = []

    def read_before_the_first_run_wrote(store, dataset, v):
        reads.append(None if not reads else real(store, dataset, v))
        return reads[-1]

    monkeypatch.setattr(ingest_assets, "_ledger_entry", read_before_the_first_run_wrote)
    second = run_batch(instance, versions=[version])
    assert second.success
    [row] = file_outcomes(second).values()
    assert (row["outcome"], row["rows"]) == ("already_ingested", 4)
    assert first.run_id in row["reason"]  # names the run that decided
    assert ledger(s3_server, s3_env, "readings", version)["run_id"] == first.run_id
    after = {k: read(s3_server, s3_env, k) for k in keys_under(s3_server, s3_env, "lake/bronze/")}
    assert after == parts  # the same parts, rewritten with the same bytes


def test_publishing_is_all_days_or_none(s3_server, s3_env, tmp_path):
    from ml_platform.defs.ingest.assets import _publish
    from ml_platform.lib.ingest import ingest_file
    from ml_platform.lib.store import StoreUnavailableError, open_store

    src = tmp_path / "r.csv"
    src.write_text(THREE_DAYS)
    report = ingest_file(src, build_resources()["ingest"].contract("readings"), tmp_path / "out")
    store = open_store(s3_env["ML_PLATFORM_STORE_URL"])
    real_put, calls = store.put_file, []

    def flaky_put(src, dst, *, move=False):
        calls.append(dst)
        if len(calls) == 2:
            raise StoreUnavailableError("store went away mid-publish")
        return real_put(src, dst, move=move)

    store.put_file = flaky_put
    with pytest.raises(StoreUnavailableError):
        _publish(store, "readings", "f-1", report)
    assert keys_under(s3_server, s3_env, "lake/bronze/") == []  # the first day was withdrawn
    store.put_file = real_put
    assert len(_publish(store, "readings", "f-1", report)) == 3
